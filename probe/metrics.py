"""Error rates between two transcripts: WER and CER, after Whisper's text normalisation.

Both texts are normalised as Whisper's evaluations normalise them (transformers' port of
openai-whisper's normalizers: :class:`EnglishTextNormalizer` for English, which spells numbers
and contractions one way, :class:`BasicTextNormalizer` otherwise — lower case, punctuation and
bracketed asides removed), then compared with jiwer.  Languages written without spaces between
words (Chinese, Japanese, Korean, Thai, ...) are scored by characters: their "WER" would count a
whole sentence as one word.

The English normaliser here has no British→American spelling table (openai-whisper ships one with
its weights' tokenizer files; the store keeps none), so "colour"/"color" count as different words.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

# Languages scored by characters (CER is the headline number for them)
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "th", "lo", "my", "km", "yue", "bo"})


@functools.cache
def _normalizer(english: bool):
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer({}) if english else BasicTextNormalizer()


def normalize(text: str, language: str | None = None) -> str:
    """``text`` as Whisper's evaluations compare it (see the module docstring)."""
    return " ".join(_normalizer(language in (None, "en", "english"))(text or "").split())


@dataclass(frozen=True)
class ErrorRates:
    """How far ``hypothesis`` is from ``reference``: word and character error rates (0 is equal),
    the word edits behind the WER, and which of the two rates suits the language (``headline``)."""

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    headline: str  # "wer" or "cer"

    def to_dict(self) -> dict:
        return {"wer": self.wer, "cer": self.cer, "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "reference_words": self.reference_words, "headline": self.headline}


def error_rates(reference: str, hypothesis: str, language: str | None = None) -> ErrorRates:
    """WER and CER of ``hypothesis`` against ``reference`` after :func:`normalize`.  An empty
    reference scores 0 against an empty hypothesis and 1 against anything else (every word inserted)."""
    import jiwer

    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    by_characters = language in CHARACTER_LANGUAGES
    if by_characters:  # no spaces between words: each character is a "word" for the edit counts
        ref_units, hyp_units = " ".join(ref.replace(" ", "")), " ".join(hyp.replace(" ", ""))
    else:
        ref_units, hyp_units = ref, hyp
    if not ref_units:
        rate = 0.0 if not hyp_units else 1.0
        inserted = len(hyp_units.split())
        return ErrorRates(rate, rate, 0, 0, inserted, 0, "cer" if by_characters else "wer")
    words = jiwer.process_words(ref_units, hyp_units or "")
    cer = jiwer.cer(ref.replace(" ", "") if by_characters else ref, (hyp.replace(" ", "") if by_characters else hyp) or "")
    return ErrorRates(wer=float(words.wer), cer=float(cer), substitutions=words.substitutions,
                      deletions=words.deletions, insertions=words.insertions,
                      reference_words=words.substitutions + words.deletions + words.hits,
                      headline="cer" if by_characters else "wer")


def word_diff(reference: str, hypothesis: str, language: str | None = None) -> list[tuple[str, str, str]]:
    """Where two transcripts differ, as runs ``(op, reference text, hypothesis text)`` with ``op``
    one of ``equal``, ``replace``, ``delete`` (only in the reference), ``insert`` (only in the
    hypothesis); words are matched after :func:`normalize` (case and punctuation aside) and shown
    as written.  Languages without spaces between words are compared character by character."""
    import difflib

    by_characters = language in CHARACTER_LANGUAGES
    units = [list("".join(text.split())) if by_characters else text.split() for text in (reference, hypothesis)]
    keys = [[normalize(unit, language) or unit for unit in side] for side in units]
    joiner = "" if by_characters else " "
    runs = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, *keys, autojunk=False).get_opcodes():
        runs.append((op, joiner.join(units[0][a0:a1]), joiner.join(units[1][b0:b1])))
    return runs


def token_weighted_logprob(signals) -> float | None:
    """The windows' average log-probabilities averaged by their token counts (each window's
    :mod:`probe.signals` dict; a window without both numbers does not count), or None."""
    total = weight = 0
    for window in signals:
        value = window.get("avg_logprob") if isinstance(window, dict) else None
        tokens = window.get("tokens") if isinstance(window, dict) else None
        if _finite(value) and isinstance(tokens, int) and not isinstance(tokens, bool):
            total, weight = total + value * tokens, weight + tokens
    return round(total / weight, 4) if weight else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scalar(value) -> bool:
    return value is None or (isinstance(value, (bool, int, float)) and not isinstance(value, complex))


def trace_metrics(run, pm=None) -> dict:
    """The manifest's ``metrics`` of a finished run: what ``probe summary`` lists per trace.

    Duration, window and token counts; the token-weighted average log-probability over the windows
    (:mod:`probe.signals`), openai-whisper's compression ratio of the whole transcript, the first
    window's no-speech and language probability; with a reference (``run.clip.reference``) its WER
    and CER (:func:`error_rates`; ``error_rate`` is the headline one); and every scalar a plugin
    returns from ``probe_trace_metrics`` (a plugin returning something else is a PluginError).
    """
    from probe.errors import PluginError
    from probe.signals import text_compression_ratio

    first = run.windows[0]
    metrics = {
        "duration": round(run.clip.duration, 3),
        "windows": len(run.windows),
        "tokens": sum(w.kept for w in run.windows),  # the transcript's, timestamps included
        "avg_logprob": token_weighted_logprob(getattr(w, "signals", None) for w in run.windows),
        "compression_ratio": round(text_compression_ratio(run.transcript), 4),
        "no_speech_probability": round(float(first.no_speech_probability), 4),
        "language_probability": round(float(first.language_probability), 4),
        "language": first.language,
    }
    reference = run.clip.reference
    if reference is not None:
        rates = error_rates(reference, run.transcript, first.language)
        metrics.update(rates.to_dict(), wer=round(rates.wer, 4), cer=round(rates.cer, 4),
                       error_rate=round(rates.cer if rates.headline == "cer" else rates.wer, 4))
    if pm is not None:
        from probe.plugin_manager import ask

        answers = ask(pm, "probe_trace_metrics", expect=lambda result: isinstance(result, dict), run=run)
        for plugin, values in answers.items():
            for name, value in values.items():
                if not isinstance(name, str) or not _scalar(value):
                    raise PluginError(f"plugin {plugin!r} returned {name!r}: {value!r} from probe_trace_metrics;"
                                      " metrics are names mapped to numbers, bools or None")
                metrics[name] = value
    return metrics
