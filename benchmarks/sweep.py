"""Benchmark: a 48-head sweep over 10 clips on base, on this machine's CPU.

Runs ``examples/reproductions/nonspeech_heads.py`` (every decoder self-attention head of base
ablated in turn, 6 non-speech + 4 speech clips, ``probe sweep``'s engine) into a fresh store and
times it; then, on the same clips, times a few cells the way one would without a sweep — a fresh
encoder pass for every cell, as ``probe run --intervene`` per head does — against the sweep's own
cells (encoder output reused), so the JSON holds the ratio of the two measured side by side.

Usage: ``python benchmarks/sweep.py --threads 2 --out benchmarks/results/cpu-base-sweep48.json``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "reproductions"))
sys.path.insert(0, str(REPO))

COMPARED_CELLS = 3  # cells timed both ways after the sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu-base-sweep48.json"))
    parser.add_argument("--results", default=str(REPO / "examples" / "reproductions" / "results"),
                        help="where the reproduction writes its JSON and figures")
    args = parser.parse_args(argv)

    import torch

    import nonspeech_heads
    import probe
    from probe import runner, sweep
    from probe.interventions import resolve
    from probe.store import Store
    from probe.tracer import decode_options

    torch.set_num_threads(args.threads)
    store_dir = Path(tempfile.mkdtemp(prefix="whisper-probe-sweep-bench-"))
    started = time.perf_counter()
    nonspeech_heads.main(["--store", str(store_dir), "--threads", str(args.threads), "--out", args.results])
    total = time.perf_counter() - started
    done = sweep.list_sweeps(Store(store_dir))[0]
    run = done.manifest["runs"][-1]

    clips = sweep.clips_from_file(store_dir / ".clipsets" / "nonspeech" / "clips.json")
    loaded = runner.load("base", device="cpu", dtype="float32")
    options = decode_options(False, **{k: v for k, v in done.manifest["decode"].items()
                                       if k in ("language", "max_new_tokens")})
    cells = [c for c in sweep.cells(sweep.SweepSpec("heads", "decoder.self_attn"), loaded.model.config)
             if c.key != sweep.CLEAN][:COMPARED_CELLS]
    timed = {"reused": [], "fresh_encoder": []}
    for reuse in (True, False, True, False):  # alternated, so drift on a shared machine hits both
        worker = sweep._CellRunner(loaded, clips, options, 5, reuse)
        worker.use_clean(json.loads((done.path / "clean.json").read_text()))
        if reuse:
            worker.decode([], False)  # fills the cache, as the sweep's clean cell does
        for cell in cells:
            items = resolve(loaded.model.config, list(cell.interventions))
            t = time.perf_counter()
            worker.run(cell, items, False)
            timed["reused" if reuse else "fresh_encoder"].append(time.perf_counter() - t)
    per_cell = {key: sorted(values)[len(values) // 2] for key, values in timed.items()}
    result = {
        "benchmark": "48-head decoder self-attention sweep over 10 clips (6 non-speech, 4 speech), base, CPU",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "versions": {"whisper-probe": probe.__version__, "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__, "python": platform.python_version()},
        "sweep": {"id": done.id, "cells": len(done.cells), "clips": len(done.clips), "decode": done.manifest["decode"],
                  "seconds": run["seconds"], "seconds_with_setup": round(total, 1),
                  "encoder_outputs_reused": run["encoder_reused"], "batch_size": run["batch_size"]},
        "per_cell_seconds": {"sweep (encoder output reused)": round(per_cell["reused"], 3),
                             "no reuse: the encoder run for every cell's decoding and again for its teacher-forced passes": round(per_cell["fresh_encoder"], 3),
                             "ratio_fresh_over_sweep": round(per_cell["fresh_encoder"] / per_cell["reused"], 2),
                             "every_timing": {k: [round(v, 3) for v in values] for k, values in timed.items()}},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("sweep", "per_cell_seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
