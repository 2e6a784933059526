"""cross_attention's pictures: where each decoded token listened in the audio, under the log-Mel
with the word timings, and where a rejected fallback attempt listened; plus the reads the
dashboard's playback uses (:func:`cross_attention_rows`, :func:`attended_span`)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colors
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from probe.constants import ENCODER_FRAMES_PER_SECOND, MEL_FRAMES_PER_SECOND
from probe.errors import StoreError
from probe.figures import (draws, first_spoken_window, heads_of, imshow, layer_index, log_mel_array, new_figure,
                           require, tick_tokens, token_labels, vocabulary, window_entry, window_span)
from probe.figures.audio import window_time_span
from probe.figures.legible import clip_range, over_time, range_note, stagger_labels

WORDS = "cross_attention.words"


def timed_words(trace, window: int | None = None) -> list[dict]:
    """The trace's word timings (word, start, end in seconds of the clip, window, tokens), of every
    window or only of ``window``; [] if none."""
    words = trace.json(WORDS) if WORDS in trace.records else []  # CachedTrace: read once per session
    return words if window is None else [word for word in words if word.get("window", 0) == window]


def cross_attention_rows(trace, layer: int | None = None, head: int | None = None, window: int = 0) \
        -> tuple[np.ndarray, list[dict]]:
    """What each token decoded in ``window`` attended to, and those tokens' rows.

    Returns (matrix [token, frame] over the window's audio, 50 frames/s from the window's start;
    the ``cross_attention.tokens`` rows of those tokens).  ``layer=None``: the alignment-head
    average the word timings come from (text tokens only); otherwise layer ``layer``'s
    cross-attention for every emitted token, of one head or the mean of all heads.
    """
    require(trace, "cross_attention.tokens")
    start, end = window_span(trace, window)
    frames = max(1, math.ceil((end - start) * ENCODER_FRAMES_PER_SECOND))
    tokens = trace.table("cross_attention.tokens")
    if layer is None:
        require(trace, "cross_attention.alignment")
        # the alignment matrix has one row per aligned token: each window's text and its closing row
        tokens = [token for token in tokens if token.get("aligned", token["is_text"])]
        name, index = "cross_attention.alignment", ()
    else:
        name, index = "cross_attention.weights", (layer_index(trace, "cross_attention.weights", layer), slice(None))
    rows = [i for i, token in enumerate(tokens) if token["window"] == window]  # contiguous: windows in order
    if not rows:
        return np.zeros((0, frames), dtype=np.float32), []
    picked = np.asarray(trace.tensor(name, lazy=True)[(*index, slice(rows[0], rows[-1] + 1))], dtype=np.float32)
    if layer is not None:  # [head, token, frame]
        picked = picked.mean(0) if head is None else picked[heads_of(picked.shape[0], head)[0]]
    return picked[:, :frames], [tokens[i] for i in rows]


def token_word(trace, tokens: list[dict], token_index: int, window: int = 0) -> dict | None:
    """The timed word that ``tokens[token_index]`` is part of, or None (a timestamp or special
    token, or text the next window decodes again).  ``tokens``: the rows
    :func:`cross_attention_rows` gives for ``window``."""
    return next((word for word, rows in _word_rows(timed_words(trace, window), tokens) if token_index in rows), None)


def attended_span(trace, token_index: int, layer: int | None = None, head: int | None = None, window: int = 0,
                  margin: float = 0.06) -> tuple[float, float]:
    """(start, end) seconds in the clip that token ``token_index`` of ``window`` stands for,
    widened by ``margin`` seconds and kept inside the window.

    A token of a timed word gets that word's span: the DTW on the alignment heads, as the word
    timestamps.  Any other token (timestamps, special tokens) gets the contiguous frames around its
    attention peak holding at least half the peak's weight, the peak looked for only between the
    neighbouring words (from the start of the word before to the end of the word after, or to
    where the window's kept text ends; a token decoded again by the next window: after that), so a
    stray bright cell elsewhere in the window cannot take it."""
    matrix, tokens = cross_attention_rows(trace, layer, head, window)  # [token, frame]
    start, end = window_span(trace, window)
    word = token_word(trace, tokens, token_index, window)
    if word is not None:
        low, high = word["start"], word["end"]
    else:
        placed = [(word, rows) for word, rows in _word_rows(timed_words(trace, window), tokens) if rows]
        before = [word for word, rows in placed if rows[-1] < token_index]
        after = [word for word, rows in placed if rows[0] > token_index]
        entry = window_entry(trace, window)
        covered = min(end, float(entry.get("next_seek", end * 100)) / 100)  # where the kept text's audio ends
        if tokens[token_index]["step"] >= entry.get("kept", len(entry.get("tokens") or ())) and covered < end:
            low, high = covered, end  # decoded again by the next window: it stands for audio after the seek
        else:
            low, high = before[-1]["start"] if before else start, after[0]["end"] if after else covered
        first = max(0, math.floor((low - start) * ENCODER_FRAMES_PER_SECOND))
        stop = max(first + 1, min(matrix.shape[1], math.ceil((high - start) * ENCODER_FRAMES_PER_SECOND)))
        row = matrix[token_index, first:stop]  # [frame] between the neighbouring words
        peak = int(row.argmax())
        floor = row.min() + (row[peak] - row.min()) / 2
        left = right = peak
        while left > 0 and row[left - 1] >= floor:
            left -= 1
        while right < len(row) - 1 and row[right + 1] >= floor:
            right += 1
        low = start + (first + left) / ENCODER_FRAMES_PER_SECOND
        high = start + (first + right + 1) / ENCODER_FRAMES_PER_SECOND
    return max(start, low - margin), min(end, high + margin)


def _word_rows(words: list[dict], tokens: list[dict]) -> list[tuple[dict, list[int]]]:
    """Each word with the matrix rows of its tokens (words consume text tokens in order)."""
    text_rows = [i for i, token in enumerate(tokens) if token["is_text"]]
    placed, cursor = [], 0
    for word in words:
        count = len(word.get("tokens") or [])
        placed.append((word, text_rows[cursor: cursor + count]))
        cursor += count
    return placed


def _heard_in(matrix: np.ndarray, start: float, shown: tuple[float, float]) -> range:
    """The rows (tokens) whose attention peaks inside ``shown`` seconds: first to last such row."""
    peaks = start + (matrix.argmax(1) + 0.5) / ENCODER_FRAMES_PER_SECOND  # [token] seconds of the clip
    inside = np.flatnonzero((peaks >= shown[0]) & (peaks <= shown[1]))
    return range(int(inside[0]), int(inside[-1]) + 1) if len(inside) else range(len(matrix))


@over_time(window_time_span)
@draws
def cross_attention(trace, layer: int | None = None, head: int | None = None, window: int | None = None,
                    time_range: tuple[float, float] | None = None) -> Figure:
    """Decoded tokens against audio time, under the log-Mel spectrogram with word timestamps,
    for one 30 s window (tokens and words of that window; time in seconds of the clip).
    ``window=None``: the first window whose text the transcript keeps (not one skipped as no speech).

    ``layer=None`` shows the alignment-head average (z-scored, median-filtered) the DTW word
    timings walk; a layer shows that layer's attention, of one head or averaged over heads.
    Boxes mark each word's DTW span over its tokens.  ``time_range`` (seconds of the clip, within
    the window) zooms to that span and the tokens whose attention peaks in it.
    """
    if window is None:
        window = first_spoken_window(trace)
    matrix, tokens = cross_attention_rows(trace, layer, head, window)  # [token, frame]
    start, end = window_span(trace, window)
    words = timed_words(trace, window)
    mel = log_mel_array(trace, window)[:, : math.ceil((end - start) * MEL_FRAMES_PER_SECOND)]  # [n_mels, frame]
    vocab = vocabulary(trace)
    labels = token_labels(trace, [t["token_id"] for t in tokens], vocab=vocab)
    shown = clip_range(time_range, start, end, f"window {window + 1}")
    rows = _heard_in(matrix, start, shown) if time_range is not None else range(len(tokens))
    boxes = [(word, [row for row in word_rows if row in rows]) for word, word_rows in _word_rows(words, tokens)]
    matrix, labels = matrix[rows.start:rows.stop], labels[rows.start:rows.stop]
    words = [word for word in words if word["end"] > shown[0] and word["start"] < shown[1]]
    fig = new_figure(11, 3 + 0.22 * max(len(rows), 12))  # bounded: long windows thin their token labels
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.4])
    mel_image = imshow(top, mel, (start, end, 0, mel.shape[0]), "magma")
    top.vlines([word["start"] for word in words], 0, 1, transform=top.get_xaxis_transform(), color="white",
               linewidth=0.6, alpha=0.8)  # one collection: a line per word
    stagger_labels(top, [((word["start"] + word["end"]) / 2, word["word"].strip()) for word in words])
    top.set_xlim(*shown)
    top.set_ylabel("Mel bin")
    top.set_title("log-Mel spectrogram with word timestamps (DTW on the alignment heads; words without room "
                  "are left out)" + range_note(time_range, shown), fontsize=10)
    fig.colorbar(mel_image, ax=top, label="log10 power", pad=0.01)
    if layer is None:
        heads = ", ".join(f"{l}.{h}" for l, h in (trace.manifest.get("model") or {}).get("alignment_heads", []))
        what, label, norm = f"alignment-head average (layer.head {heads})", "z-scored attention", None
    else:
        which = "mean of all heads" if head is None else f"head {head}"
        what, label = f"layer {layer_index(trace, 'cross_attention.weights', layer)}, {which}", \
            "attention weight (√ scale)"
        norm = colors.PowerNorm(0.5, vmin=0, vmax=max(float(matrix.max(initial=0)), 1e-6))
    image = bottom.imshow(matrix, aspect="auto", origin="upper", extent=(start, end, rows.stop - 0.5, rows.start - 0.5),
                          cmap="viridis", norm=norm, interpolation="nearest")
    bottom.add_collection(PatchCollection(
        [Rectangle((word["start"], word_rows[0] - 0.5), word["end"] - word["start"], len(word_rows))
         for word, word_rows in boxes if word_rows], facecolor="none", edgecolor="white", linewidth=0.9),
        autolim=False)
    tick_tokens(bottom, labels, "y", first=rows.start)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("decoded token")
    bottom.set_title(f"Cross-attention: {what}; boxes: word spans", fontsize=10)
    fig.colorbar(image, ax=bottom, label=label, pad=0.01)
    n_windows = len(trace.manifest.get("windows") or [])
    fig.suptitle("Where each decoded token listens in the audio"
                 + (f" (window {window + 1} of {n_windows})" if n_windows > 1 else ""))
    return fig


@over_time(window_time_span)
@draws
def rejected_attention(trace, window: int, attempt: int, time_range: tuple[float, float] | None = None) -> Figure:
    """What a rejected fallback attempt attended to: the alignment heads' mean cross-attention of
    each of its tokens (rows, first at the bottom) over the window's audio (seconds in the clip, or
    ``time_range`` of it) — where a looping attempt stops moving through the audio.  Needs
    ``--rejected-cross-attention``."""
    require(trace, "cross_attention.rejected")
    rows = [i for i, row in enumerate(trace.table("cross_attention.rejected_tokens"))
            if row["window"] == window and row["attempt"] == attempt]
    if not rows:
        raise StoreError(f"trace {trace.id} kept no cross-attention for attempt {attempt} of window {window + 1}"
                         " (only rejected attempts have it)")
    entry = window_entry(trace, window)
    start = float(entry["start"])
    frames = max(1, round((float(entry["end"]) - start) * ENCODER_FRAMES_PER_SECOND))
    matrix = np.asarray(trace.tensor("cross_attention.rejected")[rows[0]:rows[-1] + 1], np.float32)[:, :frames]
    tokens = trace.table("cross_attention.rejected_tokens")[rows[0]:rows[-1] + 1]
    fig = new_figure(10, min(9.0, 2.2 + 0.12 * len(rows)))
    ax = fig.subplots()
    shown = clip_range(time_range, start, float(entry["end"]), f"window {window + 1}")
    image = imshow(ax, matrix, (start, start + matrix.shape[1] / ENCODER_FRAMES_PER_SECOND, -0.5, len(rows) - 0.5),
                    "magma", norm=colors.PowerNorm(0.5, vmin=0, vmax=max(float(matrix.max()), 1e-6)))
    ax.set_xlim(*shown)
    tick_tokens(ax, token_labels(trace, [t["token_id"] for t in tokens]), "y", max_labels=40)
    fig.colorbar(image, ax=ax, label="attention (alignment-head mean)", fraction=0.03)
    record = next((a for a in entry.get("attempts") or [] if a["attempt"] == attempt), {})
    ax.set_title(f"Window {window + 1}, attempt {attempt} (temperature {float(tokens[0]['temperature']):.1f}), "
                 f"rejected: {record.get('reason', '').split(';')[0]}", fontsize=10)
    ax.set_xlabel("time in the clip (s)")
    ax.set_ylabel("token of the rejected attempt")
    return fig
