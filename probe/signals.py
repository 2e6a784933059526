"""Hallucination signals: the numbers that say a window's text may not be what was said.

Whisper's own decoding watches some of these to decide a fallback (openai-whisper's
``transcribe()``, transformers' long-form ``generate()``); whisper-probe keeps them for every
window and every attempt so a lecturer can show *why* a window was retried or dropped:

* compression ratio — repetitive text compresses well.  Two measures: transformers' (zlib over the
  token ids as bytes; its fallback threshold is about 1.35) and openai-whisper's (zlib over the
  UTF-8 text; threshold 2.4);
* average log-probability of the emitted tokens (``<|endoftext|>`` included), raw model softmax;
* no-speech probability at ``<|startoftranscript|>``;
* repetition loops: the longest run of one n-gram repeated back to back;
* per word, openai-whisper's ``hallucination_silence_threshold`` idea: words that are very short,
  very long or improbable are anomalous (:func:`word_anomaly`, :func:`flag_words`).
"""

from __future__ import annotations

import math
import zlib

# A word is anomalous when improbable, or too short / too long to be a spoken word (seconds).
LOW_WORD_PROBABILITY = 0.15
SHORTEST_WORD = 0.133
LONGEST_WORD = 2.0


def token_compression_ratio(tokens: list[int], vocab_size: int) -> float:
    """Raw over zlib-compressed size of the token ids written as little-endian integers."""
    width = int(math.log2(vocab_size) / 8) + 1
    raw = b"".join(int(t).to_bytes(width, "little") for t in tokens)
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def text_compression_ratio(text: str) -> float:
    """Raw over zlib-compressed size of the UTF-8 text (openai-whisper's measure)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def repetition(tokens: list[int], longest_ngram: int = 12) -> dict:
    """The longest back-to-back repetition of one n-gram: {"ngram": n, "repeats": k, "start": i}."""
    best = {"ngram": 0, "repeats": 1, "start": 0}
    for n in range(1, min(longest_ngram, len(tokens) // 2) + 1):
        i = 0
        while i + 2 * n <= len(tokens):
            repeats = 1
            while tokens[i + repeats * n:i + (repeats + 1) * n] == tokens[i:i + n]:
                repeats += 1
            if repeats > best["repeats"] and repeats * n >= 4:
                best = {"ngram": n, "repeats": repeats, "start": i}
            i += max(1, (repeats - 1) * n) if repeats > 1 else 1
    return best


def window_signals(tokens: list[int], kept: int, token_logprobs: list[float], no_speech: float,
                   vocab_size: int, tokenizer, eot: int) -> dict:
    """Signals of one window's accepted attempt (all its tokens, kept or re-decoded next window)."""
    text = tokenizer.decode([t for t in tokens if t < eot])
    loop = repetition([t for t in tokens if t < eot])
    return {
        "compression_ratio": round(token_compression_ratio(tokens, vocab_size), 4),
        "text_compression_ratio": round(text_compression_ratio(text), 4),
        "avg_logprob": round(sum(token_logprobs) / len(token_logprobs), 4) if token_logprobs else None,
        "no_speech_probability": round(no_speech, 4),
        "repetition": loop,
        "looping": loop["repeats"] >= 4,
        "tokens": len(tokens),
        "kept": kept,
    }


def attempt_record(attempt, tokenizer, eot: int, options, token_logprobs: list[float], accepted: bool,
                   last: bool) -> dict:
    """One fallback attempt as the manifest keeps it, with the reason it was kept or rejected."""
    reasons = []
    if (attempt.compression_ratio is not None and options.compression_ratio_threshold is not None
            and attempt.compression_ratio > options.compression_ratio_threshold):
        reasons.append(f"compression ratio {attempt.compression_ratio:.2f} > {options.compression_ratio_threshold}")
    if (attempt.avg_logprob is not None and options.logprob_threshold is not None
            and attempt.avg_logprob < options.logprob_threshold):
        reasons.append(f"average log-probability {attempt.avg_logprob:.2f} < {options.logprob_threshold}")
    if attempt.skipped:
        verdict = "skipped"
        reason = (f"no speech: p={attempt.no_speech_probability:.2f} > {options.no_speech_threshold} and average"
                  f" log-probability {attempt.avg_logprob:.2f} < {options.logprob_threshold}; the window's text is dropped")
    elif not accepted:
        verdict, reason = "rejected", "; ".join(reasons) + "; retried at the next temperature"
    elif attempt.needs_fallback and last:
        verdict, reason = "kept", "; ".join(reasons) + "; no temperature left, so this attempt is kept"
    else:
        verdict = "kept"
        reason = "passed the fallback checks" if options.temperatures and len(options.temperatures) > 1 \
            or options.compression_ratio_threshold or options.logprob_threshold else "no fallback configured"
    return {
        "attempt": attempt.index, "temperature": attempt.temperature, "num_beams": attempt.num_beams,
        "tokens": attempt.sequence, "text": tokenizer.decode([t for t in attempt.sequence if t < eot]).strip(),
        "compression_ratio": attempt.compression_ratio, "avg_logprob": attempt.avg_logprob,
        "no_speech_probability": attempt.no_speech_probability,
        "token_logprobs": [round(p, 5) for p in token_logprobs],
        "verdict": verdict, "reason": reason,
    }


def word_anomaly(word: dict) -> float:
    """openai-whisper's anomaly score of one timed word ({start, end, probability})."""
    probability = word.get("probability", 1.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability is not None and probability < LOW_WORD_PROBABILITY:
        score += 1.0
    if duration < SHORTEST_WORD:
        score += (SHORTEST_WORD - duration) * 15
    if duration > LONGEST_WORD:
        score += duration - LONGEST_WORD
    return score


def flag_words(words: list[dict]) -> list[dict]:
    """Words with their anomaly score; ``anomalous`` where the score is 3 or more (or all words of
    a short run are anomalous), as openai-whisper's silence heuristic judges them."""
    flagged = []
    for word in words:
        score = word_anomaly(word)
        flagged.append({**word, "anomaly": round(score, 3), "anomalous": score >= 3})
    return flagged
