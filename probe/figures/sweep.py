"""The picture of a sweep (:mod:`probe.sweep`): one metric over its cells as a heatmap —
layer × head for a head sweep, layer × "all heads" for a layer sweep, layer × k for local
attention — each cell's value written in it, the clean value in the title."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.figures.base import draws, new_figure
from probe.figures.legible import MIN_FONT_PT, cell_text

CHANGE_CMAP = "RdBu"  # signed changes: red where the intervention did harm
LEVEL_CMAP = "magma_r"  # error rates and token counts: darker is more


def value_text(metric: str, value: float) -> str:
    """A cell's value as its metric reads best: rates in %, log-probs and counts as numbers."""
    if np.isnan(value):
        return "–"
    if metric in ("wer", "ref_wer", "ref_wer_change"):
        return f"{value:+.0%}" if metric.endswith("change") else f"{value:.0%}"
    if metric == "delta_logprob" or metric.endswith("change"):
        return f"{value:+.2f}" if abs(value) < 10 else f"{value:+.0f}"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


@draws
def sweep_heatmap(sweep, metric: str = "delta_logprob", group: str | None = None) -> Figure:
    """``metric`` of every cell of ``sweep`` (over the clips of ``group``, or all), as a heatmap."""
    from probe.sweep import METRICS

    rows, columns, values = sweep.matrix(metric, group)  # [row, column]
    label = METRICS[metric][0]
    spec = sweep.spec
    fig = new_figure(max(7.0, 0.62 * len(columns) + 3.2), max(3.6, 0.5 * len(rows) + 2.6))
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    signed = metric == "delta_logprob" or metric.endswith("change")
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        norm = colors.TwoSlopeNorm(vcenter=0.0, vmin=-(bound or 1.0), vmax=bound or 1.0)
        cmap = CHANGE_CMAP if metric == "delta_logprob" else f"{CHANGE_CMAP}_r"
    else:
        top = float(finite.max()) if finite.size else 1.0
        norm = colors.Normalize(vmin=0.0, vmax=top if top > 0 else 1.0)
        cmap = LEVEL_CMAP
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    mapper = image.cmap
    for r in range(len(rows)):
        for c in range(len(columns)):
            value = values[r, c]
            background = mapper(norm(value)) if np.isfinite(value) else (1, 1, 1, 1)
            cell_text(ax, c, r, value_text(metric, value), background)
    ax.set_xticks(range(len(columns)), columns, fontsize=MIN_FONT_PT + 1)
    ax.set_yticks(range(len(rows)), rows, fontsize=MIN_FONT_PT + 1)
    family = spec["family"]
    ax.set_xlabel("k (frames either side)" if family == "local" else ("head" if family == "heads" else ""),
                  fontsize=MIN_FONT_PT + 2)
    ax.set_ylabel("encoder layer" if family == "local" else "layer", fontsize=MIN_FONT_PT + 2)
    what = {"heads": f"ablating one head of {spec.get('attention')}",
            "layers": f"ablating every head of one layer of {spec.get('attention')}",
            "local": "encoder self-attention limited to ±k frames"}[family]
    mean = " (mean ablation)" if spec.get("mean_of") else ""
    clean = sweep.clean_value(metric, group)
    clean_text = "" if clean is None else f"; clean: {value_text(metric, float(clean))}"
    clips = sum(1 for clip in sweep.clips if group is None or clip.get("group") == group)
    ax.set_title(f"{label}\n{what}{mean}\n{clips} clip(s){'' if group is None else f' ({group})'}{clean_text}",
                 fontsize=MIN_FONT_PT + 2)
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.ax.tick_params(labelsize=MIN_FONT_PT + 1)
    if signed:
        ends = {"delta_logprob": "less likely ←  → more likely", "tokens_change": "fewer ←  → more"}
        bar.set_label(ends.get(metric, "better ←  → worse"), fontsize=MIN_FONT_PT + 1)
    return fig
