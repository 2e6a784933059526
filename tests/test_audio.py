"""Tests for probe.audio: every input route (files, arrays, datasets), windows, FLAC copies, errors."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torchcodec.encoders import AudioEncoder  # noqa: E402

from probe.audio import (  # noqa: E402
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    AudioClip,
    audio_from_array,
    dataset_size,
    decode_bytes,
    encode_flac,
    iter_dataset,
    load_audio,
    split_windows,
)
from probe.errors import AudioError, DatasetError, OptionError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FOX = EXAMPLES / "en_fox.flac"
DATASET = EXAMPLES / "dataset"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fox() -> AudioClip:
    return load_audio(FOX)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def write_audio(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Encode float32 [n] or [channels, n] samples to ``path`` (format from its suffix)."""
    data = torch.from_numpy(np.atleast_2d(samples).astype(np.float32))
    AudioEncoder(data, sample_rate=rate).to_file(str(path))
    return path


def float_wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A 32-bit float mono WAV (the only common format that can carry NaN/inf)."""
    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(data)) + data


def tiny_png() -> bytes:
    """A valid 1x1 PNG image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")


def assert_one_line_error(excinfo, *mentions: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message
    for text in mentions:
        assert text in message, (text, message)
    return message


# --------------------------------------------------------------------------------------------
# files: formats, sample rates, channels
# --------------------------------------------------------------------------------------------


def test_example_clip_loads_as_16k_mono(fox):
    assert fox.samples.dtype == np.float32 and fox.samples.ndim == 1
    assert fox.source == str(FOX) and os.path.isabs(fox.source)
    assert fox.sha256 == hashlib.sha256(FOX.read_bytes()).hexdigest()
    assert fox.original_sample_rate == SAMPLE_RATE and fox.original_channels == 1
    assert 2.0 < fox.duration < 5.0 and fox.duration == len(fox.samples) / SAMPLE_RATE
    assert 0.02 < float(np.sqrt(np.mean(fox.samples**2))) < 0.5
    assert np.isfinite(fox.samples).all() and np.abs(fox.samples).max() <= 1.0


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_every_format_decodes(tmp_path, fox, fmt):
    path = write_audio(tmp_path / f"fox.{fmt}", fox.samples, SAMPLE_RATE)
    clip = load_audio(path)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert abs(clip.duration - fox.duration) < 0.1
    n = min(len(clip.samples), len(fox.samples))
    if fmt in ("wav", "flac"):  # lossless: the same samples (up to 16-bit rounding for wav)
        np.testing.assert_allclose(clip.samples[:n], fox.samples[:n], atol=1e-4)
    else:  # lossy: same loudness
        rms = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
        assert rms(clip.samples) == pytest.approx(rms(fox.samples), rel=0.2)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_sample_rate_is_resampled_to_16k(tmp_path, rate):
    path = write_audio(tmp_path / f"tone{rate}.wav", tone(440, 2.5, rate), rate)
    clip = load_audio(path)
    assert clip.original_sample_rate == rate
    assert abs(clip.duration - 2.5) <= 0.010
    assert dominant_hz(clip.samples) == pytest.approx(440, abs=2)


def test_stereo_mix_left_right(tmp_path):
    left, right = tone(440, 2.0, 44100, 0.6), tone(1000, 2.0, 44100, 0.2)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, right]), 44100)
    mix, l_clip, r_clip = load_audio(path), load_audio(path, "left"), load_audio(path, "right")
    assert {mix.original_channels, l_clip.original_channels, r_clip.original_channels} == {2}
    assert dominant_hz(l_clip.samples) == pytest.approx(440, abs=2)
    assert dominant_hz(r_clip.samples) == pytest.approx(1000, abs=2)
    assert np.abs(l_clip.samples - r_clip.samples).max() > 0.3
    np.testing.assert_allclose(mix.samples, (l_clip.samples + r_clip.samples) / 2, atol=1e-4)
    np.testing.assert_array_equal(load_audio(path, 0).samples, l_clip.samples)
    np.testing.assert_array_equal(load_audio(path, 1).samples, r_clip.samples)
    assert mix.sha256 == l_clip.sha256  # the file's hash, whichever channel is used


def test_multichannel_mix_is_the_mean(tmp_path):
    channels = np.stack([tone(f, 1.0, SAMPLE_RATE, 0.3) for f in (300, 700, 1100)])
    path = write_audio(tmp_path / "three.flac", channels, SAMPLE_RATE)
    clip = load_audio(path)
    assert clip.original_channels == 3
    np.testing.assert_allclose(clip.samples, channels.mean(axis=0), atol=1e-4)
    assert dominant_hz(load_audio(path, 2).samples) == pytest.approx(1100, abs=2)


def test_channel_options(tmp_path):
    with pytest.raises(OptionError) as excinfo:
        load_audio(FOX, "right")
    assert_one_line_error(excinfo, str(FOX), "1 channel")
    with pytest.raises(OptionError) as excinfo:
        load_audio(FOX, "centre")
    assert_one_line_error(excinfo, "centre", "mix")
    assert len(load_audio(FOX, "left").samples) == len(load_audio(FOX).samples)


# --------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------


def test_array_at_16k_is_kept_exactly(fox):
    clip = audio_from_array(fox.samples)
    np.testing.assert_array_equal(clip.samples, fox.samples)
    assert clip.source == "array" and clip.original_sample_rate == SAMPLE_RATE and clip.original_channels == 1
    assert clip.sha256 == hashlib.sha256(fox.samples.tobytes()).hexdigest()
    assert audio_from_array(fox.samples.copy(), source="mine").source == "mine"
    assert audio_from_array(fox.samples * 0.5).sha256 != clip.sha256


def test_torch_and_2d_arrays(fox):
    from_torch = audio_from_array(torch.from_numpy(fox.samples.copy()).requires_grad_(False))
    np.testing.assert_array_equal(from_torch.samples, fox.samples)
    left, right = tone(440, 1.0, SAMPLE_RATE), tone(1000, 1.0, SAMPLE_RATE, 0.1)
    stereo = np.stack([left, right])
    for clip in (audio_from_array(stereo), audio_from_array(torch.from_numpy(stereo)), audio_from_array(stereo.T)):
        assert clip.original_channels == 2
        np.testing.assert_allclose(clip.samples, (left + right) / 2, atol=1e-6)
    pcm = (left * 32767).astype(np.int16)
    np.testing.assert_allclose(audio_from_array(pcm).samples, left, atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_array_other_sample_rate(rate):
    clip = audio_from_array(tone(440, 3.0, rate), sample_rate=rate)
    assert clip.original_sample_rate == rate and clip.samples.dtype == np.float32
    assert abs(clip.duration - 3.0) <= 0.010
    assert dominant_hz(clip.samples) == pytest.approx(440, abs=2)
    two_d = audio_from_array(torch.from_numpy(np.stack([tone(440, 3.0, rate)] * 2)), sample_rate=rate)
    np.testing.assert_allclose(two_d.samples, clip.samples, atol=1e-6)


@pytest.mark.parametrize(
    ("array", "error", "mention"),
    [
        (np.array([0.1, np.nan, 0.2], np.float32), AudioError, "NaN"),
        (np.array([0.1, np.inf, 0.2]), AudioError, "NaN or infinite"),
        (torch.tensor([[0.0, float("-inf")], [0.0, 0.0]]), AudioError, "infinite"),
        (np.zeros(0, np.float32), AudioError, "no samples"),
        (np.zeros((2, 2, 2), np.float32), AudioError, "shape"),
        (np.array(["a", "b"]), AudioError, "type"),
    ],
)
def test_bad_arrays(array, error, mention):
    with pytest.raises(error) as excinfo:
        audio_from_array(array, source="my-array")
    assert_one_line_error(excinfo, "my-array", mention)


def test_bad_sample_rate():
    with pytest.raises(OptionError) as excinfo:
        audio_from_array(np.zeros(100, np.float32), sample_rate=0)
    assert_one_line_error(excinfo, "sample rate")


# --------------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------------


def test_long_clip_splits_into_30s_windows():
    samples = np.linspace(-0.5, 0.5, 65 * SAMPLE_RATE, dtype=np.float32)
    clip = audio_from_array(samples)
    windows = split_windows(clip)
    assert [w.index for w in windows] == [0, 1, 2]
    assert [(w.start, w.end) for w in windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert [len(w.samples) for w in windows] == [WINDOW_SAMPLES, WINDOW_SAMPLES, 5 * SAMPLE_RATE]
    np.testing.assert_array_equal(np.concatenate([w.samples for w in windows]), clip.samples)
    assert all(np.shares_memory(w.samples, clip.samples) for w in windows)  # views, not copies


def test_short_and_boundary_clips(fox):
    (only,) = split_windows(fox)
    assert (only.index, only.start, only.end, len(only.samples)) == (0, 0.0, fox.duration, len(fox.samples))
    assert len(split_windows(audio_from_array(np.zeros(WINDOW_SAMPLES, np.float32)))) == 1
    two = split_windows(audio_from_array(np.zeros(WINDOW_SAMPLES + 1, np.float32)))
    assert [len(w.samples) for w in two] == [WINDOW_SAMPLES, 1] and two[1].end == pytest.approx(30 + 1 / SAMPLE_RATE)


# --------------------------------------------------------------------------------------------
# FLAC copies for the trace store
# --------------------------------------------------------------------------------------------


def test_flac_round_trip(fox):
    data = encode_flac(fox.samples)
    assert data[:4] == b"fLaC" and len(data) < fox.samples.nbytes / 2
    back = decode_bytes(data)
    assert back.dtype == np.float32 and back.shape == fox.samples.shape
    np.testing.assert_allclose(back, fox.samples, atol=1e-4)
    resampled = decode_bytes(bytearray(encode_flac(tone(440, 1.0, 8000), 8000)))  # 8 kHz FLAC -> 16 kHz
    assert resampled.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(resampled[16:-16], tone(440, 1.0, SAMPLE_RATE)[16:-16], atol=0.02)  # edges: filter ramp


def test_decode_bytes_errors():
    for data, mention in [(b"", "empty"), (b"definitely not audio" * 10, "not an audio file")]:
        with pytest.raises(AudioError) as excinfo:
            decode_bytes(data)
        assert_one_line_error(excinfo, "audio bytes", mention)
    with pytest.raises(AudioError):
        encode_flac(np.array([0.0, np.nan], np.float32))


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


def test_example_dataset_rows():
    expected = {row["file"]: row for row in json.loads((EXAMPLES / "clips.json").read_text(encoding="utf-8"))}
    assert dataset_size(str(DATASET)) == len(expected) == 3
    clips = list(iter_dataset(str(DATASET)))  # audio column autodetected
    assert len(clips) == 3
    for index, clip in enumerate(clips):
        assert clip.source == f"dataset:{DATASET}[train]#{index}"
        assert clip.samples.dtype == np.float32 and clip.original_sample_rate == SAMPLE_RATE
        assert clip.sha256 == hashlib.sha256(clip.samples.tobytes()).hexdigest()
        match = [row for row in expected.values() if row["text"] == clip.row["transcription"]]
        assert len(match) == 1 and clip.row["language"] == match[0]["language"]
        assert clip.duration == pytest.approx(match[0]["duration"], abs=0.01)
        file_clip = load_audio(EXAMPLES / match[0]["file"])
        np.testing.assert_array_equal(clip.samples, file_clip.samples)


def test_dataset_limit_and_explicit_column():
    assert dataset_size(str(DATASET), limit=2) == 2
    assert len(list(iter_dataset(str(DATASET), limit=2))) == 2
    assert list(iter_dataset(str(DATASET), limit=0)) == []
    assert len(list(iter_dataset(str(DATASET), audio_column="audio", limit=1))) == 1
    with pytest.raises(OptionError):
        iter_dataset(str(DATASET), limit=-1)


def test_parquet_with_embedded_audio_and_path_column(tmp_path):
    features = datasets.Features({"speech": datasets.Audio(), "text": datasets.Value("string")})
    rows = {"speech": [{"bytes": FOX.read_bytes(), "path": "fox.flac"}], "text": ["fox"]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "embedded.parquet"))
    (clip,) = iter_dataset(str(tmp_path / "embedded.parquet"))
    np.testing.assert_array_equal(clip.samples, load_audio(FOX).samples)
    assert clip.row == {"text": "fox"}

    paths = datasets.Dataset.from_dict({"file": [str(FOX)], "text": ["fox"]})
    paths.to_parquet(str(tmp_path / "paths.parquet"))
    (clip,) = iter_dataset(str(tmp_path / "paths.parquet"), audio_column="file")
    assert clip.duration == pytest.approx(load_audio(FOX).duration)


def test_dataset_without_audio_column(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 2]}).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(DatasetError) as excinfo:
        iter_dataset(str(tmp_path / "t.parquet"))
    assert_one_line_error(excinfo, str(tmp_path / "t.parquet"), "text, label", "--audio-column")
    with pytest.raises(DatasetError) as excinfo:
        iter_dataset(str(DATASET), audio_column="speech")
    assert_one_line_error(excinfo, "speech", "audio, transcription, language", "--audio-column")


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        iter_dataset(str(DATASET), split="test")
    assert_one_line_error(excinfo, str(DATASET), "'test'", "train")
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetError) as excinfo:
        iter_dataset(str(missing))
    assert_one_line_error(excinfo, str(missing), "does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        dataset_size(str(tmp_path / "empty"))
    assert_one_line_error(excinfo, str(tmp_path / "empty"))


def test_hub_dataset_unreachable_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError) as excinfo:
        iter_dataset("PolyAI/minds14", config="zh-CN")
    assert_one_line_error(excinfo, "PolyAI/minds14", "Hugging Face Hub")


# --------------------------------------------------------------------------------------------
# file errors
# --------------------------------------------------------------------------------------------


def _truncated(tmp_path, fox, fmt, keep=0.5):
    full = write_audio(tmp_path / f"full.{fmt}", fox.samples, SAMPLE_RATE).read_bytes()
    path = tmp_path / f"truncated.{fmt}"
    path.write_bytes(full[: int(len(full) * keep)])
    return path


def _corrupted(tmp_path, fox, fmt):
    data = bytearray(write_audio(tmp_path / f"full.{fmt}", fox.samples, SAMPLE_RATE).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path = tmp_path / f"corrupt.{fmt}"
    path.write_bytes(bytes(data))
    return path


def _make(tmp_path, fox, case) -> tuple[Path, str]:
    """(path, text the message must contain) for each broken-file case."""
    if case == "missing":
        return tmp_path / "missing.wav", "does not exist"
    if case == "directory":
        (tmp_path / "folder.wav").mkdir()
        return tmp_path / "folder.wav", "directory"
    if case == "empty":
        (tmp_path / "empty.wav").write_bytes(b"")
        return tmp_path / "empty.wav", "empty"
    if case == "zero_samples":
        path = tmp_path / "zero.wav"
        path.write_bytes(AudioEncoder(torch.zeros(1, 0), sample_rate=SAMPLE_RATE).to_tensor("wav").numpy().tobytes())
        return path, "zero audio samples"
    if case == "header_only_wav":
        path = tmp_path / "header.wav"
        path.write_bytes(float_wav(np.zeros(16000))[:44])
        return path, str(path)
    if case == "truncated_wav":  # the header still promises the full length
        path = tmp_path / "cut.wav"
        path.write_bytes(float_wav(fox.samples)[: 44 + 4 * 8000])
        return path, "truncated"
    if case in ("truncated_mp3", "truncated_flac"):
        return _truncated(tmp_path, fox, case.split("_")[1]), "truncated or corrupt"
    if case in ("corrupt_mp3", "corrupt_flac"):
        return _corrupted(tmp_path, fox, case.split("_")[1]), "truncated or corrupt"
    if case == "text_as_wav":
        (tmp_path / "notes.wav").write_text("these are my lecture notes\n" * 20)
        return tmp_path / "notes.wav", "is not an audio file torchcodec/FFmpeg can decode"
    if case == "png_as_wav":
        (tmp_path / "image.wav").write_bytes(tiny_png())
        return tmp_path / "image.wav", "is not an audio file torchcodec/FFmpeg can decode"
    if case == "nan_wav":
        samples = fox.samples.copy()
        samples[100:110] = np.nan
        (tmp_path / "nan.wav").write_bytes(float_wav(samples))
        return tmp_path / "nan.wav", "10 NaN or infinite samples"
    if case == "inf_wav_44k":
        samples = tone(440, 0.5, 44100)
        samples[5] = np.inf
        (tmp_path / "inf.wav").write_bytes(float_wav(samples, 44100))
        return tmp_path / "inf.wav", "NaN or infinite"
    raise AssertionError(case)


ERROR_CASES = [
    "missing", "directory", "empty", "zero_samples", "header_only_wav", "truncated_wav",
    "truncated_mp3", "truncated_flac", "corrupt_mp3", "corrupt_flac", "text_as_wav", "png_as_wav",
    "nan_wav", "inf_wav_44k",
]  # fmt: skip


@pytest.mark.parametrize("case", ERROR_CASES)
def test_broken_files_raise_one_line_audio_errors(tmp_path, fox, case):
    path, mention = _make(tmp_path, fox, case)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path)
    assert_one_line_error(excinfo, str(path), mention)
    error = excinfo.value  # no torchcodec/FFmpeg traceback chained behind it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_relative_path_is_reported_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioError) as excinfo:
        load_audio("nowhere.flac")
    assert_one_line_error(excinfo, str(tmp_path / "nowhere.flac"))
    write_audio(tmp_path / "here.wav", tone(440, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    assert load_audio("here.wav").source == str(tmp_path / "here.wav")


# --------------------------------------------------------------------------------------------
# fuzzing: anything named .wav either loads as a valid clip or raises AudioError
# --------------------------------------------------------------------------------------------

_SMALL_WAV = AudioEncoder(torch.from_numpy(tone(440, 0.1, SAMPLE_RATE))[None], sample_rate=SAMPLE_RATE).to_tensor("wav").numpy().tobytes()


@st.composite
def mangled_wavs(draw) -> bytes:
    data = bytearray(_SMALL_WAV[: draw(st.integers(0, len(_SMALL_WAV)))])
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=4096), mangled_wavs()))
def test_random_bytes_load_or_raise_audio_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"
        path.write_bytes(data)
        try:
            clip = load_audio(path)
        except AudioError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            return
        assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1 and clip.samples.size > 0
        assert np.isfinite(clip.samples).all()
