"""Every picture whisper-probe draws, for the dashboard and the lecture export alike.

Each figure function takes a :class:`probe.store.Trace` (plus a few choices such as a layer or a
head) and returns a matplotlib :class:`~matplotlib.figure.Figure` with a title, axis labels with
units and a colour bar wherever colour carries a value.  Figures are built on the Agg canvas
without pyplot, so drawing needs no GUI and keeps no global state.  This module uses numpy,
matplotlib and transformers' numpy audio functions (for the log-Mel spectrogram) and never
imports torch; decoding the stored audio is the store's business.  Big arrays are cut down
before drawing so a figure stays fast on a large-v3 trace: tensors are read a layer or a slice
at a time, long audio is drawn as an envelope and one 30 s window at a time, wide maps are
pooled, long transcripts paged.  A figure whose record is missing raises
:class:`~probe.errors.StoreError` naming the record and the plugin that makes it.
:data:`FIGURES` maps a name to a one-argument figure with sensible defaults;
:func:`transcript_html` renders the transcript coloured by token probability; :func:`save` writes
a figure at print resolution.

Units used throughout: audio samples at 16 kHz, log-Mel frames of 10 ms (100 per second), encoder
frames of 20 ms (50 per second), probabilities in [0, 1], entropies in nats.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import math
import warnings
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
from matplotlib import colors, font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from probe.errors import StoreError

from probe.constants import (ENCODER_FRAMES_PER_SECOND, HOP_LENGTH, MEL_FRAMES_PER_SECOND,  # noqa: F401
                             N_FFT, N_TIMESTAMP_TOKENS, SAMPLE_RATE, TIMESTAMP_SECONDS, WINDOW_SECONDS)
MAX_COLUMNS = 1500  # widest image drawn; wider arrays are mean-pooled along time
MAX_WAVEFORM_POINTS = 4000  # longer audio is drawn as a min/max envelope
TOKENS_PER_PAGE = 40  # token-by-token figures show this many tokens at a time
CONV_ZOOM_SECONDS = 1.0  # the conv stem's close-up, where single frames are visible

PROBABILITY_CMAP = "RdYlGn"
ATTENTION_CMAP = "magma"
_CJK_FALLBACKS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Noto Sans Thai",
                  "Noto Sans")


# --------------------------------------------------------------------------- shared helpers


@functools.cache
def _font_families() -> list[str]:
    """DejaVu Sans, then whichever installed fonts cover scripts it lacks (CJK, Thai)."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [name for name in _CJK_FALLBACKS if name in installed]


def _draws(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure with fonts that fall back to other scripts (token texts can be any)."""

    @functools.wraps(function)
    def draw(*args, **kwargs) -> Figure:
        with matplotlib.rc_context({"font.family": _font_families()}):
            return function(*args, **kwargs)

    return draw


@contextlib.contextmanager
def _quiet_missing_glyphs():
    # A token in a script no installed font covers is drawn as boxes; one warning per glyph
    # would only flood the log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        yield


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def require(trace, name: str) -> None:
    """Raise a one-line :class:`StoreError` if ``trace`` lacks record ``name``."""
    if name not in trace.records:
        plugin, _, rest = name.partition(".")
        if plugin == "activations":  # whole activations exist only for the points asked for
            hint = f"re-run the trace with --points {rest} (or without --points for the lecture set)"
        else:
            hint = f"re-run the trace with the {plugin} plugin enabled"
        raise StoreError(f"trace {trace.id} has no record {name!r} (made by the {plugin} plugin); {hint}")


def _config(trace, key: str, default: int) -> int:
    config = (trace.manifest.get("model") or {}).get("config") or {}
    return int(config.get(key) or default)


def audio_samples(trace, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The trace's audio (or its ``start``–``end`` seconds) as float32 [sample] at 16 kHz;
    StoreError if it kept none."""
    audio = trace.audio() if start is None and end is None else trace.audio(start, end)
    if audio is None:
        raise StoreError(f"trace {trace.id} kept no audio; re-run the trace to keep it")
    samples, _ = audio
    return np.asarray(samples, dtype=np.float32)


def duration(trace) -> float:
    """Seconds of audio in the trace, from the manifest (no decoding)."""
    audio = trace.manifest.get("audio") or {}
    if audio.get("duration"):
        return float(audio["duration"])
    windows = trace.manifest.get("windows") or [{}]
    return float(windows[-1].get("end") or WINDOW_SECONDS)


def _window(trace, window: int) -> dict:
    windows = trace.manifest.get("windows") or []
    if not 0 <= window < len(windows):
        raise StoreError(f"trace {trace.id} has no window {window}; it has {len(windows)}")
    return windows[window]


def first_spoken_window(trace) -> int:
    """The first window whose text the transcript keeps (not one skipped as no speech); 0 if none."""
    spoken = [w["index"] for w in trace.manifest.get("windows") or [] if w.get("kept", 1) and not w.get("skipped")]
    return spoken[0] if spoken else 0


def window_span(trace, window: int = 0) -> tuple[float, float]:
    """(start, end) seconds of 30 s window ``window`` within the clip."""
    entry = _window(trace, window)
    return float(entry["start"]), float(entry["end"])


@functools.cache
def _mel_filters(n_mels: int) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank  # numpy; transformers' package import is slow

    # The bank WhisperFeatureExtractor builds: 201 FFT bins → n_mels, 0–8 kHz, Slaney scale and norm.
    return mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")


def log_mel_array(trace, window: int = 0) -> np.ndarray:
    """The log-Mel spectrogram the encoder saw for ``window``: [n_mels, 3000] (100 frames/s, the
    window's audio padded to 30 s), on Whisper's scale.

    The numpy path of transformers' ``WhisperFeatureExtractor``, called through its numpy
    building blocks because importing the extractor class imports torch when it is installed.
    """
    from transformers.audio_utils import spectrogram, window_function

    start, end = window_span(trace, window)
    samples = audio_samples(trace, start, end)  # only this window's span is decoded
    padded = np.zeros(WINDOW_SECONDS * SAMPLE_RATE, dtype=np.float32)  # [sample]
    padded[: len(samples)] = samples[: len(padded)]
    power = spectrogram(padded, window_function(N_FFT, "hann"), frame_length=N_FFT, hop_length=HOP_LENGTH,
                        power=2.0, mel_filters=_mel_filters(_config(trace, "num_mel_bins", 80)),
                        log_mel="log10")[:, :-1]  # [n_mels, 3000]: the STFT's extra last frame dropped
    power = np.maximum(power, power.max() - 8.0)  # an 80 dB range
    return ((power + 4.0) / 4.0).astype(np.float32)


def pool_columns(array: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """Mean-pool the last axis by a whole factor until it has at most ``max_columns`` columns;
    returns (pooled, factor)."""
    factor = max(1, math.ceil(array.shape[-1] / max_columns))
    if factor == 1:
        return array, 1
    pad = (-array.shape[-1]) % factor
    padded = np.pad(array.astype(np.float32), [(0, 0)] * (array.ndim - 1) + [(0, pad)], mode="edge")
    return padded.reshape(*array.shape[:-1], -1, factor).mean(-1), factor


def vocabulary(trace) -> dict[int, str]:
    """Token id → text for every token the trace has decoded text for (prompt, emitted tokens
    and their top-k alternatives).  The store keeps no tokenizer, so other ids stay unknown."""
    vocab: dict[int, str] = {}
    for window in trace.manifest.get("windows") or []:
        vocab.update(zip(window.get("prompt") or [], window.get("prompt_tokens") or []))
    if "token_probs.tokens" in trace.records:
        for row in trace.table("token_probs.tokens"):
            vocab.update(zip(row["top_k_ids"], row["top_k_tokens"]))
            vocab[row["token_id"]] = row["token"]
    if "cross_attention.tokens" in trace.records:
        vocab.update((row["token_id"], row["token"]) for row in trace.table("cross_attention.tokens"))
    if {"logit_lens.top_ids", "logit_lens.top_tokens"} <= set(trace.records):
        ids = np.asarray(trace.record("logit_lens.top_ids")).reshape(-1)
        texts = [text for layer in trace.record("logit_lens.top_tokens") for row in layer for text in row]
        vocab.update(zip(ids.tolist(), texts))
    return vocab


def token_label(trace, vocab: dict[int, str], token_id: int) -> str:
    """A short, visible label for a token: timestamps as ``<|1.20|>``, unknown ids as ``#id``."""
    first_timestamp = _config(trace, "vocab_size", 51865) - N_TIMESTAMP_TOKENS
    if token_id >= first_timestamp:
        return f"<|{(token_id - first_timestamp) * TIMESTAMP_SECONDS:.2f}|>"
    text = vocab.get(int(token_id))
    if text is None:
        return f"#{token_id}"
    return text.strip() or "␣"


def window_sequence(trace, window: int = 0) -> list[int]:
    """The token ids the decoder read in ``window``: the forced prompt, then the emitted tokens."""
    entry = _window(trace, window)
    return list(entry.get("prompt") or []) + list(entry.get("tokens") or [])


def _imshow(ax, image: np.ndarray, extent, cmap: str, norm=None, **kwargs):
    return ax.imshow(image, aspect="auto", origin="lower", extent=extent, cmap=cmap, norm=norm,
                     interpolation="nearest", **kwargs)


def _grid_shape(n: int) -> tuple[int, int]:
    columns = min(n, 4 if n <= 8 else 5)
    return math.ceil(n / columns), columns


def _tick_tokens(ax, labels: list[str], axis: str, max_labels: int = 60) -> None:
    """Token labels on an axis whose cells are centred on 0, 1, ...; thinned past ``max_labels``."""
    step = max(1, math.ceil(len(labels) / max_labels))
    positions = list(range(0, len(labels), step))
    shown = [labels[i] for i in positions]
    if axis == "x":
        ax.set_xticks(positions, shown, rotation=90, fontsize=7)
    else:
        ax.set_yticks(positions, shown, fontsize=7)


def _page(n: int, first: int, count: int) -> range:
    first = min(max(0, first), max(0, n - 1))
    return range(first, min(n, first + count))


def _page_note(shown: range, total: int) -> str:
    if len(shown) == total:
        return ""
    return f" (tokens {shown.start + 1}–{shown.stop} of {total})"


# --------------------------------------------------------------------------- audio


@_draws
def waveform(trace) -> Figure:
    """The audio as the model hears it (16 kHz mono), with the starts of later 30 s windows marked."""
    samples = audio_samples(trace)
    seconds = len(samples) / SAMPLE_RATE
    fig = _figure(10, 2.8)
    ax = fig.add_subplot()
    if len(samples) > 2 * MAX_WAVEFORM_POINTS:
        # min/max envelope per bin: every peak stays visible without drawing every sample
        per_bin = math.ceil(len(samples) / MAX_WAVEFORM_POINTS)
        padded = np.pad(samples, (0, (-len(samples)) % per_bin)).reshape(-1, per_bin)  # [bin, sample]
        times = (np.arange(len(padded)) + 0.5) * per_bin / SAMPLE_RATE
        ax.fill_between(times, padded.min(1), padded.max(1), color="tab:blue", linewidth=0.4)
    else:
        ax.plot(np.arange(len(samples)) / SAMPLE_RATE, samples, color="tab:blue", linewidth=0.6)
    for window in (trace.manifest.get("windows") or [])[1:]:
        ax.axvline(float(window["start"]), color="0.4", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, seconds)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude (full scale)")
    ax.set_title(f"Waveform: {seconds:.2f} s at 16 kHz mono ({len(samples):,} samples)")
    return fig


@_draws
def log_mel(trace, window: int = 0) -> Figure:
    """The log-Mel spectrogram the encoder reads for one 30 s window: n_mels bins × 3000 frames,
    with the end of the audio (where zero padding starts) marked."""
    mel = log_mel_array(trace, window)  # [n_mels, frame]
    n_mels, frames = mel.shape
    start, end = window_span(trace, window)
    seconds = frames / MEL_FRAMES_PER_SECOND
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    image = _imshow(ax, mel, (start, start + seconds, 0, n_mels), "magma")
    if end - start < seconds - 0.05:
        ax.axvline(end, color="white", linestyle="--", linewidth=1)
        ax.text(end + 0.2, n_mels * 0.92, "end of audio: zero padding follows", color="white", fontsize=8,
                va="top")
    of_window = f", window {window + 1} of {len(trace.manifest['windows'])}" \
        if len(trace.manifest["windows"]) > 1 else ""
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Mel bin (low → high frequency)")
    ax.set_title(f"log-Mel spectrogram: {n_mels} Mel bins × {frames} frames (10 ms hop, "
                 f"{seconds:.0f} s{of_window})")
    fig.colorbar(image, ax=ax, label="log10 power (Whisper-normalised)", pad=0.01)
    return fig


@_draws
def conv_stem(trace, channels: int = 16) -> Figure:
    """The conv stem: conv1 keeps 3000 frames (10 ms), conv2 (stride 2) halves them to 1500 (20 ms).

    Left: the first ``channels`` channels over the whole 30 s window; right: the first second,
    where single frames are visible and conv2's columns are twice as wide as conv1's.
    """
    for name in ("activations.encoder.hook_conv1", "activations.encoder.hook_conv2"):
        require(trace, name)
    conv1_shape = trace.records["activations.encoder.hook_conv1"]["shape"]  # [window, d_model, 3000]
    conv2_shape = trace.records["activations.encoder.hook_conv2"]["shape"]  # [window, d_model, 1500]
    channels = max(1, min(channels, conv1_shape[1]))
    maps = [np.asarray(trace.tensor(name, lazy=True)[0:1, :channels], dtype=np.float32)[0]
            for name in ("activations.encoder.hook_conv1", "activations.encoder.hook_conv2")]
    low, high = np.percentile(np.concatenate([m.ravel() for m in maps]), [1, 99])
    norm = colors.Normalize(float(low), float(max(high, low + 1e-6)))  # a few outliers must not wash it out
    end = window_span(trace, 0)[1]
    fig = _figure(11, 5)
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 1.2])
    image = None
    for row, (fmap, shape, frame_ms, label) in enumerate(zip(
            maps, (conv1_shape, conv2_shape), (10, 20), ("conv1 (stride 1)", "conv2 (stride 2)"))):
        frames = fmap.shape[-1]
        full, _ = pool_columns(fmap)
        ax = fig.add_subplot(grid[row, 0])
        image = _imshow(ax, full, (0, frames * frame_ms / 1000, 0, channels), "viridis", norm)
        ax.axvline(end, color="white", linestyle="--", linewidth=0.8)
        ax.set_title(f"{label}: [{shape[1]}, {shape[2]}] — {frames} frames of {frame_ms} ms", fontsize=10)
        ax.set_ylabel("channel")
        ax.set_xlabel("time (s)")
        zoomed = fmap[:, : int(CONV_ZOOM_SECONDS * 1000 / frame_ms)]
        ax_zoom = fig.add_subplot(grid[row, 1])
        _imshow(ax_zoom, zoomed, (0, zoomed.shape[-1], 0, channels), "viridis", norm)
        ax_zoom.set_title(f"first {CONV_ZOOM_SECONDS:.0f} s: {zoomed.shape[-1]} frames", fontsize=10)
        ax_zoom.set_xlabel(f"frame ({frame_ms} ms each)")
        ax_zoom.set_ylabel("channel")
    fig.suptitle(f"Conv stem: {conv1_shape[2]} → {conv2_shape[2]} frames (first {channels} of "
                 f"{conv1_shape[1]} channels, after GELU; dashed line: end of audio)")
    fig.colorbar(image, ax=fig.axes, label="activation (after GELU)", shrink=0.8)
    return fig


# --------------------------------------------------------------------------- self-attention


def _head_grid(fig: Figure, heads: list[int], draw: Callable, title: str, colorbar_label: str,
               xlabel: str, ylabel: str):
    """One panel per head (``draw(ax, head)`` returns its image), outer axes labelled, one colour bar."""
    rows, columns = _grid_shape(len(heads))
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    image = None
    for index, ax in enumerate(axes.flat):
        if index >= len(heads):
            ax.set_visible(False)
            continue
        image = draw(ax, heads[index])
        ax.set_title(f"head {heads[index]}", fontsize=9)
        if index % columns == 0:
            ax.set_ylabel(ylabel)
        if index >= len(heads) - columns:
            ax.set_xlabel(xlabel)
    fig.suptitle(title)
    fig.colorbar(image, ax=[ax for ax in axes.flat if ax.get_visible()], label=colorbar_label, shrink=0.8)
    return axes


def _heads(n_heads: int, head: int | None) -> list[int]:
    if head is None:
        return list(range(n_heads))
    if not 0 <= head < n_heads:
        raise StoreError(f"head {head} does not exist; the model has heads 0–{n_heads - 1}")
    return [head]


def _layer_index(trace, name: str, layer: int) -> int:
    """``layer`` (negative counts from the end) checked against record ``name``'s first axis."""
    require(trace, name)
    n_layers = trace.records[name]["shape"][0]
    if not -n_layers <= layer < n_layers:
        raise StoreError(f"layer {layer} does not exist; record {name} has layers 0–{n_layers - 1}")
    return layer % n_layers


def _layer_slice(trace, name: str, layer: int) -> tuple[int, np.ndarray]:
    """(layer index, that layer of a [layer, ...] tensor record), read without loading the others."""
    index = _layer_index(trace, name, layer)
    return index, np.asarray(trace.tensor(name, lazy=True)[index], dtype=np.float32)


@_draws
def encoder_attention(trace, layer: int, head: int | None = None) -> Figure:
    """Encoder self-attention of one layer over the frames holding audio; ``head=None`` draws a
    grid of every head.  Patterns are stored pooled (see the attention plugin), rows sum to 1."""
    layer, pattern = _layer_slice(trace, "attention.encoder", layer)  # [head, query_cell, key_cell]
    meta = trace.records["attention.encoder"].get("meta") or {}
    cell_seconds = int(meta.get("pool", 1)) / ENCODER_FRAMES_PER_SECOND
    seconds = pattern.shape[-1] * cell_seconds
    norm = colors.PowerNorm(0.5, vmin=0, vmax=max(float(pattern.max()), 1e-6))
    heads = _heads(pattern.shape[0], head)
    fig = _figure(10, 7.5) if head is None else _figure(6.5, 5.5)
    which = "all heads" if head is None else f"head {head}"
    _head_grid(fig, heads,
               lambda ax, h: _imshow(ax, pattern[h], (0, seconds, 0, seconds), ATTENTION_CMAP, norm),
               f"Encoder self-attention, layer {layer}, {which} (first window, {seconds:.2f} s of audio)",
               "attention weight (√ scale)", "key time (s)", "query time (s)")
    return fig


@_draws
def decoder_attention(trace, layer: int, head: int | None = None) -> Figure:
    """Decoder (causal) self-attention of one layer over the prompt and emitted tokens of the
    first window, token texts on both axes; ``head=None`` draws a grid of every head."""
    layer, pattern = _layer_slice(trace, "attention.decoder", layer)  # [head, query, key]
    n_tokens = pattern.shape[-1]
    vocab = vocabulary(trace)
    labels = [token_label(trace, vocab, t) for t in window_sequence(trace, 0)][:n_tokens]
    labels += ["?"] * (n_tokens - len(labels))
    heads = _heads(pattern.shape[0], head)
    norm = colors.Normalize(0, 1)

    def draw(ax, h):
        image = ax.imshow(pattern[h], cmap=ATTENTION_CMAP, norm=norm, interpolation="nearest", aspect="auto")
        if head is not None or n_tokens <= 24:
            _tick_tokens(ax, labels, "x")
            _tick_tokens(ax, labels, "y")
        return image

    size = (11, 9) if head is None else (7.5, 6.5)
    fig = _figure(*size)
    which = "all heads" if head is None else f"head {head}"
    _head_grid(fig, heads, draw, f"Decoder self-attention, layer {layer}, {which} (first window)",
               "attention weight", "key token (attended to)", "query token (reading)")
    return fig


@_draws
def attention_summary(trace) -> Figure:
    """Per encoder layer and head: attention entropy (nats) and mean attention distance (ms),
    averaged over windows.  Low entropy and distance: sharp, local heads; high: diffuse, global."""
    for name in ("attention.encoder_entropy", "attention.encoder_distance"):
        require(trace, name)
    entropy = trace.tensor("attention.encoder_entropy").astype(np.float32).mean(0)  # [layer, head]
    distance_ms = trace.tensor("attention.encoder_distance").astype(np.float32).mean(0) * 1000 / \
        ENCODER_FRAMES_PER_SECOND  # [layer, head]
    fig = _figure(11, 0.45 * entropy.shape[0] + 2.4)
    for ax, values, cmap, label, fmt in zip(
            fig.subplots(1, 2), (entropy, distance_ms), ("viridis", "cividis"),
            ("entropy (nats)", "mean attention distance (ms)"), ("{:.1f}", "{:.0f}")):
        image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest")
        if values.size <= 200:
            threshold = (values.max() + values.min()) / 2
            for (layer, head), value in np.ndenumerate(values):
                ax.text(head, layer, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="black" if value > threshold else "white")
        ax.set_xlabel("head")
        ax.set_ylabel("encoder layer")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.set_title(label.capitalize(), fontsize=10)
        fig.colorbar(image, ax=ax, label=label)
    fig.suptitle("Encoder self-attention per layer and head")
    return fig


# --------------------------------------------------------------------------- cross-attention


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
        name, index = "cross_attention.weights", (_layer_index(trace, "cross_attention.weights", layer), slice(None))
    rows = [i for i, token in enumerate(tokens) if token["window"] == window]  # contiguous: windows in order
    if not rows:
        return np.zeros((0, frames), dtype=np.float32), []
    picked = np.asarray(trace.tensor(name, lazy=True)[(*index, slice(rows[0], rows[-1] + 1))], dtype=np.float32)
    if layer is not None:  # [head, token, frame]
        picked = picked.mean(0) if head is None else picked[_heads(picked.shape[0], head)[0]]
    return picked[:, :frames], [tokens[i] for i in rows]


def attended_span(trace, token_index: int, layer: int | None = None, head: int | None = None, window: int = 0,
                  margin: float = 0.06) -> tuple[float, float]:
    """(start, end) seconds in the clip that token ``token_index`` of ``window`` attended to most:
    the contiguous frames around its attention peak holding at least half the peak's weight,
    widened by ``margin`` seconds."""
    matrix, _ = cross_attention_rows(trace, layer, head, window)
    row = matrix[token_index]  # [frame]
    peak = int(row.argmax())
    floor = row.min() + (row[peak] - row.min()) / 2
    first = last = peak
    while first > 0 and row[first - 1] >= floor:
        first -= 1
    while last < len(row) - 1 and row[last + 1] >= floor:
        last += 1
    start, end = window_span(trace, window)
    return (max(start, start + first / ENCODER_FRAMES_PER_SECOND - margin),
            min(end, start + (last + 1) / ENCODER_FRAMES_PER_SECOND + margin))


def _word_rows(words: list[dict], tokens: list[dict]) -> list[tuple[dict, list[int]]]:
    """Each word with the matrix rows of its tokens (words consume text tokens in order)."""
    text_rows = [i for i, token in enumerate(tokens) if token["is_text"]]
    placed, cursor = [], 0
    for word in words:
        count = len(word.get("tokens") or [])
        placed.append((word, text_rows[cursor: cursor + count]))
        cursor += count
    return placed


@_draws
def cross_attention(trace, layer: int | None = None, head: int | None = None, window: int | None = None) -> Figure:
    """Decoded tokens against audio time, under the log-Mel spectrogram with word timestamps,
    for one 30 s window (tokens and words of that window; time in seconds of the clip).
    ``window=None``: the first window whose text the transcript keeps (not one skipped as no speech).

    ``layer=None`` shows the alignment-head average (z-scored, median-filtered) the DTW word
    timings walk; a layer shows that layer's attention, of one head or averaged over heads.
    Boxes mark each word's DTW span over its tokens.
    """
    if window is None:
        window = first_spoken_window(trace)
    matrix, tokens = cross_attention_rows(trace, layer, head, window)  # [token, frame]
    start, end = window_span(trace, window)
    words = [word for word in trace.words() if word.get("window", 0) == window]
    mel = log_mel_array(trace, window)[:, : math.ceil((end - start) * MEL_FRAMES_PER_SECOND)]  # [n_mels, frame]
    vocab = vocabulary(trace)
    labels = [token_label(trace, vocab, t["token_id"]) for t in tokens]
    fig = _figure(11, 3 + 0.16 * max(len(tokens), 12))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.4])
    mel_image = _imshow(top, mel, (start, end, 0, mel.shape[0]), "magma")
    for word in words:
        top.axvline(word["start"], color="white", linewidth=0.6, alpha=0.8)
        top.text((word["start"] + word["end"]) / 2, mel.shape[0] * 0.96, word["word"].strip(), color="white",
                 fontsize=8, ha="center", va="top", rotation=90 if len(words) > 20 else 0)
    top.set_ylabel("Mel bin")
    top.set_title("log-Mel spectrogram with word timestamps (DTW on the alignment heads)", fontsize=10)
    fig.colorbar(mel_image, ax=top, label="log10 power", pad=0.01)
    if layer is None:
        heads = ", ".join(f"{l}.{h}" for l, h in (trace.manifest.get("model") or {}).get("alignment_heads", []))
        what, label, norm = f"alignment-head average (layer.head {heads})", "z-scored attention", None
    else:
        which = "mean of all heads" if head is None else f"head {head}"
        what, label = f"layer {_layer_index(trace, 'cross_attention.weights', layer)}, {which}", \
            "attention weight (√ scale)"
        norm = colors.PowerNorm(0.5, vmin=0, vmax=max(float(matrix.max(initial=0)), 1e-6))
    image = bottom.imshow(matrix, aspect="auto", origin="upper", extent=(start, end, len(tokens) - 0.5, -0.5),
                          cmap="viridis", norm=norm, interpolation="nearest")
    for word, rows in _word_rows(words, tokens):
        if rows:
            bottom.add_patch(Rectangle((word["start"], rows[0] - 0.5), word["end"] - word["start"], len(rows),
                                       fill=False, edgecolor="white", linewidth=0.9))
    _tick_tokens(bottom, labels, "y")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("decoded token")
    bottom.set_title(f"Cross-attention: {what}; boxes: word spans", fontsize=10)
    fig.colorbar(image, ax=bottom, label=label, pad=0.01)
    n_windows = len(trace.manifest.get("windows") or [])
    fig.suptitle("Where each decoded token listens in the audio"
                 + (f" (window {window + 1} of {n_windows})" if n_windows > 1 else ""))
    return fig


# --------------------------------------------------------------------------- tokens and probabilities


@_draws
def token_probs(trace, first: int = 0, count: int = TOKENS_PER_PAGE) -> Figure:
    """Per emitted token: the chosen token's probability (bars) and the entropy of the
    distribution (line), above the top-k alternatives with their probabilities."""
    require(trace, "token_probs.tokens")
    every_row = trace.table("token_probs.tokens")
    shown = _page(len(every_row), first, count)
    rows = [every_row[i] for i in shown]
    vocab = vocabulary(trace)
    labels = [token_label(trace, vocab, row["token_id"]) for row in rows]
    steps = np.arange(len(rows))
    probs = np.array([row["prob"] for row in rows], dtype=np.float32)  # [token]
    entropy = np.array([row["entropy"] for row in rows], dtype=np.float32)  # [token]
    k = max((len(row["top_k_probs"]) for row in rows), default=1)
    top = np.full((k, len(rows)), np.nan, dtype=np.float32)  # [k, token]
    for column, row in enumerate(rows):
        top[: len(row["top_k_probs"]), column] = row["top_k_probs"]
    cmap = matplotlib.colormaps[PROBABILITY_CMAP]
    fig = _figure(max(8, 0.34 * len(rows) + 3), 7.5)
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
            text = token_label(trace, vocab, token_id)
            weight = "bold" if token_id == row["token_id"] else "normal"
            ax_top.text(column, rank, text[:8], ha="center", va="center", fontsize=6, rotation=90,
                        fontweight=weight, color="black")
    ax_top.set_yticks(range(k), [str(rank + 1) for rank in range(k)])
    ax_top.set_ylabel("rank among alternatives")
    ax_top.set_xlabel("emitted token (decoding step)")
    ax_top.set_title("Top-k alternatives at each step (bold: the token emitted)", fontsize=10)
    _tick_tokens(ax_top, labels, "x")
    fig.colorbar(image, ax=[ax, ax_top], label="probability", shrink=0.8)
    fig.suptitle(f"Token probabilities{_page_note(shown, len(every_row))}")
    return fig


@_draws
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
    shown = _page(n_tokens, first, count)
    columns = list(shown)
    vocab = vocabulary(trace)
    emitted = [token for window in trace.manifest.get("windows") or [] for token in window.get("tokens") or []]
    labels = [token_label(trace, vocab, emitted[i]) if i < len(emitted) else "?" for i in columns]
    fig = _figure(max(8, 0.55 * len(columns) + 3), 0.5 * n_layers + 2.6)
    ax = fig.add_subplot()
    image = ax.imshow(chosen_prob[:, columns], cmap=PROBABILITY_CMAP, norm=colors.Normalize(0, 1),
                      aspect="auto", origin="lower", interpolation="nearest")
    for layer in range(n_layers):
        for column, token in enumerate(columns):
            is_top = chosen_rank[layer, token] == 0
            ax.text(column, layer, token_label(trace, vocab, int(top_ids[layer, token]))[:7], ha="center",
                    va="center", fontsize=6.5, rotation=60, fontweight="bold" if is_top else "normal")
    ax.set_yticks(range(n_layers), [f"block {layer}" for layer in range(n_layers)])
    _tick_tokens(ax, labels, "x")
    ax.set_xlabel("emitted token")
    ax.set_ylabel("decoder layer (residual after block)")
    fig.colorbar(image, ax=ax, label="p(emitted token) at this layer")
    ax.set_title(f"Logit lens: top prediction per layer{_page_note(shown, n_tokens)}")
    return fig


def _multitask_window(trace, window: int = 0) -> dict:
    require(trace, "token_probs.multitask")
    windows = (trace.json("token_probs.multitask") or {}).get("windows") or []
    if not 0 <= window < len(windows):
        raise StoreError(f"record token_probs.multitask of trace {trace.id} has no window {window}; "
                         f"it has {len(windows)}")
    return windows[window]


@_draws
def language_probs(trace, top: int = 10, window: int = 0) -> Figure:
    """The language-detection distribution at ``window``'s <|startoftranscript|> (its ``top`` most
    likely languages), with its language token and no-speech probability in the title."""
    index = window
    window = _multitask_window(trace, index)
    ranked = sorted((window.get("language_probs") or {}).items(), key=lambda item: -item[1])[:top]
    fig = _figure(7, 0.32 * len(ranked) + 1.8)
    ax = fig.add_subplot()
    names = [f"<|{code}|>" for code, _ in ranked][::-1]
    values = np.array([p for _, p in ranked][::-1], dtype=np.float32)
    cmap = matplotlib.colormaps["Blues"]
    ax.barh(names, values, color=cmap(0.35 + 0.65 * values))
    for y, value in enumerate(values):
        inside = value > 0.85  # no room right of the bar: write inside its end
        ax.text(value - 0.01 if inside else value + 0.01, y, f"{value:.3f}", va="center", fontsize=8,
                ha="right" if inside else "left", color="white" if inside else "black")
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
    spans = []
    for row in trace.table("token_probs.tokens"):
        in_window, limit = row.get("window", 0), kept.get(row.get("window", 0))
        shown = in_window == window if window is not None else limit is None or row["step"] < limit
        if row["kind"] != "text" or not shown:
            continue
        alternatives = ", ".join(f"{text!r} {p:.2f}" for text, p in zip(row["top_k_tokens"], row["top_k_probs"]))
        tooltip = f"p={row['prob']:.3f}, entropy={row['entropy']:.2f} nats; top: {alternatives}"
        spans.append(f'<span title="{html.escape(tooltip)}" style="background:{_probability_css(row["prob"])};'
                     f'color:#111;border-radius:3px;padding:1px 0">{html.escape(row["token"])}</span>')
    legend = " ".join(f'<span style="background:{_probability_css(p)};padding:0 6px;color:#111">{p:.2f}</span>'
                      for p in (0.0, 0.25, 0.5, 0.75, 1.0))
    return ('<div class="probe-transcript" style="font-size:1.15em;line-height:1.9;white-space:pre-wrap">'
            f"{''.join(spans)}</div>"
            f'<div style="font-size:0.8em;color:#555">token probability: {legend}</div>')


@_draws
def record_heatmap(trace, name: str, index: tuple[int, ...] = ()) -> Figure:
    """Any tensor record (a plugin's own, say) as a heatmap of its last two axes, taken at
    ``index`` along the leading ones; axis names come from the record's ``meta["axes"]``."""
    require(trace, name)
    entry = trace.records[name]
    shape = list(entry.get("shape") or [])
    if len(shape) - len(index) != 2:
        raise ValueError(f"record {name} has shape {shape}: give {len(shape) - 2} leading indices, not {len(index)}")
    view = trace.tensor(name, lazy=True)
    values = np.asarray(view[index] if index else view[:], dtype=np.float32)  # [row, column]
    shown, factor = pool_columns(values)
    axes = list((entry.get("meta") or {}).get("axes") or [f"axis {i}" for i in range(len(shape))])
    fig = _figure(10, 4.5)
    ax = fig.add_subplot()
    image = ax.imshow(shown, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      extent=(0, values.shape[1], 0, values.shape[0]))
    ax.set_xlabel(f"{axes[-1]} (index{f', pooled ×{factor}' if factor > 1 else ''})")
    ax.set_ylabel(f"{axes[-2]} (index)")
    at = ", ".join(f"{axis}={i}" for axis, i in zip(axes, index))
    ax.set_title(f"{name} {shape}{f' at {at}' if at else ''}")
    fig.colorbar(image, ax=ax, label=f"value ({entry.get('dtype')})")
    return fig


# --------------------------------------------------------------------------- registry and output


def _middle(trace, key: str) -> int:
    return _config(trace, key, 2) // 2


def _window_concern(window: dict) -> float:
    """0 (nothing suspicious) … 1 (skipped, looping or retried): the timeline's colour."""
    signals = window.get("signals") or {}
    if window.get("skipped") or signals.get("looping"):
        return 1.0
    concern = 0.5 if len(window.get("attempts") or []) > 1 else 0.0
    logprob = signals.get("avg_logprob")
    if logprob is not None:
        concern = max(concern, min(1.0, max(0.0, -logprob - 0.3)))
    return max(concern, min(1.0, float(window.get("no_speech_probability") or 0.0)))


@_draws
def windows_timeline(trace) -> Figure:
    """Every window generate() decoded, on the clip's time axis: the span its transcript used
    (seek to the next seek), coloured from calm to suspect by its hallucination signals, with its
    fallback attempts marked (× rejected, ○ kept, ■ skipped as no speech), numbered from 1 as the
    window pickers label them, and the no-speech
    probability and average log-probability below."""
    windows = trace.manifest.get("windows") or []
    if not windows:
        raise StoreError(f"trace {trace.id} has no windows; re-run the trace")
    total = max(duration(trace), max(float(w["end"]) for w in windows))
    fig = _figure(10, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, 1]})
    cmap = matplotlib.colormaps["RdYlGn_r"]
    for window in windows:
        start = float(window["start"])
        used = max(float(window.get("next_seek", 0)) / 100, start + 0.05)
        end = min(used, total)
        concern = _window_concern(window)
        top.barh(0, end - start, left=start, height=0.6, color=cmap(0.1 + 0.8 * concern), edgecolor="0.2",
                 hatch="//" if window.get("skipped") else None)
        top.text((start + end) / 2, 0, str(window["index"] + 1), ha="center", va="center", fontsize=9,
                 color="black" if concern < 0.7 else "white")
        for attempt in window.get("attempts") or []:
            marker = {"rejected": "x", "kept": "o", "skipped": "s"}.get(attempt.get("verdict"), ".")
            top.plot(start + 0.3 + 0.5 * attempt["attempt"], 0.55, marker=marker, color="0.15", markersize=5,
                     fillstyle="none" if marker == "o" else "full")
    top.set_ylim(-0.6, 0.9)
    top.set_yticks([])
    top.set_ylabel("window")
    scale = matplotlib.cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(scale, ax=[top, bottom], label="concern (0 calm … 1 skipped or looping)", fraction=0.03, pad=0.08)
    top.set_title(f"Windows: {len(windows)} decoded, "
                  f"{sum(len(w.get('attempts') or []) > 1 for w in windows)} retried, "
                  f"{sum(bool(w.get('skipped')) for w in windows)} skipped as no speech")
    centres = [(float(w["start"]) + min(max(float(w.get("next_seek", 0)) / 100, float(w["start"])), total)) / 2
               for w in windows]
    bottom.plot(centres, [float(w.get("no_speech_probability") or 0) for w in windows], "o-", color="tab:purple",
                label="no-speech probability")
    logprobs = [(c, (w.get("signals") or {}).get("avg_logprob")) for c, w in zip(centres, windows)]
    logprobs = [(c, v) for c, v in logprobs if v is not None]
    if logprobs:
        twin = bottom.twinx()
        twin.plot(*zip(*logprobs), "s--", color="tab:orange", label="average log-probability")
        twin.set_ylabel("avg log-prob", color="tab:orange")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("no-speech p", color="tab:purple")
    bottom.set_xlim(0, total)
    bottom.set_xlabel("time in the clip (s)")
    return fig


@_draws
def rejected_attention(trace, window: int, attempt: int) -> Figure:
    """What a rejected fallback attempt attended to: the alignment heads' mean cross-attention of
    each of its tokens (rows, first at the bottom) over the window's audio (seconds in the clip) —
    where a looping attempt stops moving through the audio.  Needs ``--rejected-cross-attention``."""
    require(trace, "cross_attention.rejected")
    rows = [i for i, row in enumerate(trace.table("cross_attention.rejected_tokens"))
            if row["window"] == window and row["attempt"] == attempt]
    if not rows:
        raise StoreError(f"trace {trace.id} kept no cross-attention for attempt {attempt} of window {window + 1}"
                         " (only rejected attempts have it)")
    entry = _window(trace, window)
    start = float(entry["start"])
    frames = max(1, round((float(entry["end"]) - start) * ENCODER_FRAMES_PER_SECOND))
    matrix = np.asarray(trace.tensor("cross_attention.rejected")[rows[0]:rows[-1] + 1], np.float32)[:, :frames]
    tokens = trace.table("cross_attention.rejected_tokens")[rows[0]:rows[-1] + 1]
    fig = _figure(10, min(9.0, 2.2 + 0.12 * len(rows)))
    ax = fig.subplots()
    image = _imshow(ax, matrix, (start, start + matrix.shape[1] / ENCODER_FRAMES_PER_SECOND, -0.5, len(rows) - 0.5),
                    "magma", norm=colors.PowerNorm(0.5, vmin=0, vmax=max(float(matrix.max()), 1e-6)))
    _tick_tokens(ax, [str(t["token"]).strip() or repr(t["token"]) for t in tokens], "y", max_labels=40)
    fig.colorbar(image, ax=ax, label="attention (alignment-head mean)", fraction=0.03)
    record = next((a for a in entry.get("attempts") or [] if a["attempt"] == attempt), {})
    ax.set_title(f"Window {window + 1}, attempt {attempt} (temperature {float(tokens[0]['temperature']):.1f}), "
                 f"rejected: {record.get('reason', '').split(';')[0]}", fontsize=10)
    ax.set_xlabel("time in the clip (s)")
    ax.set_ylabel("token of the rejected attempt")
    return fig


FIGURES: dict[str, Callable[..., Figure]] = {
    "waveform": waveform,
    "log_mel": log_mel,
    "conv_stem": conv_stem,
    "encoder_attention": lambda trace: encoder_attention(trace, _middle(trace, "encoder_layers")),
    "decoder_attention": lambda trace: decoder_attention(trace, _middle(trace, "decoder_layers")),
    "attention_summary": attention_summary,
    "cross_attention": cross_attention,
    "token_probs": token_probs,
    "logit_lens": logit_lens,
    "language_probs": language_probs,
    "windows": windows_timeline,
}


def save(fig: Figure, path: str | Path, dpi: int = 200) -> Path:
    """Write ``fig`` to ``path``; the format follows the suffix (png, svg, pdf)."""
    path = Path(path)
    with _quiet_missing_glyphs():
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes, for screens (the dashboard) rather than print."""
    buffer = io.BytesIO()
    with _quiet_missing_glyphs():
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
