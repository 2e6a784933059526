"""token_probs' pictures: each step's probability, entropy and alternatives, the language
detection of each window, and the transcript coloured by confidence (HTML)."""

from __future__ import annotations

import html

import matplotlib
import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.errors import StoreError
from probe.figures import (PROBABILITY_CMAP, TOKENS_PER_PAGE, draws, new_figure, page, page_note, require,
                           tick_tokens, token_groups, token_label, token_labels, vocabulary)
from probe.figures.legible import MIN_FONT_PT, cell_text, fit_text, text_color_on

TOKENS = "token_probs.tokens"
MULTITASK = "token_probs.multitask"


@draws
def token_probs(trace, first: int = 0, count: int = TOKENS_PER_PAGE) -> Figure:
    """Per emitted token: the chosen token's probability (bars) and the entropy of the
    distribution (line), above the top-k alternatives with their probabilities."""
    require(trace, "token_probs.tokens")
    every_row = trace.table("token_probs.tokens")
    shown = page(len(every_row), first, count)
    rows = [every_row[i] for i in shown]
    vocab = vocabulary(trace)
    labels = token_labels(trace, [row["token_id"] for row in every_row], [row.get("window", 0) for row in every_row],
                          vocab)[shown.start:shown.stop]  # labelled whole: a character split at the page edge
    steps = np.arange(len(rows))
    probs = np.array([row["prob"] for row in rows], dtype=np.float32)  # [token]
    entropy = np.array([row["entropy"] for row in rows], dtype=np.float32)  # [token]
    k = max((len(row["top_k_probs"]) for row in rows), default=1)
    top = np.full((k, len(rows)), np.nan, dtype=np.float32)  # [k, token]
    for column, row in enumerate(rows):
        top[: len(row["top_k_probs"]), column] = row["top_k_probs"]
    cmap = matplotlib.colormaps[PROBABILITY_CMAP]
    fig = new_figure(max(8, 0.75 * len(rows) + 3), 7.5)
    cell_pt = (fig.get_size_inches()[0] - 3.4) * 72 / max(len(rows), 1)  # y labels and colour bar: ~3.4 in
    ax, ax_top = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.3])
    ax.bar(steps, probs, color=cmap(probs), edgecolor="0.3", linewidth=0.4)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("p(chosen token)")
    ax.set_title("Chosen-token probability (bars) and entropy (line)", fontsize=10)
    ax_entropy = ax.twinx()
    ax_entropy.plot(steps, entropy, color="black", marker=".", linewidth=1)
    ax_entropy.set_ylabel("entropy (nats)")
    ax_entropy.set_ylim(0, max(1.0, float(entropy.max(initial=0)) * 1.1))
    image = ax_top.imshow(top, cmap=PROBABILITY_CMAP, norm=colors.Normalize(0, 1), aspect="auto",
                          interpolation="nearest")
    for column, row in enumerate(rows):
        for rank, (token_id, p) in enumerate(zip(row["top_k_ids"], row["top_k_probs"])):
            emitted = token_id == row["token_id"]  # labelled as in its sequence: 语¹/₂, not its bytes
            text = labels[column] if emitted else token_label(trace, vocab, token_id)
            weight = "bold" if emitted else "normal"
            cell_text(ax_top, column, rank, fit_text(text, cell_pt), image.cmap(image.norm(p)), fontweight=weight)
    ax_top.set_yticks(range(k), [str(rank + 1) for rank in range(k)])
    ax_top.set_ylabel("rank among alternatives")
    ax_top.set_xlabel("emitted token (decoding step)")
    ax_top.set_title("Top-k alternatives at each step (bold: the token emitted)", fontsize=10)
    tick_tokens(ax_top, labels, "x")
    fig.colorbar(image, ax=[ax, ax_top], label="probability", shrink=0.8)
    fig.suptitle(f"Token probabilities{page_note(shown, len(every_row))}")
    return fig


def _multitask_window(trace, window: int = 0) -> dict:
    require(trace, "token_probs.multitask")
    windows = (trace.json("token_probs.multitask") or {}).get("windows") or []
    if not 0 <= window < len(windows):
        raise StoreError(f"record token_probs.multitask of trace {trace.id} has no window {window}; "
                         f"it has {len(windows)}")
    return windows[window]


@draws
def language_probs(trace, top: int = 10, window: int = 0) -> Figure:
    """The language-detection distribution at ``window``'s <|startoftranscript|> (its ``top`` most
    likely languages), with its language token and no-speech probability in the title."""
    index = window
    window = _multitask_window(trace, index)
    ranked = sorted((window.get("language_probs") or {}).items(), key=lambda item: -item[1])[:top]
    fig = new_figure(7, 0.32 * len(ranked) + 1.8)
    ax = fig.add_subplot()
    names = [f"<|{code}|>" for code, _ in ranked][::-1]
    values = np.array([p for _, p in ranked][::-1], dtype=np.float32)
    cmap = matplotlib.colormaps["Blues"]
    ax.barh(names, values, color=cmap(0.35 + 0.65 * values))
    for y, value in enumerate(values):
        inside = value > 0.85  # no room right of the bar: write inside its end
        ax.text(value - 0.01 if inside else value + 0.01, y, f"{value:.3f}", va="center", fontsize=MIN_FONT_PT,
                ha="right" if inside else "left", color=text_color_on(cmap(0.35 + 0.65 * value)) if inside else "black")
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_ylabel("language token")
    ax.set_title(("" if index == 0 else f"Window {index + 1}: ") + f"Language detection: <|{window.get('language')}|> "
                 f"(p={window.get('language_probability', 0):.2f}); "
                 f"no-speech p={window.get('no_speech_probability', 0):.3f}", fontsize=10)
    return fig


def _probability_css(probability: float) -> str:
    """The background colour of a token of this probability, as CSS (never the extremes of the
    colour map, so black text stays readable)."""
    red, green, blue, _ = matplotlib.colormaps[PROBABILITY_CMAP](0.15 + 0.7 * float(probability))
    return f"rgb({red * 255:.0f},{green * 255:.0f},{blue * 255:.0f})"


def transcript_html(trace, window: int | None = None) -> str:
    """The transcript as HTML spans coloured by each token's probability (red = unsure, green =
    sure), with probability, entropy and alternatives in each span's tooltip.  Self-contained
    (inline styles only); special and timestamp tokens are left out.

    ``window=None``: the tokens the transcript keeps (not a window skipped as no speech, nor the
    tail after a window's last timestamp that the next window decodes again); a window: every
    text token decoded in it."""
    require(trace, "token_probs.tokens")
    kept = {w.get("index"): w.get("kept") for w in trace.manifest.get("windows") or []}  # None: all
    rows = []
    for row in trace.table("token_probs.tokens"):
        in_window, limit = row.get("window", 0), kept.get(row.get("window", 0))
        shown = in_window == window if window is not None else limit is None or row["step"] < limit
        if row["kind"] == "text" and shown:
            rows.append(row)
    spans = []
    # one span per character group: a character split over tokens is shown once, its pieces in the tooltip
    for group in token_groups(trace, [row["token_id"] for row in rows], [row.get("window", 0) for row in rows]):
        members = rows[group["start"]:group["stop"]]
        tooltip = "; ".join(f"p={row['prob']:.3f}, entropy={row['entropy']:.2f} nats; top: "
                            + ", ".join(f"{text!r} {p:.2f}" for text, p in zip(row["top_k_tokens"], row["top_k_probs"]))
                            for row in members)
        if len(members) > 1:
            tooltip = f"{len(members)} tokens: {group['pieces']}\n{tooltip}"
        probability = min(row["prob"] for row in members)
        spans.append(f'<span title="{html.escape(tooltip)}" style="background:{_probability_css(probability)};'
                     f'color:#111;border-radius:3px;padding:1px 0">{html.escape(group["text"])}</span>')
    legend = " ".join(f'<span style="background:{_probability_css(p)};padding:0 6px;color:#111">{p:.2f}</span>'
                      for p in (0.0, 0.25, 0.5, 0.75, 1.0))
    return ('<div class="probe-transcript" style="font-size:1.15em;line-height:1.9;white-space:pre-wrap">'
            f"{''.join(spans)}</div>"
            f'<div style="font-size:0.8em;color:#555">token probability: {legend}</div>')
