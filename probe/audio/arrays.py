"""Audio that is already samples: numpy/torch arrays made into clips.

1-D or 2-D (``[channels, n]``, or ``[n, channels]`` with at most 8 channels), float in [-1, 1]
or int8/16/32/uint8 PCM; channels are averaged and other sample rates are resampled to 16 kHz
with FFmpeg's resampler (through torchcodec).  A clip's ``sha256`` is of its float32 samples.
"""

from __future__ import annotations

import numpy as np
import torch

from probe.audio.checks import _check_finite, _reason
from probe.audio.clips import AudioClip, _samples_sha256
from probe.audio.decode import _torchcodec
from probe.constants import SAMPLE_RATE
from probe.errors import AudioError, OptionError

_INT_SCALES = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


def audio_from_array(array, sample_rate: int = SAMPLE_RATE, source: str = "array") -> AudioClip:
    """Make a clip from numpy/torch samples: 1-D, or 2-D ``[channels, n]`` (``[n, channels]``
    with at most 8 channels is recognised too); float in [-1, 1] or int8/16/32 PCM.  Channels are
    averaged and other sample rates are resampled to 16 kHz with FFmpeg (through torchcodec).
    The clip's samples may share memory with ``array`` when no conversion is needed."""
    rate = _sample_rate(sample_rate)
    data = _float_samples(array, source)
    channels = 1
    if data.ndim == 2:
        if data.shape[0] > data.shape[1] and data.shape[1] <= 8:
            data = data.T  # [n, channels] -> [channels, n]
        channels = data.shape[0]
        data = data.mean(axis=0, dtype=np.float32) if channels > 1 else data[0]
    elif data.ndim != 1:
        raise AudioError(f"{source} has shape {data.shape}; pass 1-D samples or [channels, n_samples]")
    if data.size == 0:
        raise AudioError(f"{source} has no samples; pass a non-empty array")
    _check_finite(data, source)
    samples = _resample(np.ascontiguousarray(data), rate, source)
    if samples.size == 0:
        raise AudioError(f"{source} is too short to resample to {SAMPLE_RATE} Hz; pass more samples")
    return AudioClip(samples, source, _samples_sha256(samples), rate, channels)


def _sample_rate(sample_rate) -> int:
    try:
        whole = not isinstance(sample_rate, bool) and float(sample_rate).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole or int(sample_rate) <= 0:
        raise OptionError(f"sample rate {sample_rate!r} is not a positive whole number of Hz")
    return int(sample_rate)


def _float_samples(array, source: str) -> np.ndarray:
    """numpy float32 view/copy of a numpy array, torch tensor or sequence; ints are rescaled."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    data = np.asarray(array)
    if data.dtype in _INT_SCALES:
        return (data / _INT_SCALES[data.dtype]).astype(np.float32)
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if not np.issubdtype(data.dtype, np.floating):
        raise AudioError(
            f"{source} has samples of type {data.dtype}; pass float samples in [-1, 1] "
            "or int16/int32 PCM"
        )
    return data.astype(np.float32, copy=False)


def _resample(samples: np.ndarray, rate: int, source: str) -> np.ndarray:
    """float32 [n] at ``rate`` -> float32 [m] at 16 kHz, through FFmpeg's resampler (raw f32le)."""
    if rate == SAMPLE_RATE:
        return samples
    encoder = _torchcodec().AudioEncoder(torch.from_numpy(samples)[None], sample_rate=rate)
    try:
        raw = encoder.to_tensor("f32le", sample_rate=SAMPLE_RATE)
    except (RuntimeError, ValueError) as error:
        raise AudioError(
            f"cannot resample {source} from {rate} Hz to {SAMPLE_RATE} Hz ({_reason(error, '')}); "
            "check the sample rate"
        ) from None
    return raw.numpy().view("<f4")
