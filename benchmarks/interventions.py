"""What an intervention costs: the lecture profile (every built-in plugin but attention and logit
lens, as ``bench.py`` has it) on 30 s of speech with the embedded base model, traced plainly and
under interventions, in the same process, arms interleaved round-robin, the median per arm.

Arms (:func:`arms`): ``clean``; ``steer_tiny`` and ``local_wide``, whose hooks do all their work but
leave the tokens as they were (the cost of intervening itself); ``ablate`` (two decoder
self-attention heads of block 3 and one cross-attention head of block 5 zeroed), ``steer``
(alpha = 0.5 at decoder block 2's residual) and ``local_20`` (encoder self-attention within ±20
frames), which change what is decoded, so their time is also given per decoded token.  The
issue's target: an intervened lecture-profile trace ≤ 1.10× the un-intervened one.  The JSON has
the machine, versions, every run, the medians, the ratios and whether each arm's tokens differ.

    .venv/bin/python benchmarks/interventions.py --repeats 3 --out benchmarks/results/cpu-base-interventions.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LECTURE_DISABLED = ["attention", "logit_lens"]
TARGET_RATIO = 1.10


def arms(d_model: int) -> dict[str, list]:
    """Two kinds of arm: ones whose hooks do all their work yet leave the decoded tokens as they
    were (the cost of intervening itself), and ones that change what is decoded (their time
    follows how many tokens the changed model emits, so they are compared per decoded token)."""
    from probe.interventions import Ablate, Local, Steer

    direction = tuple(((i % 7) - 3) / 3 for i in range(d_model))
    return {"clean": [],
            "steer_tiny": [Steer("decoder.blocks.2.hook_resid_post", direction, alpha=1e-4)],  # same tokens
            "local_wide": [Local(1500)],  # the mask built and applied in every layer; nothing outside it
            "ablate": [Ablate("decoder.self_attn", 3, (1, 4)), Ablate("decoder.cross_attn", 5, (2,))],
            "steer": [Steer("decoder.blocks.2.hook_resid_post", direction, alpha=0.5)],
            "local_20": [Local(20)]}


def decoded_tokens(trace) -> int:
    """Tokens generate() emitted for the trace, every fallback attempt included."""
    return sum(len(a.get("tokens") or []) for w in trace.manifest["windows"] for a in w.get("attempts") or []) \
        or len(trace.manifest["sequence"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-base-interventions.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import transformers

    import probe
    from probe.audio import audio_from_array
    from probe.plugin_manager import get_plugin_manager
    from probe.runner import load, write_trace
    from probe.store import Store
    from probe.tracer import DecodeOptions, Tracer

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load(None, device="cpu", dtype="float32")
    speech = probe.load_audio(ROOT / "examples" / "en_lecture.flac").samples
    gap = np.zeros(int(0.3 * 16000), dtype=np.float32)
    samples = np.tile(np.concatenate([speech, gap]), 8)[: 30 * 16000]
    clip = audio_from_array(samples, 16000, source="lecture-30s")
    store = Store(Path(tempfile.mkdtemp(prefix="interventions-bench-")))
    tracers = {name: Tracer(loaded, get_plugin_manager(disabled=LECTURE_DISABLED, autoload=False),
                            DecodeOptions(language="en"), interventions=items)
               for name, items in arms(loaded.model.config.d_model).items()}
    runs: dict[str, list[float]] = {name: [] for name in tracers}
    tokens: dict[str, list[int]] = {}
    emitted: dict[str, int] = {}
    load_start = os.getloadavg()
    for round_ in range(args.repeats + 1):  # the first round warms up and is not counted
        names = list(tracers)
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            run = tracers[name].trace(clip)
            trace = write_trace(tracers[name], run, store, name=name)
            seconds = time.perf_counter() - started
            tokens[name] = trace.manifest["sequence"]
            emitted[name] = decoded_tokens(trace)
            store.delete(trace.id)
            if round_:
                runs[name].append(round(seconds, 3))
                print(f"round {round_} {name}: {seconds:.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    report = {
        "benchmark": "lecture-profile trace, 30 s of speech, embedded base, clean against intervened",
        "command": " ".join([".venv/bin/python", "benchmarks/interventions.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"hostname": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "transformers": transformers.__version__, "whisper_probe": probe.__version__,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "repeats": args.repeats,
        "arms": {name: {"interventions": [item.to_dict() for item in tracers[name].interventions],
                        "median_s": round(medians[name], 3), "runs_s": runs[name],
                        "ratio_to_clean": round(medians[name] / medians["clean"], 3),
                        "decoded_tokens": emitted[name],
                        "per_token_ratio_to_clean": round((medians[name] / emitted[name])
                                                          / (medians["clean"] / emitted["clean"]), 3),
                        "tokens_differ_from_clean": tokens[name] != tokens["clean"]}
                 for name in tracers},
        "target": {"ratio": TARGET_RATIO,
                   "met_same_tokens": {name: medians[name] / medians["clean"] <= TARGET_RATIO
                                       for name in tracers if name != "clean" and tokens[name] == tokens["clean"]},
                   "met_per_token": {name: (medians[name] / emitted[name]) / (medians["clean"] / emitted["clean"])
                                     <= TARGET_RATIO for name in tracers if name != "clean"}},
    }
    for entry in report["arms"].values():
        for item in entry["interventions"]:
            if "vector" in item:
                item["vector"] = f"{len(item['vector'])} numbers"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, entry in report["arms"].items():
        print(f"{name:10} {entry['median_s']:.2f} s  ×{entry['ratio_to_clean']}  {entry['decoded_tokens']} tokens "
              f"(per token ×{entry['per_token_ratio_to_clean']})  tokens differ: {entry['tokens_differ_from_clean']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
