"""Speech with known word times: what alignment-head discovery (:mod:`probe.heads`) is scored on.

A :class:`ReferenceClip` is a clip of at most 30 s, the text spoken in it and each word's start
(and end) in seconds.  This module owns the two ways to get one: :func:`synthesized`, the built-in
speech set, spoken by espeak-ng (:mod:`probe.audio.espeak`, with the optional ``espeakng-loader``
package) with its own word events as the reference; and
:func:`from_times_file`, the user's clips with their word times in a JSON or CSV file.  Every
mistake in either is a one-line :class:`~probe.errors.OptionError` or
:class:`~probe.errors.AudioError`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe.audio import AudioClip, audio_from_array, load_audio
from probe.constants import SAMPLE_RATE, WINDOW_SECONDS
from probe.errors import OptionError

VOICES = ("en-us+m3", "en+f3")  # espeak-ng voices the speech set alternates, clip by clip
WORDS_PER_MINUTE = (160, 145, 175)  # and speaking rates, sentence by sentence
PAUSES_SECONDS = (0.3, 0.6, 0.45, 0.8)  # and the silences before each sentence: words do not start at 0
SENTENCES_PER_CLIP = 4  # one encoder pass per clip: the pass costs the same for 5 s as for 30 s
TAIL_SECONDS = 0.4
TIMES_FORMAT = ('a JSON object {"CLIP": [{"word": ..., "start": s, "end": s}, ...]} or a CSV with columns '
                "clip,word,start[,end]; CLIP as given on the command line or its file name")


@dataclass(frozen=True)
class ReferenceWord:
    """A spoken word and where it is in its clip (seconds)."""

    word: str
    start: float
    end: float | None = None


@dataclass(eq=False)
class ReferenceClip:
    """A clip of at most 30 s, what is said in it and when each word starts."""

    clip: AudioClip
    text: str  # what is teacher-forced: the transcript, punctuated as a transcript would be
    words: list[ReferenceWord]
    language: str = "en"

    @property
    def name(self) -> str:
        return Path(self.clip.source).name


def lecture_sentences() -> list[str]:
    """The sentences of the example lecture recording (16, English; :mod:`probe.audio.espeak`)."""
    from probe.audio.espeak import LECTURE_SENTENCES

    return list(LECTURE_SENTENCES)


def synthesized(sentences: list[str], per_clip: int = SENTENCES_PER_CLIP) -> list[ReferenceClip]:
    """The speech set: ``per_clip`` sentences a clip, spoken by espeak-ng (voice, rate and the pause
    before each sentence cycled through :data:`VOICES`, :data:`WORDS_PER_MINUTE`,
    :data:`PAUSES_SECONDS`), resampled to 16 kHz, with espeak-ng's word events as the reference."""
    sentences = [s.strip() for s in sentences if s.strip()]
    if not sentences:
        raise OptionError("no sentences to synthesise; give --text TEXT or a --texts file with one sentence a line")
    espeak = _espeak()
    groups = [sentences[i:i + per_clip] for i in range(0, len(sentences), per_clip)]
    return [_spoken(espeak, group, number, first=number * per_clip) for number, group in enumerate(groups)]


def _spoken(espeak, sentences: list[str], number: int, first: int) -> ReferenceClip:
    """Clip ``number`` of the speech set: ``sentences`` (the ``first``-th onwards of the set) in a row."""
    voice = VOICES[number % len(VOICES)]
    parts, words, at = [], [], 0.0  # at: seconds of audio so far
    for i, sentence in enumerate(sentences, first):
        samples, spoken = espeak.speak_words(sentence, voice, WORDS_PER_MINUTE[i % len(WORDS_PER_MINUTE)])
        if not spoken:
            raise OptionError(f"espeak-ng spoke no words for {sentence!r}; give sentences with words in them")
        pause = np.zeros(round(PAUSES_SECONDS[i % len(PAUSES_SECONDS)] * SAMPLE_RATE), np.float32)
        speech = audio_from_array(samples, sample_rate=espeak.sample_rate).samples  # float32 [n] 16 kHz
        at += len(pause) / SAMPLE_RATE
        words += [ReferenceWord(word, round(at + start, 3), round(at + end, 3))
                  for (word, start, end), unsure in zip(spoken, _after_unmarked_word(sentence, spoken)) if not unsure]
        parts += [pause, speech]
        at += len(speech) / SAMPLE_RATE
    parts.append(np.zeros(round(TAIL_SECONDS * SAMPLE_RATE), np.float32))
    clip = audio_from_array(np.concatenate(parts), source=f"espeak-ng:{number:02d}")
    _check_length(clip)
    return ReferenceClip(clip, " ".join(sentences), words)


def _after_unmarked_word(sentence: str, spoken: list[tuple[str, float, float]]) -> list[bool]:
    """For each word espeak-ng reported: whether a word it gave no event of its own comes just before.

    espeak-ng runs some short function words ("a", "an", "the") into a neighbour without a word
    event; when the neighbour is the next word, that word's event may mark where the unmarked one
    starts, so such words are left out of the reference (the unmarked word has no time at all).
    """
    flags, at = [], 0  # at: the character after the last reported word
    for word, _, _ in spoken:
        found = sentence.find(word, at)
        flags.append(found > at and any(ch.isalnum() for ch in sentence[at:found]))
        at = found + len(word) if found >= 0 else at
    return flags


def _espeak():
    """espeak-ng (:class:`probe.audio.espeak.Espeak`); without ``espeakng-loader`` a one-line error."""
    if importlib.util.find_spec("espeakng_loader") is None:
        raise OptionError("the built-in speech set is spoken by espeak-ng: pip install espeakng-loader; "
                          "or pass your own clips with --times FILE")
    from probe.audio.espeak import Espeak

    return Espeak()


# --------------------------------------------------------------------------- the user's clips


def from_times_file(clips: list[str], times: str | Path | None, language: str = "en") -> list[ReferenceClip]:
    """``clips`` (audio files of at most 30 s) with the word times ``times`` gives for each
    (:data:`TIMES_FORMAT`); the transcript teacher-forced is the words in order."""
    if times is None:
        raise OptionError("clips need reference word times to rank heads against: give --times FILE "
                          f"({TIMES_FORMAT}); or give no clips to use the built-in espeak-ng speech set")
    table = _read_times(Path(times))
    references = []
    for given in clips:
        clip = load_audio(given)
        _check_length(clip)
        words = table.get(given, table.get(Path(given).name))
        if not words:
            raise OptionError(f"--times {times} has no words for {given}; key them by the clip as given or its file name")
        _check_words(words, clip, times)
        references.append(ReferenceClip(clip, " ".join(w.word for w in words), words, language))
    return references


def _read_times(path: Path) -> dict[str, list[ReferenceWord]]:
    """clip → its words, from a JSON or CSV file (:data:`TIMES_FORMAT`)."""
    if not path.is_file():
        raise OptionError(f"--times {path} does not exist; give {TIMES_FORMAT}")
    text = path.read_text(encoding="utf-8")
    try:
        rows = _json_rows(json.loads(text)) if path.suffix.lower() == ".json" else _csv_rows(text)
        table: dict[str, list[ReferenceWord]] = {}
        for clip, word, start, end in rows:
            table.setdefault(str(clip), []).append(
                ReferenceWord(str(word).strip(), float(start), None if end in (None, "") else float(end)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise OptionError(f"--times {path} cannot be read ({exc}); give {TIMES_FORMAT}") from None
    return table


def _json_rows(data) -> list[tuple]:
    return [(clip, w["word"], w["start"], w.get("end")) for clip, words in data.items() for w in words]


def _csv_rows(text: str) -> list[tuple]:
    reader = csv.DictReader(text.splitlines())
    missing = {"clip", "word", "start"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"no column {', '.join(sorted(missing))}")
    return [(row["clip"], row["word"], row["start"], row.get("end")) for row in reader]


def _check_words(words: list[ReferenceWord], clip: AudioClip, times) -> None:
    starts = [w.start for w in words]
    if any(b < a for a, b in zip(starts, starts[1:])) or starts[0] < 0 or starts[-1] > clip.duration:
        raise OptionError(f"--times {times}: the words of {clip.source} must start in order, inside its "
                          f"{clip.duration:.2f} s")


def _check_length(clip: AudioClip) -> None:
    if clip.duration > WINDOW_SECONDS:
        raise OptionError(f"{clip.source} is {clip.duration:.1f} s; heads are ranked on one {WINDOW_SECONDS} s window "
                          f"per clip: cut it into clips of at most {WINDOW_SECONDS} s")
