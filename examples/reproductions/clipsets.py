"""The clip sets the reproductions sweep over, made here and now (nothing downloaded):

- **speech**: the two English example clips and English sentences from the long-form lecture
  script, spoken by espeak-ng (:mod:`probe.audio.espeak`), each with its reference text;
- **nonspeech**: audio in which nobody speaks, synthesized with numpy — near-silence, white,
  pink and brown noise, a chord progression of harmonic tones (music), and a mains hum with a
  fan-like rumble.

:func:`write_clip_set` writes the clips as FLAC into a folder with a ``clips.json`` that
``probe sweep --clips`` (and :func:`probe.sweep.clips_from_file`) reads: file, text, group,
language.  Everything is seeded: the same call writes the same audio.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from probe.audio import SAMPLE_RATE, audio_from_array, encode_flac  # noqa: E402

NONSPEECH_SECONDS = 8.0


def _level(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """``samples`` scaled to an RMS of ``dbfs`` dB below full scale, float32 [n]."""
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) or 1.0
    return (samples / rms * 10 ** (dbfs / 20)).astype(np.float32)


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1/f^exponent (0 white, 1 pink, 2 brown), float [n]."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequency = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    frequency[0] = frequency[1]
    return np.fft.irfft(spectrum / frequency ** (exponent / 2), n)


def _music(seconds: float) -> np.ndarray:
    """Four chords of harmonic tones (I–V–vi–IV in C), each with an attack and decay, float [n]."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    chords = [(261.63, 329.63, 392.00), (196.00, 246.94, 392.00), (220.00, 261.63, 329.63), (174.61, 220.00, 349.23)]
    out = np.zeros_like(t)
    length = seconds / len(chords)
    for number, chord in enumerate(chords):
        inside = (t >= number * length) & (t < (number + 1) * length)
        local = t[inside] - number * length
        envelope = np.minimum(1.0, local / 0.05) * np.exp(-1.5 * local)
        for pitch in chord:
            for harmonic, weight in ((1, 1.0), (2, 0.4), (3, 0.2)):
                out[inside] += weight * envelope * np.sin(2 * np.pi * pitch * harmonic * local)
    return out


def nonspeech_clips(seed: int = 0) -> dict[str, np.ndarray]:
    """name → float32 [n] 16 kHz: audio with no speech in it."""
    rng = np.random.default_rng(seed)
    n = int(NONSPEECH_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6)) + 0.5 * _coloured_noise(rng, n, 2.0) / 50
    return {
        "silence": _level(rng.standard_normal(n), -70),  # dither: digital silence is all zeros, rooms are not
        "white_noise": _level(rng.standard_normal(n), -30),
        "pink_noise": _level(_coloured_noise(rng, n, 1.0), -30),
        "brown_noise": _level(_coloured_noise(rng, n, 2.0), -30),
        "music": _level(_music(NONSPEECH_SECONDS), -20),
        "hum": _level(hum, -30),
    }


def speech_clips(count: int = 6) -> list[tuple[str, np.ndarray, str]]:
    """(name, float32 [n] 16 kHz, reference text): the two English example clips, then
    ``count - 2`` lecture sentences spoken by espeak-ng."""
    from probe.audio.espeak import LECTURE_SENTENCES, Espeak

    from probe.audio import load_audio

    examples = json.loads((REPO / "examples" / "clips.json").read_text(encoding="utf-8"))
    found = [(Path(item["file"]).stem, load_audio(REPO / "examples" / item["file"]).samples, item["text"])
             for item in examples if item["language"] == "en"]
    espeak = Espeak()
    for number, sentence in enumerate(LECTURE_SENTENCES[: max(0, count - len(found))]):
        voice = ("en-us+m3", "en", "en-us+f3")[number % 3]
        samples = audio_from_array(espeak.speak(sentence, voice, 160), sample_rate=espeak.sample_rate).samples
        found.append((f"lecture_{number:02d}", samples, sentence))
    return found[:count]


def write_clip_set(folder: Path, speech: int = 6, nonspeech: bool = True) -> Path:
    """Write ``speech`` speech clips (and the non-speech ones) as FLAC into ``folder`` with its
    ``clips.json``; returns that file."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    items = []
    for name, samples, text in speech_clips(speech):
        (folder / f"{name}.flac").write_bytes(encode_flac(samples))
        items.append({"file": f"{name}.flac", "text": text, "group": "speech", "language": "en"})
    if nonspeech:
        for name, samples in nonspeech_clips().items():
            (folder / f"{name}.flac").write_bytes(encode_flac(samples))
            items.append({"file": f"{name}.flac", "text": "", "group": "nonspeech", "language": "en"})
    path = folder / "clips.json"
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return path
