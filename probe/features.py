"""Log-Mel features for long audio, computed in chunks, equal to transformers' feature extractor.

``WhisperFeatureExtractor`` (its torch path, the one transformers takes when torch is installed)
computes the STFT of the whole signal at once: for an hour of audio its intermediates (complex
STFT, magnitudes) take over 2 GB.  :func:`log_mel` computes the same frames chunk by chunk — the
centred STFT of a frame only needs its own 400 samples of the reflect-padded signal — then applies
the extractor's clip-wide floor (max − 8) and scaling, so the result is the extractor's, bit for
bit where the FFT and matmul of a chunk equal those of the whole (``tests/test_features.py``
checks it), with a peak of a few hundred MB.  Shapes: samples [n] float32 at 16 kHz → features
[n_mels, n // hop].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FRAMES_PER_CHUNK = 6000  # 60 s of log-Mel frames per STFT call


def log_mel(samples: np.ndarray, extractor, frames_per_chunk: int = FRAMES_PER_CHUNK) -> torch.Tensor:
    """``extractor(samples, truncation=False, padding="longest").input_features[0]`` without its
    whole-signal intermediates: float32 [n_mels, len(samples) // hop_length]."""
    n_fft, hop = extractor.n_fft, extractor.hop_length
    if getattr(extractor, "dither", 0.0):
        raise ValueError("chunked features do not reproduce the extractor's dither; use the extractor")
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    padded = F.pad(waveform[None, None], (n_fft // 2, n_fft // 2), mode="reflect")[0, 0]  # [n + n_fft]
    frames = len(samples) // hop  # the centred STFT gives one more; the extractor drops the last
    window = torch.hann_window(n_fft)
    filters = torch.from_numpy(extractor.mel_filters).to(torch.float32).T  # [n_mels, n_fft // 2 + 1]
    out = torch.empty(filters.shape[0], frames)  # [n_mels, frame]
    for first in range(0, frames, frames_per_chunk):
        last = min(first + frames_per_chunk, frames)
        piece = padded[first * hop:(last - 1) * hop + n_fft]
        stft = torch.stft(piece, n_fft, hop, window=window, center=False, return_complex=True)  # [bin, frame]
        out[:, first:last] = torch.clamp(filters @ (stft.abs() ** 2).contiguous(), min=1e-10).log10()
    # the extractor's floor and scaling, in place: the same arithmetic without three more copies
    return out.clamp_(min=float(out.max()) - 8.0).add_(4.0).div_(4.0)
