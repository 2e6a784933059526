"""The picture of an alignment-head ranking (:mod:`probe.heads`): every decoder layer × head
coloured by how far its word starts are from the reference, the model's own alignment heads
outlined and the top set marked.  It draws from the ranking's JSON (``Ranking.to_dict()``), so
it needs no torch."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from probe.figures.base import new_figure

FONT_PT = 10.0


def alignment_heads_heatmap(ranking: dict, title: str | None = None) -> Figure:
    """Layer × head heatmap of ``ranking["heads"]``' word-start error (seconds, log scale, lighter is better),
    each cell labelled with it; the ``current`` set outlined in black, the ``top`` set's cells
    marked with a dot."""
    heads = ranking["heads"]
    layers = 1 + max(row["layer"] for row in heads)
    per_layer = 1 + max(row["head"] for row in heads)
    error = np.full((layers, per_layer), np.nan)  # [layer, head] seconds
    for row in heads:
        error[row["layer"], row["head"]] = row["start_error_s"]
    fig = new_figure(1.6 + 0.75 * per_layer, 1.6 + 0.6 * layers)
    ax = fig.add_subplot()
    norm = LogNorm(vmin=max(np.nanmin(error), 1e-3), vmax=max(np.nanmax(error), 2e-3))
    image = ax.imshow(error, cmap="viridis_r", norm=norm, origin="lower", aspect="auto")
    for (layer, head), value in np.ndenumerate(error):  # viridis_r is light at the low end: dark text there
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=FONT_PT,
                color="black" if norm(value) < 0.6 else "white")
    for layer, head in ranking["sets"]["current"]["heads"]:
        ax.add_patch(Rectangle((head - 0.44, layer - 0.44), 0.88, 0.88, fill=False, edgecolor="black", linewidth=2.5))
    for layer, head in ranking["sets"]["top"]["heads"]:
        ax.plot(head + 0.32, layer + 0.3, "o", color="#d62728", markersize=5)
    ax.set_xticks(range(per_layer), [str(h) for h in range(per_layer)], fontsize=FONT_PT)
    ax.set_yticks(range(layers), [str(layer) for layer in range(layers)], fontsize=FONT_PT)
    ax.set_xlabel("head", fontsize=FONT_PT)
    ax.set_ylabel("decoder layer", fontsize=FONT_PT)
    own = "published" if ranking.get("current_is_published", True) else "default"
    ax.set_title(title or f"{ranking['model']}: word-start error per head\n"
                          f"(black box: {own} alignment heads; red dot: top {len(ranking['sets']['top']['heads'])})",
                 fontsize=FONT_PT + 1)
    bar = fig.colorbar(image, ax=ax)
    ticks = [t for t in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if norm.vmin <= t <= norm.vmax]
    bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    bar.minorticks_off()
    bar.set_label("mean |start error| (s, log scale)", fontsize=FONT_PT)
    bar.ax.tick_params(labelsize=FONT_PT)
    return fig
