"""Chunked log-Mel features equal transformers' feature extractor on long audio, bit for bit."""

import numpy as np
import torch

from probe.features import log_mel


def test_chunked_log_mel_equals_the_feature_extractor(tiny):
    extractor = tiny.processor.feature_extractor
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 150) / 16000
    samples = (0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) * (t % 7 < 4)
               + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    expected = extractor(samples, sampling_rate=16000, return_tensors="pt", truncation=False,
                         padding="longest").input_features[0]
    for chunk in (6000, 777):  # chunk edges anywhere
        ours = log_mel(samples, extractor, frames_per_chunk=chunk)
        assert ours.shape == expected.shape == (extractor.feature_size, len(samples) // 160)
        assert torch.equal(ours, expected)
