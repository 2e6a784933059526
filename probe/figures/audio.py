"""Figures of the sound itself: the waveform and the log-Mel spectrogram the encoder reads, and
the trace's audio and window spans they are drawn from.

The log-Mel is recomputed from the stored audio as ``WhisperFeatureExtractor`` computes it: a
centred, reflect-padded STFT with a periodic Hann window in numpy, and transformers' Slaney mel
filter bank, kept in ``mel_filters.npz`` for the 80 and 128 bins of every released checkpoint
(``tests/test_figures.py`` checks the file against ``transformers.audio_utils``): importing
transformers to draw one figure took longer than drawing it.  No torch is imported.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from probe.constants import HOP_LENGTH, MEL_FRAMES_PER_SECOND, N_FFT, SAMPLE_RATE, WINDOW_SECONDS
from probe.errors import StoreError
from probe.figures.base import config_value, draws, imshow, new_figure
from probe.figures.legible import LABEL_BOX, MIN_FONT_PT, clip_range, over_time, range_note

MAX_WAVEFORM_POINTS = 4000  # longer audio is drawn as a min/max envelope


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


def window_entry(trace, window: int) -> dict:
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
    entry = window_entry(trace, window)
    return float(entry["start"]), float(entry["end"])


MEL_FILTERS = Path(__file__).with_name("mel_filters.npz")  # mel_80, mel_128: [n_fft // 2 + 1, n_mels] float64


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """The bank WhisperFeatureExtractor builds: 201 FFT bins → ``n_mels``, 0–8 kHz, Slaney scale and
    norm; [201, n_mels].  Other bin counts than the stored ones are built by transformers."""
    with np.load(MEL_FILTERS) as stored:
        if f"mel_{n_mels}" in stored:
            return stored[f"mel_{n_mels}"]
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")


def log_mel_array(trace, window: int = 0) -> np.ndarray:
    """The log-Mel spectrogram the encoder saw for ``window``: [n_mels, 3000] (100 frames/s, the
    window's audio padded to 30 s), on Whisper's scale: ``WhisperFeatureExtractor``'s numbers."""
    start, end = window_span(trace, window)
    samples = audio_samples(trace, start, end)  # only this window's span is decoded
    padded = np.zeros(WINDOW_SECONDS * SAMPLE_RATE, dtype=np.float64)  # [sample]
    padded[: len(samples)] = samples[: len(padded)]
    centred = np.pad(padded, N_FFT // 2, mode="reflect")  # frame t centred on sample t * hop
    frames = np.lib.stride_tricks.sliding_window_view(centred, N_FFT)[::HOP_LENGTH]  # [3001, n_fft]
    hann = np.hanning(N_FFT + 1)[:-1]  # periodic
    power = np.abs(np.fft.rfft(frames * hann, axis=-1)) ** 2  # [3001, n_fft // 2 + 1]
    mel = power @ mel_filters(config_value(trace, "num_mel_bins", 80))  # [3001, n_mels]
    log_mel = np.log10(np.maximum(mel, 1e-10)).T[:, :-1]  # [n_mels, 3000]: the STFT's extra last frame dropped
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)  # an 80 dB range
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


def window_sequence(trace, window: int = 0) -> list[int]:
    """The token ids the decoder read in ``window``: the forced prompt, then the emitted tokens."""
    entry = window_entry(trace, window)
    return list(entry.get("prompt") or []) + list(entry.get("tokens") or [])


def clip_span(trace, **_) -> tuple[float, float]:
    """(0, duration): the span of figures drawn over the whole clip."""
    return 0.0, duration(trace)


def first_window_span(trace, **_) -> tuple[float, float]:
    """The 30 s the first window's encoder frames cover: the span of figures of its activations."""
    start = window_span(trace, 0)[0]
    return start, start + WINDOW_SECONDS


def window_time_span(trace, window: int | None = 0, **_) -> tuple[float, float]:
    """The span of a per-window figure: its window's (``None``: the first spoken one)."""
    return window_span(trace, first_spoken_window(trace) if window is None else window)


@over_time(clip_span)
@draws
def waveform(trace, time_range: tuple[float, float] | None = None) -> Figure:
    """The audio as the model hears it (16 kHz mono), with the starts of later 30 s windows
    marked; ``time_range`` (seconds of the clip) draws only that span."""
    shown = clip_range(time_range, 0.0, duration(trace), "the clip")
    offset = shown[0] if time_range is not None else 0.0
    samples = audio_samples(trace, *shown) if time_range is not None else audio_samples(trace)
    seconds = len(samples) / SAMPLE_RATE
    fig = new_figure(10, 2.8)
    ax = fig.add_subplot()
    if len(samples) > 2 * MAX_WAVEFORM_POINTS:
        # min/max envelope per bin: every peak stays visible without drawing every sample
        per_bin = math.ceil(len(samples) / MAX_WAVEFORM_POINTS)
        padded = np.pad(samples, (0, (-len(samples)) % per_bin)).reshape(-1, per_bin)  # [bin, sample]
        times = offset + (np.arange(len(padded)) + 0.5) * per_bin / SAMPLE_RATE
        ax.fill_between(times, padded.min(1), padded.max(1), color="tab:blue", linewidth=0.4)
    else:
        ax.plot(offset + np.arange(len(samples)) / SAMPLE_RATE, samples, color="tab:blue", linewidth=0.6)
    for window in (trace.manifest.get("windows") or [])[1:]:
        if shown[0] < float(window["start"]) < shown[1]:
            ax.axvline(float(window["start"]), color="0.4", linestyle="--", linewidth=0.8)
    ax.set_xlim(*(shown if time_range is not None else (0, seconds)))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude (full scale)")
    what = f"{seconds:.2f} s" if time_range is None else f"{shown[0]:.2f}–{shown[1]:.2f} s of {duration(trace):.2f} s"
    ax.set_title(f"Waveform: {what} at 16 kHz mono ({len(samples):,} samples)")
    return fig


@over_time(window_time_span)
@draws
def log_mel(trace, window: int = 0, time_range: tuple[float, float] | None = None) -> Figure:
    """The log-Mel spectrogram the encoder reads for one 30 s window: n_mels bins × 3000 frames,
    with the end of the audio (where zero padding starts) marked; ``time_range`` (seconds of the
    clip, within the window) shows only that span."""
    mel = log_mel_array(trace, window)  # [n_mels, frame]
    n_mels, frames = mel.shape
    start, end = window_span(trace, window)
    seconds = frames / MEL_FRAMES_PER_SECOND
    shown = clip_range(time_range, start, start + seconds, f"window {window + 1}")
    fig = new_figure(10, 3.6)
    ax = fig.add_subplot()
    image = imshow(ax, mel, (start, start + seconds, 0, n_mels), "magma")
    if end - start < seconds - 0.05 and shown[0] < end < shown[1]:
        ax.axvline(end, color="white", linestyle="--", linewidth=1)
        ax.text(end + 0.01 * (shown[1] - shown[0]), n_mels * 0.92, "end of audio: zero padding follows",
                color="white", fontsize=MIN_FONT_PT, va="top", bbox=dict(LABEL_BOX), clip_on=True)
    ax.set_xlim(*shown)
    of_window = f", window {window + 1} of {len(trace.manifest['windows'])}" \
        if len(trace.manifest["windows"]) > 1 else ""
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Mel bin (low → high frequency)")
    ax.set_title(f"log-Mel spectrogram: {n_mels} Mel bins × {frames} frames (10 ms hop, "
                 f"{seconds:.0f} s{of_window}){range_note(time_range, shown)}")
    fig.colorbar(image, ax=ax, label="log10 power (Whisper-normalised)", pad=0.01)
    return fig
