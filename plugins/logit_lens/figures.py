"""logit_lens' picture: layers × emitted tokens, each layer's top prediction and the probability it
already gives the token finally emitted."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.figures import (PROBABILITY_CMAP, TOKENS_PER_PAGE, draws, new_figure, page, page_note, require,
                           tick_tokens, token_label, token_labels, vocabulary)
from probe.figures.legible import CELL_FONT_PT, cell_text, fit_text


def lens_vocabulary(trace) -> dict[int, str]:
    """Token id → text of every prediction the lens kept (``top_ids`` with ``top_tokens``)."""
    if not {"logit_lens.top_ids", "logit_lens.top_tokens"} <= set(trace.records):
        return {}
    ids = np.asarray(trace.record("logit_lens.top_ids")).reshape(-1)
    texts = [text for layer in trace.record("logit_lens.top_tokens") for row in layer for text in row]
    return dict(zip(ids.tolist(), texts))


@draws
def logit_lens(trace, first: int = 0, count: int = TOKENS_PER_PAGE) -> Figure:
    """Layers × emitted tokens: each cell names the top prediction of that decoder layer's
    residual read through the final norm and unembedding; colour is the probability that layer
    gives the token the model really emitted (text in bold where it is already the top choice)."""
    for name in ("logit_lens.top_ids", "logit_lens.chosen_prob", "logit_lens.chosen_rank"):
        require(trace, name)
    top_ids = trace.tensor("logit_lens.top_ids")[:, :, 0]  # [layer, token]
    chosen_prob = trace.tensor("logit_lens.chosen_prob")  # [layer, token]
    chosen_rank = trace.tensor("logit_lens.chosen_rank")  # [layer, token]
    n_layers, n_tokens = chosen_prob.shape
    shown = page(n_tokens, first, count)
    columns = list(shown)
    vocab = {**lens_vocabulary(trace), **vocabulary(trace)}
    emitted = [token for window in trace.manifest.get("windows") or [] for token in window.get("tokens") or []]
    windows = [w.get("index", 0) for w in trace.manifest.get("windows") or [] for _ in w.get("tokens") or []]
    every = token_labels(trace, emitted, windows, vocab)
    labels = [every[i] if i < len(every) else "?" for i in columns]
    fig = new_figure(max(8, 0.75 * len(columns) + 3), max(3.5, 0.32 * n_layers + 2.6))
    ax = fig.add_subplot()
    image = ax.imshow(chosen_prob[:, columns], cmap=PROBABILITY_CMAP, norm=colors.Normalize(0, 1),
                      aspect="auto", origin="lower", interpolation="nearest")
    width_in, height_in = fig.get_size_inches()
    cell_pt = (width_in - 3.2) * 72 / max(len(columns), 1)  # the y labels and the colour bar take ~3.2 in
    if (height_in - 2.4) * 72 / n_layers >= 1.3 * CELL_FONT_PT:  # rows tall enough for a line of text
        for layer in range(n_layers):
            for column, token in enumerate(columns):
                is_top = chosen_rank[layer, token] == 0
                # the layer's top is the emitted token: labelled as in its sequence (语¹/₂, not its bytes)
                top = labels[column] if is_top else token_label(trace, vocab, int(top_ids[layer, token]))
                text = fit_text(top, cell_pt)
                cell_text(ax, column, layer, text, image.cmap(image.norm(chosen_prob[layer, token])),
                          fontweight="bold" if is_top else "normal")
    ax.set_yticks(range(n_layers), [f"block {layer}" for layer in range(n_layers)])
    tick_tokens(ax, labels, "x")
    ax.set_xlabel("emitted token")
    ax.set_ylabel("decoder layer (residual after block)")
    fig.colorbar(image, ax=ax, label="p(emitted token) at this layer")
    ax.set_title(f"Logit lens: top prediction per layer{page_note(shown, n_tokens)}")
    return fig
