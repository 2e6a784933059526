"""Word timestamps from cross-attention: the alignment-heads method of openai-whisper's ``timing.py``.

Given the cross-attention probabilities of the model's *alignment heads* for each emitted text
token (and the final ``<|endoftext|>``), the recipe is: keep the frames that hold audio, z-score
each head over the tokens, median-filter along time (width 7), average the heads, and find the
monotonic token→frame path with dynamic time warping on the negated matrix.  A word starts at the
first frame its first token is aligned to.  Words are split the way Whisper's tokenizer text is
read: on spaces and punctuation, or on Unicode characters for languages written without spaces.
Frames are 20 ms (50 per second).
"""

from __future__ import annotations

import string

import numpy as np
import torch
import torch.nn.functional as F

from probe.constants import ENCODER_FRAMES_PER_SECOND

MEDIAN_FILTER_WIDTH = 7
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"


def _median_network(width: int) -> list[tuple[int, bool, bool]]:
    """The odd-even transposition sort of ``width`` lanes, pruned to what decides the middle lane.

    Returns comparators ``(k, keep_min, keep_max)`` on lanes ``k, k + 1`` in order: one whose
    outputs never reach the median is dropped, and of the rest only the needed half (the min into
    lane ``k``, the max into lane ``k + 1``) is computed.  The median is unchanged, exactly.
    """
    comparators = [k for round_ in range(width) for k in range(round_ % 2, width - 1, 2)]
    needed, network = {width // 2}, []
    for k in reversed(comparators):
        keep_min, keep_max = k in needed, k + 1 in needed
        if keep_min or keep_max:
            network.append((k, keep_min, keep_max))
            needed |= {k, k + 1}
    return network[::-1]


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window along the last axis, reflect-padded (width odd).

    The ``width`` shifted copies are sorted elementwise by an odd-even transposition network,
    pruned to the comparisons the middle lane depends on (:func:`_median_network`): exact, and a
    few times faster than ``Tensor.median`` over an unfolded view.
    """
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    frames = x.shape[-1]
    padded = F.pad(x.reshape(1, -1, frames), (pad, pad), mode="reflect").reshape(*x.shape[:-1], -1)
    lanes = [padded[..., k:k + frames] for k in range(width)]  # lanes[k][..., t] = x[..., t + k - pad]
    for k, keep_min, keep_max in _median_network(width):
        low, high = lanes[k], lanes[k + 1]
        if keep_min:
            lanes[k] = torch.minimum(low, high)
        if keep_max:
            lanes[k + 1] = torch.maximum(low, high)
    return lanes[pad]


def alignment_matrix(weights: torch.Tensor, width: int = MEDIAN_FILTER_WIDTH, rows: slice = slice(None)) -> torch.Tensor:
    """weights: [head, token, frame] attention probabilities → [token, frame] alignment scores.

    Each head is z-scored over all its tokens; ``rows`` picks the tokens to filter and return (the
    median filter runs along frames, so leaving the others out changes nothing in these).
    """
    weights = weights.float()
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = (weights[:, rows] - mean) / std.clamp_min(1e-10)
    return median_filter(weights, width).mean(0)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment path through ``cost`` [token, frame] → (token indices, frame indices).

    Steps are diagonal, down (next token) or right (next frame), chosen exactly as openai-whisper's
    ``dtw_cpu`` does (a tie between diagonal and down goes right).  The accumulated cost is kept
    skewed, ``diag[i + j, i] = acc[i, j]``, so each anti-diagonal depends on the two before it
    through plain slices and is filled as one vector; the path is then walked back from the corner.
    """
    n, m = cost.shape
    diag = np.full((n + m + 1, n + 1), np.inf)  # [token + frame, token], acc over the (n+1)×(m+1) grid
    diag[0, 0] = 0.0
    skewed = np.empty((n + m + 1, n + 1))
    rows, cols = np.meshgrid(np.arange(1, n + 1), np.arange(1, m + 1), indexing="ij")
    skewed[rows + cols, rows] = cost
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)  # token indices i on this anti-diagonal, j = d - i
        c0, c1, c2 = diag[d - 2, lo - 1:hi], diag[d - 1, lo - 1:hi], diag[d - 1, lo:hi + 1]  # acc[i-1,j-1], acc[i-1,j], acc[i,j-1]
        best = np.where((c0 < c1) & (c0 < c2), c0, np.where((c1 < c0) & (c1 < c2), c1, c2))
        diag[d, lo:hi + 1] = skewed[d, lo:hi + 1] + best
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if i == 0 or j == 0:
            i, j = (i, j - 1) if i == 0 else (i - 1, j)
            continue
        c0, c1, c2 = diag[i + j - 2, i - 1], diag[i + j - 1, i - 1], diag[i + j - 1, i]
        if c0 < c1 and c0 < c2:
            i, j = i - 1, j - 1
        elif c1 < c0 and c1 < c2:
            i -= 1
        else:
            j -= 1
    path = np.array(path[::-1])
    return path[:, 0], path[:, 1]


def _unicode_pieces(tokenizer, tokens: list[int]) -> list[tuple[str, list[int]]]:
    """Group tokens into the shortest runs that decode to whole Unicode characters."""
    pieces, current = [], []
    for token in tokens:
        current.append(token)
        text = tokenizer.decode(current)
        if "\ufffd" not in text:
            pieces.append((text, current))
            current = []
    if current:
        pieces.append((tokenizer.decode(current), current))
    return pieces


def split_words(tokenizer, tokens: list[int], language: str, eot: int) -> list[tuple[str, list[int]]]:
    """(word, its tokens) for ``tokens``; a token ≥ ``eot`` stays a word of its own."""
    pieces = _unicode_pieces(tokenizer, tokens)
    if language in NO_SPACE_LANGUAGES:
        return pieces
    words: list[tuple[str, list[int]]] = []
    for text, ids in pieces:
        starts_word = ids[0] >= eot or text.startswith(" ") or text.strip() in string.punctuation
        if starts_word or not words:
            words.append((text, list(ids)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + list(ids))
    return words


def merge_punctuation(words: list[dict]) -> list[dict]:
    """Attach opening punctuation to the next word and closing punctuation to the previous one."""
    words = [dict(w) for w in words]
    for i in range(len(words) - 2, -1, -1):
        word, following = words[i], words[i + 1]
        if word["word"].startswith(" ") and word["word"].strip() in PREPEND_PUNCTUATION and word["word"].strip():
            following["word"] = word["word"] + following["word"]
            following["tokens"] = word["tokens"] + following["tokens"]
            word["word"], word["tokens"] = "", []
    for i in range(1, len(words)):
        previous, word = words[i - 1], words[i]
        if previous["word"] and not previous["word"].endswith(" ") and word["word"] in APPEND_PUNCTUATION and word["word"]:
            previous["word"] += word["word"]
            previous["tokens"] += word["tokens"]
            word["word"], word["tokens"] = "", []
    return [w for w in words if w["word"]]


def words_from_alignment(matrix: np.ndarray, text_tokens: list[int], tokenizer, language: str, eot: int,
                         offset: float = 0.0, clamp: bool = True) -> list[dict]:
    """Words with start/end seconds from an :func:`alignment_matrix` [len(text_tokens) + 1, frame].

    ``clamp`` applies openai-whisper's heuristic that a sentence-final mark, or the word right after
    one, lasts at most twice the median word (DTW tends to stretch them over pauses).
    """
    token_index, frame_index = dtw(-np.asarray(matrix, dtype=np.float64))
    words = split_words(tokenizer, text_tokens + [eot], language, eot)
    boundaries = np.pad(np.cumsum([len(ids) for _, ids in words[:-1]]), (1, 0))
    jumps = np.pad(np.diff(token_index), (1, 0), constant_values=1).astype(bool)
    jump_times = frame_index[jumps] / ENCODER_FRAMES_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    timed = [{"word": text, "tokens": ids, "start": float(s), "end": float(e)}
             for (text, ids), s, e in zip(words[:-1], starts, ends)]
    if clamp:
        _clamp_long_words(timed)
    return [{**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)}
            for w in merge_punctuation(timed)]


def _clamp_long_words(words: list[dict]) -> None:
    """Sentence-final marks (and words right after them) get at most twice the median word length."""
    durations = np.array([w["end"] - w["start"] for w in words])
    durations = durations[durations.nonzero()]
    if not len(durations):
        return
    max_duration = min(0.7, float(np.median(durations))) * 2
    for i in range(1, len(words)):
        if words[i]["end"] - words[i]["start"] > max_duration:
            if words[i]["word"] in SENTENCE_END:
                words[i]["end"] = words[i]["start"] + max_duration
            elif words[i - 1]["word"] in SENTENCE_END:
                words[i]["start"] = words[i]["end"] - max_duration


def monotonic_words(words: list[dict], spans: dict[int, tuple[float, float]]) -> list[dict]:
    """Words of consecutive windows made monotonic and kept inside their window's used span.

    ``spans``: window index → (start, end) seconds of the audio that window's transcript covers
    (from its seek to the next window's seek).  DTW can place a window's last word past the point
    where the next window starts, or a word before the previous one ended; as faster-whisper
    requires, each word starts no earlier than the previous one ends and ends no earlier than it
    starts.
    """
    out, last_end = [], 0.0
    for word in words:
        low, high = spans.get(word.get("window", 0), (0.0, float("inf")))
        start = min(max(word["start"], low, last_end), high)
        end = min(max(word["end"], start), max(high, start))
        out.append({**word, "start": round(start, 3), "end": round(end, 3)})
        last_end = end
    return out
