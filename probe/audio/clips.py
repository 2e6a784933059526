"""What decoded audio is: :class:`AudioClip`, and the 30 s :class:`Window` s Whisper hears.

Units: samples are float32 in [-1, 1] (roughly; nothing is clipped) at :data:`SAMPLE_RATE` Hz,
shaped ``[n_samples]``; times are seconds from the clip start.  Memory: a decoded clip is held
once, as float32 mono (a 2-hour file is 460 MB); windows are views into it, not copies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probe.constants import SAMPLE_RATE, WINDOW_SECONDS

WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS  # 480000


@dataclass(eq=False)
class AudioClip:
    """One piece of audio, decoded to what Whisper hears."""

    samples: np.ndarray = field(repr=False)  # float32 [n_samples], mono, 16 kHz, finite
    source: str  # absolute path, "array", or "dataset:<name>[<split>]#<row>"
    sha256: str  # of the original file bytes (files) or of the float32 samples (arrays, rows)
    original_sample_rate: int
    original_channels: int
    row: dict[str, Any] | None = None  # a dataset row's other scalar columns (text, language, ...)
    channel: str | int = "mix"  # what became the mono signal: "mix", "left", "right" or a channel number
    reference: str | None = None  # what was said (a dataset's text column): the trace's WER/CER compare with it
    dataset: dict[str, Any] | None = None  # a dataset row's origin: name, config, split, row, key, key_column
    # log-Mel features [n_mels, mel_frame] made beside decoding (probe.dataset_runs' CPU stage), or None
    features: np.ndarray | None = field(default=None, repr=False)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE


@dataclass(eq=False)
class Window:
    """A <= 30 s stretch of a clip, as Whisper processes it."""

    index: int
    start: float  # seconds within the clip
    end: float  # seconds within the clip
    samples: np.ndarray = field(repr=False)  # float32 [<= WINDOW_SAMPLES], a view into the clip


def split_windows(clip: AudioClip) -> list[Window]:
    """30 s windows covering the whole clip in order; the last may be shorter.  A clip of at
    most 30 s is one window.  Window samples are views into ``clip.samples``."""
    total = len(clip.samples)
    starts = range(0, max(total, 1), WINDOW_SAMPLES)
    return [
        Window(
            index=i,
            start=begin / SAMPLE_RATE,
            end=min(begin + WINDOW_SAMPLES, total) / SAMPLE_RATE,
            samples=clip.samples[begin : begin + WINDOW_SAMPLES],
        )
        for i, begin in enumerate(starts)
    ]


def _samples_sha256(samples: np.ndarray) -> str:
    """sha256 of float32 samples without copying them."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(samples, dtype="<f4"))).hexdigest()
