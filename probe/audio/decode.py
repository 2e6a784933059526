"""Decoding encoded audio to 16 kHz mono float32, through torchcodec (FFmpeg), for every source.

Files, encoded bytes and dataset rows all go through :func:`_decode` with an *opener* that makes
a torchcodec ``AudioDecoder`` at 16 kHz: stereo is downmixed by FFmpeg while decoding (so only
mono samples are ever materialised), other channel counts are averaged or one channel is kept,
and the result is checked (:mod:`probe.audio.checks`).  torchcodec loads FFmpeg, so it is
imported on first use.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any, Callable

import torch

from probe.audio.checks import _channel_index, _check_decoded, _not_audio, _reason, _zero_samples
from probe.constants import SAMPLE_RATE
from probe.errors import AudioError

# FFmpeg's default stereo -> mono downmix is (L + R) / sqrt(2); scaling by this gives the mean.
_STEREO_DOWNMIX_TO_MEAN = 1.0 / math.sqrt(2.0)
_HEAD_BYTES = 64 * 1024  # read for the header checks

# An opener makes a torchcodec AudioDecoder at 16 kHz with the given channel count (None: native).
Opener = Callable[[int | None], Any]


def _file_opener(path: str) -> Opener:
    decoder = _torchcodec().AudioDecoder
    return lambda channels: decoder(path, sample_rate=SAMPLE_RATE, num_channels=channels)


def _bytes_opener(data: bytes) -> Opener:
    decoder = _torchcodec().AudioDecoder
    return lambda channels: decoder(data, sample_rate=SAMPLE_RATE, num_channels=channels)


def _decode(open_: Opener, label: str, channel: str | int, head: bytes | None):
    """Decode to (float32 [n] 16 kHz mono samples, original sample rate, original channels)."""
    decoder = _open(open_, None, label)
    meta = decoder.metadata
    channels = int(meta.num_channels or 0)
    index = _channel_index(channel, channels, label)
    if channels == 1:
        samples = _all_samples(decoder, label)[0].numpy()
    elif index is None and channels == 2:
        # Let FFmpeg downmix while decoding, so only mono samples are ever materialised.
        samples = _all_samples(_open(open_, 1, label), label)[0].numpy()
        samples *= _STEREO_DOWNMIX_TO_MEAN
    else:
        data = _all_samples(decoder, label)  # [channels, n]
        samples = (data.mean(dim=0) if index is None else data[index].clone()).numpy()
        channels = channels or int(data.shape[0])
        del data
    _check_decoded(samples, label, meta, head)
    return samples, int(meta.sample_rate or SAMPLE_RATE), channels


def _open(open_: Opener, channels: int | None, label: str):
    try:
        return open_(channels)
    except ValueError as error:  # torchcodec: "The best audio stream is unknown ..."
        if "stream" in str(error):
            raise AudioError(_not_audio(label, "it contains no audio stream")) from None
        raise AudioError(_not_audio(label, _reason(error, label))) from None
    except (RuntimeError, OSError) as error:
        raise AudioError(_not_audio(label, _reason(error, label))) from None


def _all_samples(decoder, label: str) -> torch.Tensor:
    """All samples as float32 [channels, n]; zero-length or undecodable audio is an AudioError."""
    try:
        return decoder.get_all_samples().data
    except (RuntimeError, ValueError) as error:
        if "No audio frames were decoded" in str(error):
            raise AudioError(_zero_samples(label)) from None
        raise AudioError(
            f"{label} is truncated or corrupt: decoding failed ({_reason(error, label)}); "
            "re-export or re-download it"
        ) from None


@functools.cache
def _torchcodec() -> SimpleNamespace:
    """torchcodec's AudioDecoder and AudioEncoder, imported on first use (it loads FFmpeg)."""
    try:
        from torchcodec.decoders import AudioDecoder
        from torchcodec.encoders import AudioEncoder
    except (ImportError, OSError, RuntimeError) as error:
        raise AudioError(
            f"torchcodec cannot be loaded ({_reason(error, '')}); install FFmpeg "
            "(e.g. apt-get install ffmpeg) and a torchcodec that matches your torch"
        ) from None
    return SimpleNamespace(AudioDecoder=AudioDecoder, AudioEncoder=AudioEncoder)
