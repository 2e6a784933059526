"""Audio files and encoded bytes: decoding them to clips, and the FLAC copy a trace keeps.

:func:`load_audio` decodes any file FFmpeg reads (its ``sha256`` is of the file's bytes),
:func:`decode_bytes` decodes encoded bytes, and :func:`encode_flac` compresses mono samples to the
FLAC bytes the trace store keeps next to a trace.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from probe.audio.checks import _check_finite, existing_file
from probe.audio.clips import AudioClip
from probe.audio.decode import _HEAD_BYTES, _bytes_opener, _decode, _file_opener, _torchcodec
from probe.constants import SAMPLE_RATE
from probe.errors import AudioError


def load_audio(path: str | os.PathLike, channel: str | int = "mix") -> AudioClip:
    """Decode an audio file to a 16 kHz mono clip.

    ``channel``: "mix" (mean of all channels), "left"/"right", or a channel number (0-based).
    """
    file = existing_file(path)
    label = str(file)
    with open(file, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    samples, rate, channels = _decode(_file_opener(label), label, channel, head)
    return AudioClip(samples, label, _file_sha256(file), rate, channels, channel=channel)


def decode_bytes(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode encoded audio bytes (FLAC, wav, mp3, ...) to float32 [n_samples] 16 kHz mono."""
    data = bytes(data)
    if not data:
        raise AudioError("audio bytes are empty (0 bytes); pass the encoded contents of an audio file")
    samples, _, _ = _decode(_bytes_opener(data), "audio bytes", "mix", data[:_HEAD_BYTES])
    return samples


def encode_flac(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Compress float32 [n_samples] mono audio to FLAC bytes (values beyond [-1, 1] are clipped)."""
    mono = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
    if mono.ndim != 1 or mono.size == 0:
        raise AudioError(f"encode_flac needs 1-D mono samples, got shape {mono.shape}; pass clip.samples")
    _check_finite(mono, "samples to encode")
    encoder = _torchcodec().AudioEncoder(torch.from_numpy(mono)[None], sample_rate=int(sample_rate))
    return encoder.to_tensor("flac").numpy().tobytes()


def _file_sha256(file: Path) -> str:
    """sha256 of a file's bytes, read in blocks so large files are never held twice."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
