#!/usr/bin/env python
"""whisper-probe long-form benchmark: plain transformers long-form ``generate()`` vs the traced lecture profile.

Input: the project's lecture recording (``scripts/make_examples.py``: 16 distinct sentences
spoken by espeak-ng with pauses, repeated in order) cut to ``--minutes``.  Both arms decode the
same features with the same options (``language="en"``, ``return_timestamps=True``, greedy, no
fallback — transformers' defaults) in one process, warmed up once, then alternating:

- ``plain``   ``model.generate(input_features, attention_mask=..., return_timestamps=True, language="en")``
              as transformers documents long-form transcription (features outside the clock);
- ``lecture`` ``Tracer.trace`` with token_probs + cross_attention + activations (its default set) and
              the trace written into a temporary store (``probe.runner.write_trace``).

``--rss-minutes 10 30 60`` also traces recordings of those lengths, each in a fresh subprocess
(the lecture profile, written to a temporary store), and reports each one's peak resident memory
(``ru_maxrss``).  ``--dashboard-minutes 60`` traces such a recording into a kept store and then
opens each dashboard view on it the way a browser does — a fresh process each time, Streamlit's
AppTest running the app with ``?trace=`` and the page — and times that first view (imports apart).
Output: JSON with the machine, versions, medians, ratios and tokens-equal checks.
Usage: ``python benchmarks/longform.py --minutes 5 --repeats 3 --rss-minutes 10 30 60 --out FILE``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import machine_info  # noqa: E402
from probe.audio import audio_from_array  # noqa: E402
from probe.malloc import keep_freed_memory  # noqa: E402
from probe.models import load_model, quiet_transformers  # noqa: E402
from probe.plugin_manager import get_plugin_manager  # noqa: E402
from probe.runner import write_trace  # noqa: E402
from probe.store import Store  # noqa: E402
from probe.tracer import DecodeOptions, Tracer  # noqa: E402

LECTURE_DISABLED = ["attention", "logit_lens"]


def recording(minutes: float, cache: Path) -> np.ndarray:
    """The lecture recording cut to ``minutes`` (synthesised once, cached as .npy)."""
    path = cache / f"lecture-{minutes:g}min.npy"
    if not path.exists():
        from make_examples import Espeak, lecture_recording

        np.save(path, lecture_recording(Espeak(), seconds=minutes * 60))
    return np.load(path)


def plain_tokens(loaded, samples: np.ndarray) -> tuple[float, list[int]]:
    inputs = loaded.processor(samples, sampling_rate=16000, return_tensors="pt", truncation=False,
                              padding="longest", return_attention_mask=True)
    features = inputs.input_features.to(loaded.device, loaded.dtype)
    mask = inputs.attention_mask.to(loaded.device)
    started = time.perf_counter()
    with torch.inference_mode(), quiet_transformers():
        out = loaded.model.generate(features, attention_mask=mask, return_timestamps=True, language="en")
    seconds = time.perf_counter() - started
    tokens = out[0].tolist()
    while tokens and tokens[-1] == loaded.model.generation_config.pad_token_id:
        tokens.pop()
    return seconds, tokens


def traced(loaded, samples: np.ndarray, store: Store, keep: bool = False) -> tuple[float, list[int], dict]:
    tracer = Tracer(loaded, get_plugin_manager(disabled=LECTURE_DISABLED, autoload=False),
                    DecodeOptions(language="en", timestamps=True))
    clip = audio_from_array(samples, 16000, source="lecture")
    started = time.perf_counter()
    run = tracer.trace(clip)
    trace = write_trace(tracer, run, store, name="lecture")
    seconds = time.perf_counter() - started
    phases = {key: round(sum(w.timings.get(key, 0.0) for w in run.windows), 3)
              for key in ("encode", "generate", "replay")}
    info = {"windows": len(run.windows), "phases_s": phases,
            "plugins_s": {k: round(v, 3) for k, v in run.plugin_seconds.items()},
            "trace_bytes": sum(f.stat().st_size for f in trace.path.rglob("*") if f.is_file())}
    if keep:
        info["trace_id"] = trace.id
    else:
        store.delete(trace.id)
    return seconds, run.sequence, info


def rss_child(minutes: float, cache: Path, threads: int, keep: Path | None = None) -> dict:
    """Run in a fresh process: trace ``minutes`` of audio with the lecture profile; peak RSS.  The
    trace is kept in store ``keep`` when given."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    loaded = load_model(None, device="cpu", dtype="float32")
    samples = recording(minutes, cache)
    store_dir = keep or Path(tempfile.mkdtemp(prefix="whisper-probe-longform-"))
    try:
        seconds, tokens, info = traced(loaded, samples, Store(store_dir), keep=keep is not None)
    finally:
        if keep is None:
            shutil.rmtree(store_dir, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"minutes": minutes, "seconds": round(seconds, 2), "tokens": len(tokens), "peak_rss_bytes": peak,
            "peak_rss_gib": round(peak / 2**30, 3), **info}


FIRST_VIEW_CODE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
import probe.dashboards
from pathlib import Path
# what a running dashboard server has imported already (views import these on their first run)
import importlib
for module in ("pandas", "matplotlib.pyplot", "probe.figures", "probe.dashboards.context", "probe.export",
               "probe.store", "probe.alignment"):
    importlib.import_module(module)
t1 = time.perf_counter()
store, trace_id, view = sys.argv[1:4]
os.environ["WHISPER_PROBE_STORE"] = store
app = AppTest.from_file(str(Path(probe.dashboards.__file__).with_name("app.py")), default_timeout=600)
app.query_params["trace"] = trace_id
app.switch_page(f"views/{view}.py")
t2 = time.perf_counter()
app.run()
t3 = time.perf_counter()
errors = [str(e.value)[:200] for e in app.exception] + [str(e.value)[:200] for e in app.error]
print(json.dumps({"import_s": t1 - t0, "first_view_s": t3 - t2, "images": len(app.image), "errors": errors}))
"""
DASHBOARD_VIEWS = ("overview", "windows", "audio", "multitask", "tokens", "cross_attention", "lesson")


def dashboard_first_views(store: Path, trace_id: str, repeats: int) -> dict:
    """Each dashboard view's first render of ``trace_id``, in a fresh process every time (AppTest
    runs the app as a browser session would: the sidebar's trace list, then the page).  The modules
    a running server has already imported are imported first and timed apart (``import_s``); no
    cache holds anything of the trace."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    views = {}
    for view in DASHBOARD_VIEWS:
        runs = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", FIRST_VIEW_CODE, str(store), trace_id, view],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                runs.append({"errors": [proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"]})
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        times = [r["first_view_s"] for r in runs if "first_view_s" in r]
        views[view] = {"median_first_view_s": round(statistics.median(times), 3) if times else None,
                       "runs_s": [round(t, 3) for t in times],
                       "median_import_s": round(statistics.median(r["import_s"] for r in runs if "import_s" in r), 3)
                       if times else None,
                       "images": runs[-1].get("images"), "errors": runs[-1].get("errors")}
        print(f"  dashboard {view:<16} {views[view]['median_first_view_s']} s {views[view]['errors'] or ''}",
              file=sys.stderr, flush=True)
    done = [v["median_first_view_s"] for v in views.values() if v["median_first_view_s"] is not None]
    return {"views": views, "slowest_first_view_s": max(done) if done else None, "target_s": 2.0,
            "page_cache": "warm (the trace was just written)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the ratio run's recording")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rss-minutes", type=float, nargs="*", default=[], help="peak-RSS runs, e.g. 10 30 60")
    parser.add_argument("--skip-ratio", action="store_true", help="only the peak-RSS runs")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "whisper-probe-bench-audio")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dashboard-minutes", type=float, default=None,
                        help="trace this many minutes into a kept store, then time each dashboard view's first render")
    parser.add_argument("--dashboard-store", type=Path, default=None,
                        help="where to keep that trace (default: a temporary folder, removed at the end)")
    parser.add_argument("--rss-child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.cache, args.threads, keep=args.keep)))
        return 0

    import transformers

    result = {"benchmark": "longform", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "machine": machine_info(), "threads": args.threads,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "model": "embedded base (real weights), cpu, float32", "options": "language=en, timestamps, greedy"}
    if not args.skip_ratio:
        torch.set_num_threads(args.threads)
        keep_freed_memory()
        loaded = load_model(None, device="cpu", dtype="float32")
        samples = recording(args.minutes, args.cache)
        store_dir = Path(tempfile.mkdtemp(prefix="whisper-probe-longform-"))
        store = Store(store_dir)
        try:
            plain_tokens(loaded, samples[: 60 * 16000])  # warm-up, one minute each
            traced(loaded, samples[: 60 * 16000], store)
            plain_s, traced_s, equal, info = [], [], [], {}
            for repeat in range(args.repeats):
                for arm in (("plain", "lecture") if repeat % 2 == 0 else ("lecture", "plain")):
                    if arm == "plain":
                        seconds, reference = plain_tokens(loaded, samples)
                        plain_s.append(seconds)
                    else:
                        seconds, tokens, info = traced(loaded, samples, store)
                        traced_s.append(seconds)
                    print(f"{arm}: {seconds:.2f} s", file=sys.stderr, flush=True)
                equal.append(tokens == reference)
        finally:
            shutil.rmtree(store_dir, ignore_errors=True)
        result["ratio_run"] = {
            "minutes": args.minutes, "repeats": args.repeats, "plain_s": [round(s, 3) for s in plain_s],
            "lecture_s": [round(s, 3) for s in traced_s], "plain_median_s": round(statistics.median(plain_s), 3),
            "lecture_median_s": round(statistics.median(traced_s), 3),
            "ratio": round(statistics.median(traced_s) / statistics.median(plain_s), 4),
            "tokens_equal_plain": all(equal), "tokens": len(reference), **info, "target_ratio": 1.10}
        print(f"ratio {result['ratio_run']['ratio']}", file=sys.stderr)
    rss = []
    for minutes in args.rss_minutes:
        child = subprocess.run([sys.executable, __file__, "--rss-child", str(minutes), "--threads", str(args.threads),
                                "--cache", str(args.cache)], capture_output=True, text=True, check=True)
        rss.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"{minutes:g} min: peak RSS {rss[-1]['peak_rss_gib']} GiB in {rss[-1]['seconds']} s",
              file=sys.stderr, flush=True)
    if rss:
        result["peak_rss"] = {"runs": rss, "target_gib_at_60_min": 3.0}
    if args.dashboard_minutes:
        store = args.dashboard_store or Path(tempfile.mkdtemp(prefix="whisper-probe-dashboard-"))
        try:
            child = subprocess.run([sys.executable, __file__, "--rss-child", str(args.dashboard_minutes),
                                    "--threads", str(args.threads), "--cache", str(args.cache), "--keep", str(store)],
                                   capture_output=True, text=True, check=True)
            made = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{args.dashboard_minutes:g} min traced in {made['seconds']} s ({made['windows']} windows)",
                  file=sys.stderr, flush=True)
            result["dashboard"] = {"trace": made, **dashboard_first_views(store, made["trace_id"], args.repeats)}
        finally:
            if args.dashboard_store is None:
                shutil.rmtree(store, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
