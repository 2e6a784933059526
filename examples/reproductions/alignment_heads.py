"""Alignment-head discovery on the embedded models: which cross-attention heads time words best, and
how the published alignment heads compare.

The speech set is the 16 English lecture sentences of :mod:`probe.audio.espeak`, spoken by
espeak-ng (two voices, three rates, pauses of 0.3-0.8 s before each sentence; four sentences a
clip, four clips of about 17 s), with espeak-ng's own word events as the reference word starts
(:mod:`probe.speech_set`).  For base (6 × 8 heads) and tiny.en (4 × 6) every head alone times the
teacher-forced transcript with the product's DTW (:mod:`probe.heads`); heads are ranked by the
mean absolute error of the word starts.  Reported: the overlap of the top |published| heads with
the published ones (the ``alignment_heads`` of the converted models), the error of the published
set, the discovered top set and openai-whisper's default (every head of the second half of the
layers) — in-sample, and with the top set chosen on two clips and scored on the other two (both
ways), since a set chosen and scored on the same clips flatters itself.

Writes ``results/alignment_heads.json`` and ``results/alignment_heads_{base,tiny.en}.png``.

Usage: ``python examples/reproductions/alignment_heads.py [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

MODELS = ("base", "tiny.en")


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two score lists (no ties expected)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def held_out(loaded, forcing, top: int) -> dict:
    """Top set chosen on one half of the clips and scored on the other, both ways, next to the
    published and default sets on the same halves; word-weighted means over the two halves."""
    from probe import heads

    half = len(forcing) // 2
    folds = [(forcing[:half], forcing[half:]), (forcing[half:], forcing[:half])]
    rows, per_head = [], []
    for choose, test in folds:
        chosen = heads.rank_forced(loaded, choose, top)
        per_head.append({head: score.error for head, score in chosen.heads})
        scores = {"top": heads.score_heads(loaded, test, chosen.top(top)),
                  "current": heads.score_heads(loaded, test, list(loaded.alignment_heads)),
                  "default": heads.score_heads(loaded, test, chosen.sets["default"][0])}
        rows.append({"chosen_on": [r.name for r, _ in choose], "scored_on": [r.name for r, _ in test],
                     "top_heads": [list(h) for h in chosen.top(top)],
                     **{name: score.to_dict() for name, score in scores.items()}})
    every = sorted(per_head[0])
    summary = {}
    for name in ("top", "current", "default"):
        words = [row[name]["words"] for row in rows]
        summary[name] = {key: round(float(np.average([row[name][key] for row in rows], weights=words)), 4)
                         for key in ("start_error_s", "within_0.2s", "start_bias_s")}
    return {"folds": rows, "mean": summary,
            "per_head_rank_correlation": round(rank_correlation([per_head[0][h] for h in every],
                                                                [per_head[1][h] for h in every]), 3)}


def one_model(name: str, references) -> dict:
    from probe import heads
    from probe.figures.base import save
    from probe.figures.heads import alignment_heads_heatmap
    from probe.models import load_model

    started = time.perf_counter()
    loaded = load_model(name, device="cpu", dtype="float32")
    published = [list(h) for h in loaded.alignment_heads]
    forcing = heads.teacher_force_all(loaded, references)
    ranking = heads.rank_forced(loaded, forcing, top=len(published))
    result = {**ranking.to_dict(), "published": published,
              "overlap": {"top_k": len(published), "in_published": ranking.overlap(len(published)),
                          "heads": sorted(list(h) for h in set(ranking.top(len(published)))
                                          & set(loaded.alignment_heads))},
              "held_out": held_out(loaded, forcing, len(published))}
    result["seconds"] = round(time.perf_counter() - started, 1)
    figure = HERE / "results" / f"alignment_heads_{name}.png"
    save(alignment_heads_heatmap(result, f"{name}: word-start error per head ({result['sets']['current']['words']} "
                                         f"words)\nblack box: published alignment heads; red dot: top {len(published)}"),
         figure)
    print("\n".join(heads.describe(ranking, len(ranking.heads))))
    print(f"held out (top {len(published)} chosen on 2 clips, scored on the other 2, both ways): "
          + ", ".join(f"{k} {v['start_error_s']:.3f} s / {v['within_0.2s']:.0%}"
                      for k, v in result["held_out"]["mean"].items())
          + f"; per-head rank correlation between halves {result['held_out']['per_head_rank_correlation']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from probe import speech_set

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    references = speech_set.synthesized(speech_set.lecture_sentences())
    synthesis = time.perf_counter() - started
    (HERE / "results").mkdir(exist_ok=True)
    results = {
        "speech_set": {"sentences": len(speech_set.lecture_sentences()), "clips": len(references),
                       "seconds_of_audio": round(sum(r.clip.duration for r in references), 2),
                       "reference_words": sum(len(r.words) for r in references),
                       "voices": list(speech_set.VOICES), "words_per_minute": list(speech_set.WORDS_PER_MINUTE),
                       "reference": "espeak-ng WORD events (audio_position); words espeak-ng runs into the next "
                                    "one without an event of their own, and the word after them, are left out",
                       "scored": "every reference word matched to a timed word, except each clip's first (DTW "
                                 "starts it at 0 s whatever the heads)",
                       "synthesis_seconds": round(synthesis, 1)},
        "models": {name: one_model(name, references) for name in MODELS},
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
    }
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    out = HERE / "results" / "alignment_heads.json"
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} in {results['total_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
