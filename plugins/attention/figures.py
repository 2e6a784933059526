"""attention's pictures: encoder and decoder self-attention of a layer (every head, or one), and
every encoder head's entropy and attention distance at a glance."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.constants import ENCODER_FRAMES_PER_SECOND
from probe.figures import (ATTENTION_CMAP, draws, head_grid, heads_of, imshow, layer_slice, middle_layer,
                           new_figure, require, tick_tokens, token_labels, vocabulary, window_sequence)
from probe.figures.legible import CELL_FONT_PT, cell_text, chars_that_fit, clip_range, over_time, range_note
from probe.figures.audio import first_window_span


@over_time(first_window_span)
@draws
def encoder_attention(trace, layer: int | None = None, head: int | None = None,
                      time_range: tuple[float, float] | None = None) -> Figure:
    """Encoder self-attention of one layer (default: the middle one) over the frames holding audio;
    ``head=None`` draws a grid of every head; ``time_range`` (seconds of the clip) zooms both
    axes to the queries and keys of that span.  Patterns are stored pooled (see the attention
    plugin), rows sum to 1."""
    layer = middle_layer(trace, "encoder_layers") if layer is None else layer
    layer, pattern = layer_slice(trace, "attention.encoder", layer)  # [head, query_cell, key_cell]
    meta = trace.records["attention.encoder"].get("meta") or {}
    cell_seconds = int(meta.get("pool", 1)) / ENCODER_FRAMES_PER_SECOND
    seconds = pattern.shape[-1] * cell_seconds
    shown = clip_range(time_range, 0.0, seconds, "the first window's audio")
    norm = colors.PowerNorm(0.5, vmin=0, vmax=max(float(pattern.max()), 1e-6))
    heads = heads_of(pattern.shape[0], head)
    fig = new_figure(10, 7.5) if head is None else new_figure(6.5, 5.5)
    which = "all heads" if head is None else f"head {head}"
    axes = head_grid(fig, heads,
                     lambda ax, h: imshow(ax, pattern[h], (0, seconds, 0, seconds), ATTENTION_CMAP, norm),
                     f"Encoder self-attention, layer {layer}, {which} (first window, {seconds:.2f} s of audio)"
                     f"{range_note(time_range, shown)}", "attention weight (√ scale)", "key time (s)", "query time (s)")
    axes.flat[0].set_xlim(*shown)  # the panels share both axes
    axes.flat[0].set_ylim(*shown)
    return fig


@draws
def decoder_attention(trace, layer: int | None = None, head: int | None = None) -> Figure:
    """Decoder (causal) self-attention of one layer (default: the middle one) over the prompt and
    emitted tokens of the first window, token texts on both axes; ``head=None`` draws a grid of
    every head."""
    layer = middle_layer(trace, "decoder_layers") if layer is None else layer
    layer, pattern = layer_slice(trace, "attention.decoder", layer)  # [head, query, key]
    n_tokens = pattern.shape[-1]
    vocab = vocabulary(trace)
    labels = token_labels(trace, window_sequence(trace, 0), vocab=vocab)[:n_tokens]
    labels += ["?"] * (n_tokens - len(labels))
    heads = heads_of(pattern.shape[0], head)
    norm = colors.Normalize(0, 1)

    def draw(ax, h):
        image = ax.imshow(pattern[h], cmap=ATTENTION_CMAP, norm=norm, interpolation="nearest", aspect="auto")
        if head is not None or n_tokens <= 24:
            tick_tokens(ax, labels, "x")
            tick_tokens(ax, labels, "y")
        return image

    size = (11, 9) if head is None else (7.5, 6.5)
    fig = new_figure(*size)
    which = "all heads" if head is None else f"head {head}"
    head_grid(fig, heads, draw, f"Decoder self-attention, layer {layer}, {which} (first window)",
               "attention weight", "key token (attended to)", "query token (reading)")
    return fig


@draws
def attention_summary(trace) -> Figure:
    """Per encoder layer and head: attention entropy (nats) and mean attention distance (ms),
    averaged over windows.  Low entropy and distance: sharp, local heads; high: diffuse, global."""
    for name in ("attention.encoder_entropy", "attention.encoder_distance"):
        require(trace, name)
    entropy = trace.tensor("attention.encoder_entropy").astype(np.float32).mean(0)  # [layer, head]
    distance_ms = trace.tensor("attention.encoder_distance").astype(np.float32).mean(0) * 1000 / \
        ENCODER_FRAMES_PER_SECOND  # [layer, head]
    fig = new_figure(11, 0.45 * entropy.shape[0] + 2.4)
    for ax, values, cmap, label, fmt in zip(
            fig.subplots(1, 2), (entropy, distance_ms), ("viridis", "cividis"),
            ("entropy (nats)", "mean attention distance (ms)"), ("{:.1f}", "{:.0f}")):
        image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest",
                          norm=colors.Normalize(float(values.min()), float(values.max())))
        texts = {index: fmt.format(value) for index, value in np.ndenumerate(values)}
        # a panel is about (width - 2.6 in) / 2 wide; write the numbers only where they fit at CELL_FONT_PT
        cell_pt = (fig.get_size_inches()[0] - 2.6) / 2 * 72 / values.shape[1]
        row_pt = (fig.get_size_inches()[1] - 1.6) * 72 / values.shape[0]
        if max(map(len, texts.values())) <= chars_that_fit(cell_pt) and row_pt >= 1.3 * CELL_FONT_PT:
            for (layer, head), text in texts.items():
                cell_text(ax, head, layer, text, image.cmap(image.norm(values[layer, head])))
        ax.set_xlabel("head")
        ax.set_ylabel("encoder layer")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.set_title(label.capitalize(), fontsize=10)
        fig.colorbar(image, ax=ax, label=label)
    fig.suptitle("Encoder self-attention per layer and head")
    return fig
