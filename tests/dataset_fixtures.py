"""Datasets shaped like PolyAI/minds14 (an 8 kHz Audio column, a `transcription` column, a
stable id column), made offline from the example clips: what dataset-run tests trace."""

from __future__ import annotations

import io
from pathlib import Path

import soundfile as sf

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLIPS = [("en_fox.flac", "The quick brown fox jumps over the lazy dog."),
         ("zh_hello.flac", "你好，欢迎来到语音识别课程。"),
         ("en_lecture.flac", "Whisper is a speech recognition model. It listens to the audio and writes down the words.")]


def wav_8k(path: Path) -> bytes:
    """``path``'s audio at 8 kHz (pairs of 16 kHz samples averaged: a plain low-pass + decimation)."""
    samples, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    samples = samples[: len(samples) // 2 * 2].reshape(-1, 2).mean(axis=1)
    out = io.BytesIO()
    sf.write(out, samples, 8000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def minds14_like(folder: Path, rows: int = 3, corrupt: tuple[int, ...] = ()) -> Path:
    """A parquet file of ``rows`` rows cycling through the example clips at 8 kHz, with
    ``path``/``transcription``/``lang_id`` columns like minds14; rows in ``corrupt`` hold bytes
    that are not audio."""
    import datasets

    audio, texts, paths = [], [], []
    for index in range(rows):
        name, text = CLIPS[index % len(CLIPS)]
        data = b"this is not audio at all" * 40 if index in corrupt else wav_8k(EXAMPLES / name)
        audio.append({"bytes": data, "path": f"{index:04d}-{name}.wav"})
        texts.append(text)
        paths.append(f"zh-CN~{index:04d}")
    features = datasets.Features({"path": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=8000),
                                  "transcription": datasets.Value("string"), "lang_id": datasets.Value("int64")})
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "minds14-zh-CN.parquet"
    datasets.Dataset.from_dict({"path": paths, "audio": audio, "transcription": texts, "lang_id": [0] * rows},
                               features=features).to_parquet(str(target))
    return target
