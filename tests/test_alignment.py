"""probe.alignment's DTW and median filter equal openai-whisper's, including on ties."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from whisper.timing import dtw_cpu, median_filter as openai_median_filter

from probe.alignment import dtw, median_filter


@st.composite
def cost_matrices(draw):
    tokens, frames = draw(st.integers(1, 30)), draw(st.integers(1, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # few distinct values: many exact ties between the three steps
        return rng.integers(0, 3, (tokens, frames)).astype(np.float64)
    return rng.standard_normal((tokens, frames))


@settings(max_examples=150, deadline=None)
@given(cost_matrices())
def test_dtw_path_equals_openai_whisper(cost):
    tokens, frames = dtw(cost)
    expected_tokens, expected_frames = dtw_cpu(cost.copy())
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(frames, expected_frames)
    assert tokens[0] == frames[0] == 0 and tokens[-1] == cost.shape[0] - 1 and frames[-1] == cost.shape[1] - 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 400), st.sampled_from([3, 5, 7]), st.integers(0, 2**32 - 1))
def test_median_filter_equals_openai_whisper(rows, frames, width, seed):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, rows, frames), dtype=np.float32))
    torch.testing.assert_close(median_filter(x, width), openai_median_filter(x, width), atol=0, rtol=0)
