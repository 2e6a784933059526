"""probe.alignment's DTW, median filter and alignment matrix equal openai-whisper's, including on ties."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from whisper.timing import dtw_cpu, median_filter as openai_median_filter

from probe.alignment import alignment_matrix, dtw, median_filter


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
    if seed % 2:  # few distinct values: ties inside the window
        x = x.round()
    torch.testing.assert_close(median_filter(x, width), openai_median_filter(x, width), atol=0, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 20), st.integers(8, 300), st.data())
def test_alignment_matrix_rows_equal_openai_whisper_steps(tokens, frames, data):
    """timing.py's recipe (z-score over all tokens, median filter, head mean, then the rows kept),
    with ``rows`` filtering only the rows returned."""
    start = data.draw(st.integers(0, tokens - 1))
    stop = data.draw(st.integers(start + 1, tokens))
    seed = data.draw(st.integers(0, 2**32 - 1))
    weights = torch.from_numpy(np.random.default_rng(seed).random((4, tokens, frames), dtype=np.float32))
    weights = weights / weights.sum(-1, keepdim=True)  # [head, token, frame], rows of probabilities
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    expected = openai_median_filter((weights - mean) / std, 7).mean(0)[start:stop]
    torch.testing.assert_close(alignment_matrix(weights, rows=slice(start, stop)), expected, atol=0, rtol=0)
    torch.testing.assert_close(alignment_matrix(weights)[start:stop], expected, atol=0, rtol=0)
