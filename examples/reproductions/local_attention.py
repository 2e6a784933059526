"""Reid's local-attention experiment ("Interpreting OpenAI's Whisper", 2023) on the embedded models:
how much does WER rise when the encoder's self-attention may only look ±k frames (20 ms each)
around each frame?

Reid found that for most of tiny's encoder layers attention can be restricted to a narrow local
band with little loss.  Here ``probe sweep --family local --per-layer`` limits the encoder
self-attention to ±k frames, k ∈ {5, 10, 20, 40, 75}, in every layer together and in each layer
alone, on a speech set made on the spot (``clipsets.py``: the two English example clips and
lecture sentences spoken by espeak-ng, with reference texts), greedy, ``language="en"``, and
reports WER against the references per (layer, k), with "full" being the model as it is.

Writes ``results/local_attention.json`` and, per model, ``results/local_attention_<model>.png``
(WER vs k, one line per layer and one for every layer together) and the sweep's heatmap
``results/local_attention_<model>_heatmap.png``.

Usage: ``python examples/reproductions/local_attention.py [--models base tiny.en] [--store DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from clipsets import write_clip_set  # noqa: E402

K = (5, 10, 20, 40, 75)
SPEECH_CLIPS = 8
MAX_NEW_TOKENS = 96


def wer_by_layer(done) -> dict:
    """{"all" | layer: {"full": WER, k: WER, ...}} from a local sweep's table (WER vs the references)."""
    table = {row["cell"]: row for row in done.table()}
    full = table["clean"]["ref_wer"]
    curves: dict[str, dict[str, float]] = {}
    for cell in (c for c in done.cells if c["key"] != "clean"):
        layer, k = str(cell["labels"]["layer"]), cell["labels"]["k"]
        curves.setdefault(layer, {"full": full})[str(k)] = table[cell["key"]]["ref_wer"]
    return curves


def plot(curves: dict, model: str, path: Path) -> None:
    from probe.figures.base import draws, new_figure, save
    from probe.figures.legible import MIN_FONT_PT

    @draws
    def figure():
        fig = new_figure(8, 5)
        ax = fig.subplots()
        xs = [*K, 1500]  # "full": every frame
        for layer, curve in curves.items():
            ys = [curve[str(k)] * 100 for k in K] + [curve["full"] * 100]
            style = dict(color="black", linewidth=2.5, marker="s") if layer == "all" else dict(marker="o", linewidth=1.2)
            ax.plot(range(len(xs)), ys, label="every layer" if layer == "all" else f"layer {layer} alone", **style)
        ax.set_xticks(range(len(xs)), [*map(str, K), "full"], fontsize=MIN_FONT_PT + 1)
        ax.set_xlabel("encoder self-attention limited to ±k frames (20 ms each)", fontsize=MIN_FONT_PT + 2)
        ax.set_ylabel("WER vs reference (%)", fontsize=MIN_FONT_PT + 2)
        ax.set_title(f"{model}: WER when encoder attention is local", fontsize=MIN_FONT_PT + 3)
        ax.tick_params(labelsize=MIN_FONT_PT + 1)
        ax.legend(fontsize=MIN_FONT_PT + 1, ncols=2)
        ax.grid(alpha=0.3)
        return fig
    save(figure(), path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["base", "tiny.en"])
    parser.add_argument("--store", default="/tmp/whisper-probe-reproductions")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    import torch

    from probe import runner, sweep
    from probe.figures.base import save
    from probe.figures.sweep import sweep_heatmap
    from probe.store import Store
    from probe.tracer import decode_options

    if args.threads:
        torch.set_num_threads(args.threads)
    store = Store(args.store)
    clips = sweep.clips_from_file(write_clip_set(Path(args.store) / ".clipsets" / "speech", speech=SPEECH_CLIPS,
                                                 nonspeech=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"what": "WER vs reference with encoder self-attention limited to ±k frames, per layer and in all",
              "k": list(K), "clips": [Path(c.clip.source).name for c in clips], "models": {}}
    for model in args.models:
        loaded = runner.load(model, device="cpu", dtype="float32")
        options = decode_options(False, language="en", max_new_tokens=MAX_NEW_TOKENS)
        started = time.perf_counter()
        done = sweep.run_sweep(loaded, sweep.SweepSpec("local", k=K, per_layer=True), clips, store, options,
                               name=f"reid-local-{model}", batch_size=args.batch_size,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
        curves = wer_by_layer(done)
        tolerant = {k: [layer for layer, curve in curves.items() if layer != "all"
                        and curve[str(k)] - curve["full"] <= 0.02] for k in map(str, K)}
        result["models"][model] = {"sweep": done.id, "wer": curves, "seconds": round(time.perf_counter() - started, 1),
                                   "layers_within_2_points_of_full": tolerant}
        plot(curves, model, out / f"local_attention_{model}.png")
        save(sweep_heatmap(done, "ref_wer"), out / f"local_attention_{model}_heatmap.png", dpi=110)
        print(f"{model}: full WER {curves['all']['full']:.1%}; every layer at ±k: "
              + ", ".join(f"k={k} {curves['all'][str(k)]:.1%}" for k in K))
        for k in map(str, K):
            print(f"  k={k}: layers alone within 2 points of full: {', '.join(tolerant[k]) or 'none'}")
    (out / "local_attention.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
