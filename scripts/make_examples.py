"""Synthesise the example clips committed under ``examples/`` (run from anywhere; rewrites them).

Speech comes from espeak-ng, driven through ctypes from the library and voice data that the pip
package ``espeakng-loader`` bundles (its ``cmn`` voice reads Hanzi directly).  Each clip is
resampled from espeak's 22 050 Hz to 16 kHz mono with :func:`probe.audio.audio_from_array`,
rounded to 16-bit levels (so FLAC stores it at 16-bit size) and written as FLAC with
:func:`probe.audio.encode_flac`.  Outputs: ``examples/<name>.flac``, ``examples/clips.json``
(file, language, text, voice, duration) and ``examples/dataset/`` — a tiny ``audiofolder`` dataset
(copies of the clips plus ``metadata.csv``) that ``datasets.load_dataset("audiofolder",
data_dir="examples/dataset")`` loads offline.  Every clip is checked for a plausible duration and
loudness, and read back with :func:`probe.audio.load_audio`.

Usage: ``python scripts/make_examples.py [--out examples]``
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from probe.audio import SAMPLE_RATE, audio_from_array, encode_flac, load_audio  # noqa: E402


@dataclass(frozen=True)
class ClipSpec:
    name: str
    language: str  # Whisper language code
    voice: str  # espeak-ng voice name
    text: str
    min_seconds: float
    max_seconds: float
    words_per_minute: int = 160


# Voices, rates and wording were picked by transcribing candidates with the converted Whisper base
# model (greedy, language auto-detected).  The committed clips give: en_fox and en_lecture word for
# word (<|en|> p 0.93 / 0.96); zh_hello "你好 欢迎来到语音识别客人" (<|zh|> p 0.80).  The English
# clips come out byte-identical on every run; espeak-ng's cmn voice varies by a few samples from
# run to run, so a regenerated zh_hello may transcribe slightly differently: re-check it.
CLIPS = [
    ClipSpec("en_fox", "en", "en", "The quick brown fox jumps over the lazy dog.", 2.0, 5.0, 150),
    ClipSpec(
        "en_lecture",
        "en",
        "en-us+m3",
        "Whisper is a speech recognition model. It listens to the audio and writes down the words.",
        4.5,
        9.0,
        160,
    ),
    ClipSpec("zh_hello", "zh", "cmn+f3", "你好，欢迎来到语音识别课程。", 3.0, 7.0, 120),
]

# A lecture-like recording longer than two windows, for the long-form tests and benchmarks: distinct
# sentences (so a repeated one is a decoding error, not the script) with pauses between them.
LECTURE_SENTENCES = [
    "Whisper is a speech recognition model trained on many hours of audio.",
    "The encoder turns thirty seconds of sound into fifteen hundred frames.",
    "The decoder writes the words one token at a time.",
    "Long recordings are cut into windows, and each window starts where the last one ended.",
    "When the text repeats itself, the model tries again at a higher temperature.",
    "A lecture can last for an hour, so memory must stay small.",
    "Cross attention shows where in the audio each word was heard.",
    "The language token tells the model which language to write.",
    "Silence at the end of a window should not turn into words.",
    "Timestamps mark the start and the end of every segment.",
    "Students can record their own voice and look at every layer.",
    "The dashboard draws the spectrogram and the attention over it.",
    "Each plugin keeps the records it cares about in the store.",
    "Greedy decoding picks the most likely token at every step.",
    "Beam search keeps several candidate sentences and picks the best one.",
    "The no speech probability says how likely it is that nobody spoke.",
]


# German sentences for a code-switching recording: an English half, then a German half.
GERMAN_SENTENCES = [
    "Heute sprechen wir über die Spracherkennung mit neuronalen Netzen.",
    "Das Modell hört dreißig Sekunden und schreibt dann die Wörter auf.",
    "Jedes Fenster beginnt dort, wo das letzte geendet hat.",
    "Die Studenten können ihre eigene Stimme aufnehmen und ansehen.",
    "Am Ende der Vorlesung gibt es eine kurze Pause für Fragen.",
]


def code_switching_recording(espeak: "Espeak") -> np.ndarray:
    """float32 [n] 16 kHz, about 47 s: five English sentences, then :data:`GERMAN_SENTENCES`
    (espeak-ng's ``de`` voice), 0.75 s pauses — two windows in two languages."""
    parts = []
    for text, voice in [(t, "en-us+m3") for t in LECTURE_SENTENCES[:4] + LECTURE_SENTENCES[6:7]] \
            + [(t, "de") for t in GERMAN_SENTENCES]:
        speech = audio_from_array(espeak.speak(text, voice, 150), sample_rate=espeak.sample_rate).samples
        parts += [speech, np.zeros(int(SAMPLE_RATE * 0.75), np.float32)]
    return to_16bit_levels(np.concatenate(parts))


def lecture_recording(espeak: "Espeak", seconds: float | None = None, voice: str = "en-us+m3") -> np.ndarray:
    """float32 [n] 16 kHz: :data:`LECTURE_SENTENCES` spoken with 0.6-1.4 s pauses (about 74 s), or
    repeated (each pass in order) until ``seconds`` long, then cut there."""
    parts, total, i = [], 0, 0
    while True:
        sentence = LECTURE_SENTENCES[i % len(LECTURE_SENTENCES)]
        speech = audio_from_array(espeak.speak(sentence, voice, 160), sample_rate=espeak.sample_rate).samples
        pause = np.zeros(int(SAMPLE_RATE * (0.6 + 0.4 * (i % 3))), np.float32)
        parts += [speech, pause]
        total += len(speech) + len(pause)
        i += 1
        if (seconds is None and i == len(LECTURE_SENTENCES)) or (seconds is not None and total >= seconds * SAMPLE_RATE):
            break
    samples = to_16bit_levels(np.concatenate(parts))
    return samples if seconds is None else samples[: int(seconds * SAMPLE_RATE)]


# espeak-ng's C API (speak_lib.h): synchronous output, UTF-8 text, positions in characters.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# speak_lib.h's espeak_EVENT_TYPE values read here; an event list ends with LIST_TERMINATED
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_SILENCE_HOP_SECONDS = 0.01  # frames of the energy trim that ends each word
_SILENCE_OF_PEAK = 0.02  # a frame quieter than this fraction of the clip's loudest frame is silence


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """speak_lib.h's ``espeak_EVENT``: for a WORD event, ``text_position`` is the word's first
    character (1-based), ``length`` its characters and ``audio_position`` its start in ms."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


class Espeak:
    """libespeak-ng from ``espeakng-loader``, returning int16 samples at :attr:`sample_rate`."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data_dir = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._word_events: list[tuple[int, int, int]] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        if events:
            self._keep_word_events(ctypes.cast(events, ctypes.POINTER(_Event)))
        return 0  # 0 = keep synthesising

    def _keep_word_events(self, events) -> None:
        """(first character 1-based, characters, start ms) of each WORD event in this callback's list."""
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._word_events.append((events[i].text_position, events[i].length, events[i].audio_position))
            i += 1

    def speak(self, text: str, voice: str, words_per_minute: int) -> np.ndarray:
        """int16 [n] samples of ``text`` spoken by ``voice``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
        self._chunks, self._word_events = [], []
        encoded = text.encode("utf-8")
        status = self.lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        if status != 0 or self.lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"espeak-ng failed to speak {text!r} ({status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def speak_words(self, text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """int16 [n] samples of ``text`` and each spoken word's (text, start s, end s).

        Starts are espeak-ng's own WORD events (where it put the word's first phoneme); a word ends
        where the next one starts, or for the last word at the end of the audio, less the silence
        before that point (10 ms frames under 2 % of the loudest frame's RMS).  espeak-ng runs some
        short function words into a neighbour ("at a time"): those have no event, so no entry.
        """
        samples = self.speak(text, voice, words_per_minute)
        spoken = [(text[first - 1:first - 1 + length], ms / 1000) for first, length, ms in self._word_events]
        hop = round(self.sample_rate * _SILENCE_HOP_SECONDS)
        frame_rms = _frame_rms(samples, hop)  # [frame]
        voiced = frame_rms >= _SILENCE_OF_PEAK * frame_rms.max(initial=0.0)
        bounds = [start for _, start in spoken[1:]] + [len(samples) / self.sample_rate]
        return samples, [(word, start, _voiced_end(voiced, start, bound, hop / self.sample_rate))
                         for (word, start), bound in zip(spoken, bounds)]


def _frame_rms(samples: np.ndarray, hop: int) -> np.ndarray:
    """RMS of consecutive ``hop``-sample frames of int16 ``samples`` (the last frame zero-padded), [frame]."""
    padded = np.pad(samples.astype(np.float64), (0, -len(samples) % hop)).reshape(-1, hop)
    return np.sqrt(np.mean(padded ** 2, axis=1))


def _voiced_end(voiced: np.ndarray, start: float, end: float, frame: float) -> float:
    """``end`` (s) moved back over the silent ``frame``-second frames before it (``voiced``: [frame]
    bool), never before the end of ``start``'s frame."""
    first = int(start / frame)
    last = min(int(end / frame), len(voiced))  # frames [first, last) lie wholly inside the word's span
    voiced_to = last
    while voiced_to > first + 1 and not voiced[voiced_to - 1]:
        voiced_to -= 1
    return end if voiced_to == last else voiced_to * frame


def to_16bit_levels(samples: np.ndarray) -> np.ndarray:
    """Round float samples to int16 levels so FLAC stores them compactly, float32 [n]."""
    return (np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768.0) / 32768.0).astype(np.float32)


def check_clip(spec: ClipSpec, samples: np.ndarray) -> dict:
    """Duration and loudness sanity checks; returns the numbers."""
    seconds = len(samples) / SAMPLE_RATE
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    if not spec.min_seconds <= seconds <= spec.max_seconds:
        raise SystemExit(f"{spec.name}: {seconds:.2f} s is outside [{spec.min_seconds}, {spec.max_seconds}]")
    if not 0.02 <= rms <= 0.5:
        raise SystemExit(f"{spec.name}: RMS {rms:.3f} does not look like speech")
    return {"duration": round(seconds, 3), "rms": round(rms, 4)}


def write_dataset(out: Path, rows: list[dict]) -> None:
    """examples/dataset: copies of the clips and metadata.csv, an offline audiofolder dataset."""
    dataset = out / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)
    dataset.mkdir(parents=True)
    with open(dataset / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file_name", "transcription", "language"])
        for row in rows:
            shutil.copyfile(out / row["file"], dataset / row["file"])
            writer.writerow([row["file"], row["text"], row["language"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "examples", help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    espeak = Espeak()
    rows = []
    for spec in CLIPS:
        speech = espeak.speak(spec.text, spec.voice, spec.words_per_minute)
        clip = audio_from_array(speech, sample_rate=espeak.sample_rate, source=spec.name)
        samples = to_16bit_levels(clip.samples)
        numbers = check_clip(spec, samples)
        path = out / f"{spec.name}.flac"
        path.write_bytes(encode_flac(samples))
        reloaded = load_audio(path)
        if np.max(np.abs(reloaded.samples - samples)) > 1e-4:
            raise SystemExit(f"{path} does not read back as written")
        row = {
            "file": path.name,
            "language": spec.language,
            "text": spec.text,
            "voice": f"espeak-ng {spec.voice}",
            "words_per_minute": spec.words_per_minute,
            "duration": numbers["duration"],
            "sample_rate": SAMPLE_RATE,
        }
        rows.append(row)
        print(f"{path.name}: {numbers['duration']:.2f} s, RMS {numbers['rms']:.3f}, {path.stat().st_size} bytes")

    (out / "clips.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_dataset(out, rows)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {len(rows)} clips, clips.json and dataset/ to {out} ({total / 1024:.0f} KB in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
