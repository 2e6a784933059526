"""Hallucination signals: compression ratios, repetition loops, word anomalies."""

import torch

from probe.signals import flag_words, repetition, text_compression_ratio, token_compression_ratio, word_anomaly


def test_token_compression_ratio_is_the_one_transformers_falls_back_on():
    from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

    for tokens in ([50364, 440, 2068, 3699, 50414], [1, 2, 3] * 40, list(range(300, 420))):
        assert token_compression_ratio(tokens, 51865) == WhisperGenerationMixin._retrieve_compression_ratio(
            torch.tensor(tokens), 51865)


def test_repetitive_text_compresses_more():
    loop = "the one and only, " * 20
    assert text_compression_ratio(loop) > 2.4 > text_compression_ratio("The quick brown fox jumps over the lazy dog.")


def test_repetition_finds_the_longest_back_to_back_loop():
    tokens = [5, 6] + [1, 2, 3] * 5 + [9]
    assert repetition(tokens) == {"ngram": 3, "repeats": 5, "start": 2}
    assert repetition(list(range(40)))["repeats"] == 1


def test_word_anomaly_scores_short_long_and_improbable_words():
    normal = {"word": " fox", "start": 1.0, "end": 1.3, "probability": 0.9}
    assert word_anomaly(normal) == 0
    assert word_anomaly({**normal, "probability": 0.05}) == 1
    assert word_anomaly({**normal, "end": 1.0}) > 1.9  # zero length: (0.133 - 0) * 15
    assert word_anomaly({**normal, "end": 5.0}) > 1.5  # 4 s long
    flagged = flag_words([normal, {**normal, "probability": 0.01, "end": 5.5}])  # 1 + (4.5 - 2)
    assert [w["anomalous"] for w in flagged] == [False, True]
