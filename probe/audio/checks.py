"""Everything a user can get wrong about audio, checked, with the one-line message that says so.

This module owns the checks on audio input (a missing, empty, unreadable or directory path; a
header that promises more audio than decodes; NaN or infinite samples; a channel that does not
exist) and the messages for audio torchcodec/FFmpeg cannot decode, so their tracebacks never
reach the user: each raises :class:`~probe.errors.AudioError` or
:class:`~probe.errors.OptionError`.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from probe.constants import SAMPLE_RATE
from probe.errors import AudioError, OptionError

_CHANNEL_NAMES = {"left": 0, "right": 1}
# A file whose header promises more audio than decodes by more than this is truncated/corrupt.
_TRUNCATION_SLACK_SECONDS = 0.25
_TRUNCATION_SLACK_FRACTION = 0.02
_WAV_UNKNOWN_SIZE = 0x7FFF0000  # writers that stream put placeholders (0xFFFFFFFF, 0x7FFFF000) here


def existing_file(path: str | os.PathLike) -> Path:
    """The absolute path of a non-empty regular file, or an AudioError saying what is wrong."""
    file = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not file.exists():
        raise AudioError(f"audio file {file} does not exist; check the path")
    if file.is_dir():
        raise AudioError(
            f"{file} is a directory, not an audio file; pass one file, or the folder as a dataset"
        )
    if file.stat().st_size == 0:
        raise AudioError(f"audio file {file} is empty (0 bytes); re-export or re-download it")
    if not os.access(file, os.R_OK):
        raise AudioError(f"audio file {file} is not readable; check its permissions")
    return file


def _check_decoded(samples: np.ndarray, label: str, meta, head: bytes | None) -> None:
    if samples.size == 0:
        raise AudioError(_zero_samples(label))
    _check_finite(samples, label)
    declared = _declared_seconds(meta, head)
    decoded = samples.size / SAMPLE_RATE
    slack = max(_TRUNCATION_SLACK_SECONDS, _TRUNCATION_SLACK_FRACTION * (declared or 0.0))
    if declared is not None and decoded < declared - slack:
        raise AudioError(
            f"{label} is truncated or corrupt: its header declares {declared:.2f} s of audio but "
            f"only {decoded:.2f} s decode; re-export or re-download it"
        )


def _declared_seconds(meta, head: bytes | None) -> float | None:
    """Duration the container header promises, where headers are trustworthy; else None."""
    if head is None:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav_header_seconds(head)
    if meta.codec == "mp3" and not any(tag in head for tag in (b"Xing", b"Info", b"VBRI")):
        return None  # without a frame-count tag FFmpeg only estimates an mp3's length
    return meta.duration_seconds_from_header


def _wav_header_seconds(head: bytes) -> float | None:
    """Length a RIFF/WAVE header declares (FFmpeg trims it to the file size, so read it here).

    Walks the RIFF chunks to ``fmt `` (sample rate, bytes per frame) and ``data`` (byte count).
    Returns None when the header is incomplete or its size is a streaming placeholder."""
    rate = frame_bytes = 0
    position = 12
    while position + 8 <= len(head):
        kind, size = head[position : position + 4], struct.unpack_from("<I", head, position + 4)[0]
        if kind == b"fmt " and position + 8 + 14 <= len(head):
            _, _, rate, _, frame_bytes = struct.unpack_from("<HHIIH", head, position + 8)
        elif kind == b"data":
            if not rate or not frame_bytes or size == 0 or size >= _WAV_UNKNOWN_SIZE:
                return None
            return size // frame_bytes / rate
        position += 8 + size + (size & 1)
    return None


def _check_finite(samples: np.ndarray, label: str) -> None:
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        raise AudioError(
            f"{label} contains {bad} NaN or infinite samples out of {samples.size}; "
            "replace them (e.g. numpy.nan_to_num) or fix the source audio"
        )


def _channel_index(channel: str | int, channels: int, label: str) -> int | None:
    """None for "mix", else the 0-based channel to keep (checked against the file)."""
    if isinstance(channel, str) and channel.strip().lower() == "mix":
        return None
    if isinstance(channel, str) and channel.strip().lower() in _CHANNEL_NAMES:
        index = _CHANNEL_NAMES[channel.strip().lower()]
    elif isinstance(channel, str) and channel.strip().isdigit():
        index = int(channel.strip())
    elif isinstance(channel, (int, np.integer)) and not isinstance(channel, bool) and channel >= 0:
        index = int(channel)
    else:
        raise OptionError(f"unknown channel {channel!r}; use mix, left, right or a channel number")
    if channels and index >= channels:
        raise OptionError(
            f"{label} has {channels} channel(s), so channel {channel!r} does not exist; "
            "use channel mix or one that exists"
        )
    return index


def _not_audio(label: str, reason: str) -> str:
    return (
        f"{label} is not an audio file torchcodec/FFmpeg can decode: {reason}; "
        "check that it is a complete audio file (wav, flac, mp3, ogg, m4a, ...)"
    )


def _zero_samples(label: str) -> str:
    return f"{label} decodes to zero audio samples; pass a file that contains sound"


def _reason(error: BaseException, label: str) -> str:
    """The useful part of a torchcodec/FFmpeg error, on one short line."""
    text = " ".join(str(error).strip().splitlines()[0].split()) if str(error).strip() else ""
    text = re.sub(r"^\w+, \S+:\d+, ", "", text)  # "SingleStreamDecoder, /path/x.cpp:52, "
    text = text.replace(f"Could not open input file: {label}", "").strip()
    return text or type(error).__name__
