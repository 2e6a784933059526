"""Benchmark: a dataset run on the in-process engine vs ``--engine ray``, on this machine.

The same minds14-shaped rows (the example clips at 8 kHz with their transcriptions, cycled to
``--rows`` rows) are traced into a fresh store by each arm in turn, every arm a fresh process
(``python -m probe run --dataset ...``), so each wall time is what a user waits for: imports, model
loads (once per actor for Ray), cluster start and the run itself.  Arms: ``local`` (one process,
``--threads`` torch threads), ``ray`` with ``--workers`` 1 and 2 (one torch thread per actor per
CPU it is given).  The JSON holds wall and CPU time per arm, rows per second, the ratio of each
Ray arm to the local one, the tracing cost per row measured inside the traces (``timings.total``),
and a scaling estimate for N workers from those measurements.

Usage: ``python benchmarks/dataset_engines.py --rows 16 --out benchmarks/results/cpu-tiny-dataset-engines16.json``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))


def run_arm(name: str, argv: list[str], env: dict) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "probe", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"arm {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    return {"arm": name, "command": "probe " + " ".join(argv), "wall_s": round(wall, 2),
            # CPU time of the arm's process tree that was waited for (Ray's workers are reaped by its raylet,
            # so for Ray arms this is the driver's share only)
            "cpu_s_waited_children": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
            "rows": summary["rows"], "traced": summary["traced"], "failed": summary["failed"],
            "run_s": summary["seconds"], "rows_per_s": round(summary["rows"] / wall, 4)}


def trace_cost(store: Path) -> dict:
    totals = []
    for folder in store.iterdir():
        manifest = folder / "manifest.json"
        if manifest.exists():
            totals.append(json.loads(manifest.read_text())["timings"]["total"])
    totals.sort()
    return {"traces": len(totals), "mean_trace_s": round(sum(totals) / len(totals), 3),
            "median_trace_s": round(totals[len(totals) // 2], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the local arm")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--arms", default="local,ray1,ray2")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu-tiny-dataset-engines16.json"))
    args = parser.parse_args(argv)

    from bench import machine_info
    from dataset_fixtures import minds14_like

    import probe

    machine = machine_info()  # the load average as the arms start
    work = Path(tempfile.mkdtemp(prefix="whisper-probe-engines-"))
    dataset = minds14_like(work / "data", rows=args.rows)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    common = ["--dataset", str(dataset), "--model", args.model, "--text-column", "transcription",
              "--key-column", "path", "--max-new-tokens", str(args.max_new_tokens), "--json", "--device", "cpu"]
    arms = {"local": [], "ray1": ["--engine", "ray", "--workers", "1"], "ray2": ["--engine", "ray", "--workers", "2"]}
    results = []
    for name in args.arms.split(","):
        store = work / f"store-{name}"
        print(f"arm {name} ...", file=sys.stderr, flush=True)
        arm = run_arm(name, ["run", *common, *arms[name], "--store", str(store)], env)
        arm["in_trace"] = trace_cost(store)
        results.append(arm)
        print(f"  {arm['wall_s']} s, {arm['rows_per_s']} rows/s", file=sys.stderr, flush=True)
    local = next((a for a in results if a["arm"] == "local"), None)
    for arm in results:
        if local is not None:
            arm["throughput_ratio_to_local"] = round(arm["rows_per_s"] / local["rows_per_s"], 3)
    # startup: process start, imports, opening the dataset (and for Ray the cluster); the run itself
    # (run_s) holds the model loads (once per actor), decoding, plugins and writing the traces
    per_row = {arm["arm"]: round(arm["run_s"] / arm["rows"], 3) for arm in results}
    startup = {arm["arm"]: round(arm["wall_s"] - arm["run_s"], 2) for arm in results}
    one_actor = next((a for a in results if a["arm"] == "ray1"), None)
    report = {
        "benchmark": "dataset engines (benchmarks/dataset_engines.py)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/dataset_engines.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine, "load_average_end": list(os.getloadavg())},
        "versions": {"python": platform.python_version(), "whisper_probe": probe.__version__,
                     **{name: _version(name) for name in ("torch", "transformers", "ray", "datasets")}},
        "model": args.model, "rows": args.rows, "max_new_tokens": args.max_new_tokens, "local_threads": args.threads,
        "arms": results,
        "scaling_estimate": {
            "model": "wall(N) ≈ startup + rows × c / N for N tracer actors each with its own device (a GPU, or "
                     "its own cores), while the read and decode tasks keep up; c is one actor's cost per row "
                     "on that device (model load amortised, decoding, plugins, writing): here ray1's run_s / rows "
                     "on this CPU. Two actors sharing these 2 cores (ray2) do not add a device: c doubles.",
            "per_row_s": per_row, "startup_s": startup,
            "rows_10000_hours_by_workers": ({n: round((startup["ray1"] + 10000 * per_row["ray1"] / n) / 3600, 2)
                                            for n in (1, 2, 4, 8, 16)} if one_actor else None),
        },
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({a["arm"]: (a["wall_s"], a.get("throughput_ratio_to_local")) for a in results}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
