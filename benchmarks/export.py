"""How long ``probe export`` takes, per format, on a 30 s trace of the embedded base model.

Each export runs as a user runs it: a fresh ``python -m probe export TRACE -f FORMAT`` process
(interpreter start and imports included), ``--repeats`` times round-robin over the formats so that
drift on a shared machine hits them alike; the JSON holds every run and the median.  Also timed:

- ``all_figure_formats``: ``-f html,png,svg,pdf`` in one process (every figure drawn once for all
  four), against the sum of the four separate exports;
- ``baseline`` (``--baseline-rev``, default the commit before exports drew on every core and laid
  each figure out once): the same commands with the package (probe, plugins, dashboards) as it was
  at that commit, or with ``--baseline-parts probe/export,probe/cli`` only those folders, the rest
  of the working tree as it is;
- ``startup``: a process that imports ``probe.cli`` and exits.

The trace (``examples/en_lecture.flac`` with 0.3 s gaps tiled to 30 s, every built-in plugin,
``language="en"``) is made once into ``--store`` and reused by later runs.  The machine's load
average is written before and after: the development VM's 2 cores are shared.

    .venv/bin/python benchmarks/export.py --repeats 3 --out benchmarks/results/cpu-export.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("html", "zip", "png", "svg", "pdf", "json", "csv")
FIGURE_FORMATS = "html,png,svg,pdf"
BASELINE_REV = "ff1cf68"  # the last commit before exports drew on every core and laid figures out once
TRACE_NAME = "lecture30"


def make_trace(store: Path, seconds: float) -> str:
    """The id of the benchmark trace in ``store``, recorded first if missing."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import probe
    from probe.constants import SAMPLE_RATE

    for info in probe.Store(store).list():
        if info.name == TRACE_NAME and not info.error:
            return info.id
    clip = probe.load_audio(ROOT / "examples" / "en_lecture.flac").samples
    one = np.concatenate([clip, np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)])
    n = int(round(seconds * SAMPLE_RATE))
    samples = np.ascontiguousarray(np.tile(one, n // len(one) + 1)[:n], dtype=np.float32)
    return probe.run(samples, store=store, name=TRACE_NAME, language="en").id


def baseline_tree(rev: str, folder: Path, parts: str = "all") -> Path:
    """The package as installed (probe/, with plugins/ and dashboards/ inside it) as it was at
    ``rev`` (``parts="all"``), or the working tree's with only ``parts`` (comma-separated folders,
    such as ``probe/export,probe/cli``) as they were at ``rev``."""
    target = folder / "baseline"
    source = folder / "at-rev"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "probe", "plugins", "dashboards"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    base = source if parts == "all" else ROOT
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(base / "probe", target / "probe", ignore=ignore)
    shutil.copytree(base / "plugins", target / "probe" / "plugins", ignore=ignore)
    shutil.copytree(base / "dashboards", target / "probe" / "dashboards", ignore=ignore)
    if parts != "all":
        for part in [p for p in parts.split(",") if p]:
            shutil.rmtree(target / part)
            shutil.copytree(source / part, target / part, ignore=ignore)
    return target


def command(tree: Path | None, args: list[str]) -> list[str]:
    """``python -m probe ARGS``, or from ``tree`` with the editable install's finder set aside."""
    if tree is None:
        return [sys.executable, "-m", "probe", *args]
    boot = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
            "getattr(f, '__module__', '')]; sys.path.insert(0, sys.argv.pop(1)); "
            "from probe.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", boot, str(tree), *args]


def timed(argv: list[str]) -> dict:
    """Wall seconds and the child's CPU seconds (user + system: steadier than wall time on a
    machine whose cores other jobs share), and what it wrote to stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"failed ({run.returncode}): {' '.join(argv)}\n{run.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"s": seconds, "cpu_s": cpu, "stderr": run.stderr.strip()}


def machine() -> dict:
    import matplotlib

    import probe

    return {"hostname": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "matplotlib": matplotlib.__version__,
            "whisper_probe": probe.__version__, "commit": _git("rev-parse", "--short", "HEAD"),
            "tree_dirty": bool(_git("status", "--porcelain", "--", "probe", "plugins", "dashboards"))}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_ticks() -> list[int]:
    """The machine's CPU time counters (/proc/stat: user, nice, system, idle, iowait, irq, softirq,
    steal, ...), or [] where there are none."""
    try:
        return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []


def _steal(before: list[int], after: list[int]) -> float | None:
    """The share of CPU time the hypervisor gave other guests while the benchmark ran: on a shared
    VM, what makes the same work take longer from one run to the next."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    return round((after[7] - before[7]) / total, 4) if total > 0 else None


def _workers() -> int:
    sys.path.insert(0, str(ROOT))
    from probe.export.render import workers

    return workers(10**6)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "whisper-probe-export-bench",
                        help="where the benchmark trace is kept (made once)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="'' to skip the baseline")
    parser.add_argument("--baseline-formats", default=",".join(FORMATS))
    parser.add_argument("--baseline-parts", default="all",
                        help="'all': the whole package at --baseline-rev; else folders such as probe/export,probe/cli")
    parser.add_argument("--no-combined", action="store_true", help=f"skip the -f {FIGURE_FORMATS} export")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-export.json")
    args = parser.parse_args(argv)

    load_start, steal_start = os.getloadavg(), _cpu_ticks()
    trace_id = make_trace(args.store, args.seconds)
    formats = [f for f in args.formats.split(",") if f]
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    arms: dict[str, tuple[Path | None, list[str]]] = {}
    for fmt in formats:
        arms[fmt] = (None, ["export", trace_id, "--store", str(args.store), "-f", fmt, "-o", f"{work}/{fmt}/"])
    if not args.no_combined:
        arms["all_figure_formats"] = (None, ["export", trace_id, "--store", str(args.store), "-f", FIGURE_FORMATS,
                                             "-o", f"{work}/all/"])
    arms["startup"] = (None, ["--version"])
    if args.baseline_rev:
        tree = baseline_tree(args.baseline_rev, work, args.baseline_parts)
        for fmt in [f for f in args.baseline_formats.split(",") if f]:
            arms[f"baseline:{fmt}"] = (tree, ["export", trace_id, "--store", str(args.store), "-f", fmt,
                                              "-o", f"{work}/base-{fmt}/"])
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    names = list(arms)
    for round_ in range(args.repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            tree, cli = arms[name]
            runs[name].append(timed(command(tree, cli)))
            print(f"round {round_ + 1} {name}: {runs[name][-1]['s']:.2f} s, cpu {runs[name][-1]['cpu_s']:.2f} s "
                  f"(load {os.getloadavg()[0]:.1f})",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def median(name: str, key: str = "s") -> float:
        return round(statistics.median(run[key] for run in runs[name]), 3)

    per_format = {fmt: {"median_s": median(fmt), "median_cpu_s": median(fmt, "cpu_s"),
                        "runs_s": [round(r["s"], 3) for r in runs[fmt]],
                        "stderr_clean": all(not r["stderr"] for r in runs[fmt]),
                        **({"baseline_median_s": median(f"baseline:{fmt}"),
                            "baseline_median_cpu_s": median(f"baseline:{fmt}", "cpu_s"),
                            "speedup": round(median(f"baseline:{fmt}") / median(fmt), 2),
                            "cpu_speedup": round(median(f"baseline:{fmt}", "cpu_s") / median(fmt, "cpu_s"), 2)}
                           if f"baseline:{fmt}" in runs else {})}
                  for fmt in formats}
    separate = sum(per_format[f]["median_s"] for f in FIGURE_FORMATS.split(",") if f in per_format)
    report = {
        "benchmark": "probe export, fresh process per run",
        "command": " ".join([".venv/bin/python", "benchmarks/export.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "export_workers": _workers(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
                    "cpu_steal_fraction": _steal(steal_start, _cpu_ticks())},
        "trace": {"id": trace_id, "seconds": args.seconds, "source": "examples/en_lecture.flac tiled with 0.3 s gaps",
                  "model": "embedded:base", "plugins": "every built-in"},
        "repeats": args.repeats,
        "formats": per_format,
        "all_figure_formats": None if args.no_combined else {"formats": FIGURE_FORMATS, "median_s": median("all_figure_formats"),
                               "median_cpu_s": median("all_figure_formats", "cpu_s"),
                               "separate_exports_cpu_s": round(sum(per_format[f]["median_cpu_s"]
                                                                   for f in FIGURE_FORMATS.split(",")
                                                                   if f in per_format), 3),
                               "runs_s": [round(r["s"], 3) for r in runs["all_figure_formats"]],
                               "separate_exports_s": round(separate, 3)},
        "startup": {"median_s": median("startup"), "median_cpu_s": median("startup", "cpu_s"),
                    "what": "python -m probe --version"},
        "baseline": ({"rev": args.baseline_rev,
                      "what": ("the package (probe, plugins, dashboards) at this commit" if args.baseline_parts == "all"
                               else f"{args.baseline_parts} at this commit, the rest of the working tree as is"),
                      "runs_s": {name.split(":", 1)[1]: [round(r["s"], 3) for r in rs]
                                 for name, rs in runs.items() if name.startswith("baseline:")}}
                     if args.baseline_rev else None),
        "target": {"per_format_s": 3.0,
                   "met_wall": {fmt: per_format[fmt]["median_s"] <= 3.0 for fmt in formats},
                   "met_cpu": {fmt: per_format[fmt]["median_cpu_s"] <= 3.0 for fmt in formats}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for fmt, row in per_format.items():
        base = (f"  baseline {row['baseline_median_s']:.2f} s, cpu {row['baseline_median_cpu_s']:.2f} s"
                f" ({row['speedup']}x, cpu {row['cpu_speedup']}x)" if "speedup" in row else "")
        print(f"{fmt:5} {row['median_s']:7.2f} s, cpu {row['median_cpu_s']:.2f} s{base}")
    if report["all_figure_formats"]:
        print(f"{FIGURE_FORMATS} in one export: {report['all_figure_formats']['median_s']:.2f} s "
              f"(separately {separate:.2f} s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
