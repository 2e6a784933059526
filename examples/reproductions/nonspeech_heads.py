"""A Calm-Whisper-style head sweep (arXiv 2505.12969) on the embedded base model: which decoder
self-attention heads, when ablated, most reduce the text Whisper writes on audio with no speech in
it, and what that costs on speech.

Calm-Whisper found that three of large-v3's 20 × 20 decoder self-attention heads cause most of its
non-speech hallucinations.  Here every one of base's 6 × 8 = 48 decoder self-attention heads is
zeroed in turn (``probe sweep --family heads --attention decoder.self_attn``) over a clip set made
on the spot (``clipsets.py``): 6 non-speech clips (near-silence, white/pink/brown noise, music,
mains hum) and 4 English speech clips with reference texts.  Per head: text tokens emitted on the
non-speech clips (vs clean), speech WER against the references (vs clean), and the Δ log-prob of
the clean speech transcripts.  Greedy, ``language="en"`` (as a hallucination study fixes the
language), at most 64 new tokens a window (a clip that never stops counts 64).

Writes ``results/nonspeech_heads.json`` and two heatmaps, ``results/nonspeech_heads_tokens.png``
and ``results/nonspeech_heads_speech_wer.png``.  The sweep itself stays in ``--store`` (resumable:
run it again and only missing cells are decoded).

Usage: ``python examples/reproductions/nonspeech_heads.py [--store DIR] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from clipsets import write_clip_set  # noqa: E402

MAX_NEW_TOKENS = 64
SPEECH_CLIPS = 4
MAX_RELATIVE_WER_RISE = 0.05  # "keeping speech WER": at most 5 points worse than clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="/tmp/whisper-probe-reproductions")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    import torch

    import probe
    from probe import runner, sweep
    from probe.figures.base import save
    from probe.figures.sweep import sweep_heatmap
    from probe.store import Store
    from probe.tracer import decode_options

    if args.threads:
        torch.set_num_threads(args.threads)
    store = Store(args.store)
    clips_file = write_clip_set(Path(args.store) / ".clipsets" / "nonspeech", speech=SPEECH_CLIPS)
    clips = sweep.clips_from_file(clips_file)
    loaded = runner.load("base", device="cpu", dtype="float32")
    spec = sweep.SweepSpec("heads", "decoder.self_attn")
    options = decode_options(False, language="en", max_new_tokens=MAX_NEW_TOKENS)
    started = time.perf_counter()
    done = sweep.run_sweep(loaded, spec, clips, store, options, name="calm-whisper-base", batch_size=args.batch_size,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started

    nonspeech = {row["cell"]: row for row in done.table("nonspeech")}
    speech = {row["cell"]: row for row in done.table("speech")}
    clean_tokens, clean_wer = nonspeech["clean"]["tokens"], speech["clean"]["ref_wer"]
    heads = []
    for cell in (c for c in done.cells if c["key"] != sweep.CLEAN):
        key = cell["key"]
        heads.append({"cell": key, **cell["labels"],
                      "nonspeech_tokens": nonspeech[key]["tokens"],
                      "nonspeech_tokens_change": nonspeech[key]["tokens_change"],
                      "nonspeech_clips_with_text": sum(1 for r in done.rows() if r["cell"] == key and r["tokens"] > 0
                                                       and done.clips[r["clip"]]["group"] == "nonspeech"),
                      "speech_wer": speech[key]["ref_wer"], "speech_wer_change": speech[key]["ref_wer_change"],
                      "speech_delta_logprob": speech[key]["delta_logprob"]})
    keeping = [h for h in heads if h["speech_wer_change"] <= MAX_RELATIVE_WER_RISE]
    best = sorted(keeping, key=lambda h: (h["nonspeech_tokens_change"], h["speech_wer_change"]))[:5]
    harmful = sorted(heads, key=lambda h: -h["speech_wer_change"])[:5]
    clean_rows = [r for r in done.rows() if r["cell"] == sweep.CLEAN]
    runs = done.manifest.get("runs") or []
    result = {
        "what": "decoder self-attention head ablation (zeroed) on base: text emitted on non-speech, speech WER",
        "model": loaded.model_id, "sweep": done.id, "decode": options.to_dict(),
        "clips": [{"file": Path(c["source"]).name, "group": c["group"], "duration": c["duration"]} for c in done.clips],
        "clean": {"nonspeech_tokens_per_clip": clean_tokens, "speech_wer": clean_wer,
                  "transcripts": {Path(done.clips[r["clip"]]["source"]).name: r["transcript"] for r in clean_rows}},
        "heads": heads,
        "best_for_nonspeech_keeping_speech_wer": best,
        "most_harmful_to_speech": harmful,
        "timing": {"cells": len(done.cells), "clips": len(done.clips), "this_call_seconds": round(seconds, 1),
                   "sweep_runs": runs, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                   "machine": {"platform": platform.platform(), "processor": platform.processor(),
                               "cpus": __import__("os").cpu_count()},
                   "versions": {"whisper-probe": probe.__version__, "torch": torch.__version__,
                                "transformers": __import__("transformers").__version__}},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nonspeech_heads.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    save(sweep_heatmap(done, "tokens_change", "nonspeech"), out / "nonspeech_heads_tokens.png", dpi=110)
    save(sweep_heatmap(done, "ref_wer_change", "speech"), out / "nonspeech_heads_speech_wer.png", dpi=110)
    print(f"clean: {clean_tokens:.1f} text tokens per non-speech clip, speech WER {clean_wer:.1%}")
    for h in best:
        print(f"  ablate {h['cell']}: {h['nonspeech_tokens']:.1f} tokens per non-speech clip "
              f"({h['nonspeech_tokens_change']:+.1f}), speech WER {h['speech_wer']:.1%} ({h['speech_wer_change']:+.1%})")
    print(f"sweep {done.id}: {len(done.cells)} cells × {len(done.clips)} clips; this call {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
