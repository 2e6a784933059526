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
