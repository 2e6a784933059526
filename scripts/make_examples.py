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
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from probe.audio import SAMPLE_RATE, audio_from_array, encode_flac, load_audio  # noqa: E402
# the speech synthesiser and the lecture's sentences (tests and benchmarks import them from here too)
from probe.audio.espeak import LECTURE_SENTENCES, Espeak  # noqa: E402


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
