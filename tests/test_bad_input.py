"""Bad input: every user mistake is one clear line, a non-zero exit and nothing half-written.

Each case drives the real command line and checks what a user sees: exit code 2 (130 for
Ctrl-C), stderr exactly one line ``probe: error: ...`` that says what is wrong, no traceback, and
the store byte-for-byte as it was (no trace, no ``.tmp`` leftovers).  A representative subset runs
``python -m probe`` in a subprocess (the real exit code and stderr, warnings and logging
included); the rest call :func:`probe.cli.main` in-process, which is much faster.

In-process runs use the tiny random model saved as a transformers directory and passed with
``--model DIR``, as a user would; the load of each model spec is cached for the module so that
only the first run pays for it (and so every run can be checked to leave no hook behind).
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probe
import probe.models
import probe.store
from probe.audio import AudioClip, load_audio
from probe.cli import main
from probe.errors import AudioError, StoreError
from probe.hooks import hooks_left
from tests.conftest import EXAMPLES, HOOK_BODIES, ROOT, store_snapshot

RATE = 16000
_LOADED: dict[tuple, object] = {}  # load_model(spec, ...) results, reused across this module


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine, OpenMP threads spinning against each other
    make tiny-model decoding many times slower (torch.isin alone: 14 s instead of 0.14 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def reuse_loaded_models(monkeypatch):
    real = probe.models.load_model

    def load(spec=None, device="auto", dtype="auto", attn_implementation=None):
        key = (str(spec), str(device), str(dtype), attn_implementation)
        if key not in _LOADED:
            _LOADED[key] = real(spec, device=device, dtype=dtype, attn_implementation=attn_implementation)
        return _LOADED[key]

    monkeypatch.setattr(probe.models, "load_model", load)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny random Whisper saved as a transformers directory (loads in about a second)."""
    from probe.models import tiny_random_model

    directory = tmp_path_factory.mktemp("models") / "tiny"
    tiny = tiny_random_model()
    tiny.model.save_pretrained(directory)
    tiny.processor.save_pretrained(directory)
    return directory


@pytest.fixture
def seeded(store):
    """A store that already holds one trace, so 'unchanged' means more than 'still empty'."""
    with store.writer(name="earlier") as writer:
        writer.add_json("earlier.value", {"a": 1}, plugin="earlier")
        writer.update_manifest(transcript="an earlier trace")
    return store


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``probe ARGV`` in-process: (exit code, stdout, stderr).  Warnings go to stderr as they
    would in a terminal (DeprecationWarning hidden, as Python hides it by default)."""
    capsys.readouterr()  # only what this command prints
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.showwarning = _warning_to_stderr
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_tiny(capsys, tiny_dir, store, *args) -> tuple[int, str, str]:
    """``probe run ARGS`` with the tiny model, on the CPU, two tokens per window."""
    return cli(capsys, "run", *args, "--model", tiny_dir, "--device", "cpu", "--store", store.path,
               "--max-new-tokens", "2")


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}


def probe_subprocess(*argv, timeout=180, **env) -> tuple[int, str, str]:
    """``python -m probe ARGV`` in a fresh process: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "probe", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env=_env(**env), timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(code, err: str, phrase: str, exit_code: int = 2, prefix: str = "probe: error:") -> None:
    """One line on stderr, starting with ``prefix`` and saying ``phrase``; no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(prefix), lines[0]
    assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    assert code == exit_code, (code, err)


def assert_untouched(store, before: list[str]) -> None:
    """The store is as it was, and no model this module loaded kept a hook."""
    assert store_snapshot(store.path) == before
    assert all(hooks_left(loaded.model) == 0 for loaded in _LOADED.values())


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """16-bit PCM wav; ``samples`` float in [-1, 1], shaped [n] or [n, channels]."""
    samples = np.asarray(samples, dtype=np.float64)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tone(seconds: float = 2.0, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * hz * t)


def _png() -> bytes:
    """A real 8×8 PNG image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([255, 0, 0] * 8) for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _flipped(data: bytes, start: int, every: int) -> bytes:
    damaged = bytearray(data)
    for i in range(start, len(damaged), every):
        damaged[i] ^= 0xFF
    return bytes(damaged)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    """Every audio file the cases use, good and bad, by name."""
    from torchcodec.encoders import AudioEncoder

    folder = tmp_path_factory.mktemp("audio")
    fox = load_audio(EXAMPLES / "en_fox.flac").samples
    encoder = AudioEncoder(torch.from_numpy(fox)[None], sample_rate=RATE)
    encoder.to_file(str(folder / "fox.mp3"))
    encoder.to_file(str(folder / "fox.flac"))
    write_wav(folder / "fox.wav", fox)
    rng = np.random.default_rng(0)
    files = {
        "tone": write_wav(folder / "tone.wav", tone()),
        "silence": write_wav(folder / "silence.wav", np.zeros(2 * RATE)),
        "noise": write_wav(folder / "noise.wav", 0.3 * rng.standard_normal(2 * RATE).clip(-3, 3) / 3),
        "8k": write_wav(folder / "8k.wav", tone(rate=8000), rate=8000),
        "48k": write_wav(folder / "48k.wav", tone(rate=48000), rate=48000),
        "stereo": write_wav(folder / "stereo.wav",
                            np.stack([tone(), 0.3 * rng.uniform(-1, 1, 2 * RATE)], axis=1)),
        "long": write_wav(folder / "long.wav", tone(seconds=65)),
        "zero-length": write_wav(folder / "zero.wav", np.zeros(0)),
    }
    bad = {
        "empty": b"",
        "text": b"hello, this is a text file and not audio at all\n" * 20,
        "png": _png(),
        "half-wav": (folder / "fox.wav").read_bytes()[: (folder / "fox.wav").stat().st_size // 2],
        "half-flac": (folder / "fox.flac").read_bytes()[: (folder / "fox.flac").stat().st_size // 2],
        "half-mp3": (folder / "fox.mp3").read_bytes()[: (folder / "fox.mp3").stat().st_size // 2],
        "flipped-flac": _flipped((folder / "fox.flac").read_bytes(), 200, 97),
        "flipped-mp3": _flipped((folder / "fox.mp3").read_bytes(), 400, 37),
        "flipped-wav-header": b"JUNK" + (folder / "fox.wav").read_bytes()[4:],
    }
    suffix = {"half-flac": ".flac", "flipped-flac": ".flac", "half-mp3": ".mp3", "flipped-mp3": ".mp3"}
    for name, data in bad.items():
        files[name] = folder / f"{name}{suffix.get(name, '.wav')}"
        files[name].write_bytes(data)
    files["directory"] = folder
    files["missing"] = folder / "no-such-file.wav"
    return files


# --------------------------------------------------------------------------- audio


BAD_AUDIO = {
    "missing": "does not exist; check the path",
    "directory": "is a directory, not an audio file",
    "empty": "is empty (0 bytes)",
    "zero-length": "decodes to zero audio samples",
    "half-wav": "is truncated or corrupt",
    "half-flac": "is truncated or corrupt",
    "half-mp3": "is truncated or corrupt",
    "flipped-flac": "is truncated or corrupt",
    "flipped-mp3": "is truncated or corrupt",
    "flipped-wav-header": "is not an audio file torchcodec/FFmpeg can decode",
    "text": "is not an audio file torchcodec/FFmpeg can decode",
    "png": "contains no audio stream",
}


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_bad_audio_file(capsys, tiny_dir, seeded, audio, name):
    before = store_snapshot(seeded.path)
    code, out, err = run_tiny(capsys, tiny_dir, seeded, audio[name])
    assert_user_error(code, err, BAD_AUDIO[name])
    assert out == ""
    assert_untouched(seeded, before)


def test_missing_audio_is_reported_before_the_model_loads(capsys, store, audio, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded for an input that does not exist")

    monkeypatch.setattr(probe.models, "load_model", never)
    code, _, err = cli(capsys, "run", audio["tone"], audio["missing"], "--store", store.path)
    assert_user_error(code, err, "no-such-file.wav does not exist")


def test_bad_audio_in_a_subprocess(tmp_path, tiny_dir, audio):
    """The real exit code and stderr of a fresh process (imports, logging, warnings and all)."""
    code, out, err = probe_subprocess("run", audio["text"], "--model", tiny_dir, "--store", tmp_path / "store")
    assert_user_error(code, err, "is not an audio file")
    assert store_snapshot(tmp_path / "store") == []


@pytest.mark.parametrize("name", ["silence", "noise"])
def test_silence_and_noise_are_traced(capsys, tiny_dir, store, audio, name):
    code, out, err = run_tiny(capsys, tiny_dir, store, audio[name])
    assert code == 0, err
    assert "no-speech: p=" in out
    trace = store.list()[0]
    no_speech = store.open(trace.id).manifest["no_speech_probability"]
    assert isinstance(no_speech, float) and 0.0 <= no_speech <= 1.0


@pytest.mark.parametrize("name, rate", [("8k", 8000), ("48k", 48000)])
def test_other_sample_rates_are_resampled(capsys, tiny_dir, store, audio, name, rate):
    code, _, err = run_tiny(capsys, tiny_dir, store, audio[name])
    assert code == 0, err
    trace = store.open(store.list()[0].id)
    assert trace.manifest["audio"]["original_sample_rate"] == rate
    assert trace.manifest["audio"]["duration"] == pytest.approx(2.0, abs=0.01)
    samples, sample_rate = trace.audio()
    assert sample_rate == RATE and abs(len(samples) - 2 * RATE) <= 20


def test_stereo_channels_give_different_traces(capsys, tiny_dir, store, audio):
    ids = {}
    for channel in ("left", "right"):
        code, _, err = run_tiny(capsys, tiny_dir, store, audio["stereo"], "--channel", channel, "--name", channel)
        assert code == 0, err
        ids[channel] = store.resolve(channel).id
    left, right = (store.open(ids[c]) for c in ("left", "right"))
    left_samples, right_samples = left.audio()[0], right.audio()[0]
    expected = tone()
    assert np.corrcoef(left_samples[:len(expected)], expected[:len(left_samples)])[0, 1] > 0.99
    assert abs(np.corrcoef(right_samples[:len(expected)], expected[:len(right_samples)])[0, 1]) < 0.1
    # The manifest must tell them apart too: the dashboard pairs traces "of the same audio" by
    # manifest["audio"]["sha256"], and the left channel is not the same audio as the right one.
    left_audio, right_audio = left.manifest["audio"], right.manifest["audio"]
    assert (left_audio.get("channel"), right_audio.get("channel")) == ("left", "right") \
        or left_audio["sha256"] != right_audio["sha256"], \
        "manifest['audio'] does not say which channel was traced (both hold the file's sha256)"


def test_a_channel_the_file_lacks(capsys, tiny_dir, seeded, audio):
    before = store_snapshot(seeded.path)
    code, _, err = run_tiny(capsys, tiny_dir, seeded, audio["stereo"], "--channel", "2")
    assert_user_error(code, err, "has 2 channel(s), so channel 2 does not exist")
    assert_untouched(seeded, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_arrays_are_refused(tiny_dir, seeded, bad):
    before = store_snapshot(seeded.path)
    with pytest.raises(AudioError, match="16000 NaN or infinite samples") as err:
        probe.run(np.array([bad] * RATE), model=probe.models.load_model(tiny_dir, device="cpu"), store=seeded)
    assert "\n" not in str(err.value)
    with pytest.raises(AudioError, match="1 NaN or infinite samples"):
        probe.run(torch.cat([torch.zeros(RATE), torch.tensor([bad])]), model=probe.models.load_model(tiny_dir, device="cpu"),
                  store=seeded)
    assert_untouched(seeded, before)


def test_long_audio_is_traced_in_30_second_windows(capsys, tiny_dir, store, audio):
    code, out, err = run_tiny(capsys, tiny_dir, store, audio["long"], "--json", "--max-new-tokens", "1")
    assert code == 0, err
    result = json.loads(out)
    assert [(w["start"], w["end"]) for w in result["windows"]] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    trace = store.open(result["trace"])
    assert [w["index"] for w in trace.manifest["windows"]] == [0, 1, 2]
    assert trace.manifest["audio"]["duration"] == pytest.approx(65.0)


_FUZZ_PREFIXES = [b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"ID3\x03\x00\x00\x00", b"OggS\x00\x02",
                  b"\xff\xfb\x90\x64", b"\x1aE\xdf\xa3"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(_FUZZ_PREFIXES), body=st.binary(min_size=0, max_size=4096))
def test_audio_loader_on_random_bytes(prefix, body):
    """Whatever the bytes, load_audio returns a usable clip or raises AudioError — nothing else."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"
        path.write_bytes(prefix + body)
        try:
            clip = load_audio(path)
        except AudioError as err:
            assert "\n" not in str(err)
            return
    assert isinstance(clip, AudioClip) and clip.samples.dtype == np.float32 and clip.samples.size > 0
    assert np.isfinite(clip.samples).all()


# --------------------------------------------------------------------------- models


class _Exploit:
    """Unpickling this creates the marker file: proof that something ran code from a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _bad_model(kind: str, folder: Path, tiny_dir: Path) -> Path:
    """A model directory or file that is wrong in the way ``kind`` says."""
    path = folder / kind
    if kind == "empty-dir":
        path.mkdir()
    elif kind == "config-only":
        path.mkdir()
        shutil.copy(tiny_dir / "config.json", path)
    elif kind == "corrupt-safetensors":
        shutil.copytree(tiny_dir, path)
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16)
        BertModel(config).save_pretrained(path)
    elif kind == "ctranslate2-truncated":
        source = probe.models.EMBEDDED["tiny.en"].metadata_dir()
        path.mkdir()
        for file in source.iterdir():
            if file.is_file() and file.name != "model.bin":
                shutil.copy(file, path)
        whole = source / "model.bin"
        with open(whole, "rb") as handle:
            (path / "model.bin").write_bytes(handle.read(whole.stat().st_size // 2))
    elif kind == "not-whisper.pt":
        torch.save({"state_dict": {"weight": torch.zeros(3)}}, path)
    elif kind == "garbage.pt":
        path.write_bytes(b"this is not a checkpoint " * 10)
    elif kind == "code.pt":  # zip checkpoint whose pickle would run code
        torch.save({"dims": _Exploit(folder / "PWNED"), "model_state_dict": {}}, path)
    elif kind == "legacy-code.pt":  # a bare pickle (torch's legacy format) that would run code
        path.write_bytes(pickle.dumps(_Exploit(folder / "PWNED")))
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


BAD_MODELS = {
    "empty-dir": "is empty; pass a Whisper directory",
    "config-only": "has config.json but no weights",
    "corrupt-safetensors": "cannot be loaded as a Whisper model",
    "bert": "holds a bert model, not Whisper",
    "ctranslate2-truncated": "is truncated or not a CTranslate2 model.bin",
    "not-whisper.pt": "is not an openai-whisper checkpoint",
    "garbage.pt": "cannot be read as a PyTorch checkpoint",
    "code.pt": "refusing to unpickle code",
    "legacy-code.pt": "refusing to unpickle code",
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_bad_model(capsys, tmp_path, tiny_dir, seeded, audio, monkeypatch, kind):
    cache = tmp_path / "cache"
    monkeypatch.setenv("WHISPER_PROBE_CACHE", str(cache))
    model = _bad_model(kind, tmp_path, tiny_dir)
    before = store_snapshot(seeded.path)
    code, _, err = cli(capsys, "run", audio["tone"], "--model", model, "--device", "cpu", "--store", seeded.path)
    assert_user_error(code, err, BAD_MODELS[kind])
    assert_untouched(seeded, before)
    assert not (tmp_path / "PWNED").exists()
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no half conversion in the cache


@pytest.mark.parametrize("kind", ["corrupt-safetensors", "ctranslate2-truncated", "garbage.pt", "code.pt"])
def test_convert_refuses_bad_models_and_writes_nothing(capsys, tmp_path, tiny_dir, kind):
    model = _bad_model(kind, tmp_path, tiny_dir)
    code, out, err = cli(capsys, "convert", model, tmp_path / "out")
    assert_user_error(code, err, BAD_MODELS[kind])
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_unknown_model_name(capsys, seeded, audio):
    code, _, err = cli(capsys, "run", audio["tone"], "--model", "whisper-hyper", "--store", seeded.path)
    assert_user_error(code, err, "model 'whisper-hyper' is neither an existing path, an embedded model")


def test_bad_model_in_a_subprocess(tmp_path, audio):
    marker = tmp_path / "PWNED"
    model = _bad_model("legacy-code.pt", tmp_path, Path())
    code, _, err = probe_subprocess("run", audio["tone"], "--model", model, "--store", tmp_path / "store",
                                    WHISPER_PROBE_CACHE=str(tmp_path / "cache"))
    assert_user_error(code, err, "refusing to unpickle code")  # and no torch warning on stderr
    assert not marker.exists() and store_snapshot(tmp_path / "store") == []


# --------------------------------------------------------------------------- options


BAD_OPTIONS = {
    "point typo": (["--points", "encoder.blocks.*.hook_resid_psot"],
                   "did you mean encoder.blocks.{i}.hook_resid_post"),
    "point nonsense": (["--points", "nothing.here"], "names look like"),
    "unknown plugin": (["-p", "nosuchplugin"], "unknown plugin 'nosuchplugin'"),
    "disable unknown plugin": (["-p", "no:nosuch"], "cannot disable unknown plugin(s) nosuch"),
    "language": (["--language", "xx"], "unknown language 'xx'; use an ISO code"),
    "task": (["--task", "summarize"], "unknown task 'summarize'; use --task transcribe or --task translate"),
    "num-beams 0": (["--num-beams", "0"], "--num-beams must be a whole number ≥ 1"),
    "batch-size 0": (["--batch-size", "0"], "--batch-size must be ≥ 1"),
    "channel": (["--channel", "middle"], "unknown channel 'middle'"),
    "device": (["--device", "tpu"], "unknown device 'tpu'"),
    "dtype": (["--dtype", "int4"], "unknown dtype 'int4'"),
    "top-k negative": (["--top-k", "-1"], "--top-k must be between 0 and the vocabulary size"),
    "top-k past the vocabulary": (["--top-k", "100000"], "--top-k must be between 0 and the vocabulary size"),
    "max-new-tokens 0": (["--max-new-tokens", "0"], "--max-new-tokens: must be a whole number ≥ 1"),
    "max-new-tokens past the context": (["--max-new-tokens", "1000"], "--max-new-tokens"),
    "num-beams not a number": (["--num-beams", "three"], "argument --num-beams: invalid int value: 'three'"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option(capsys, tiny_dir, seeded, audio, case):
    args, phrase = BAD_OPTIONS[case]
    before = store_snapshot(seeded.path)
    # The case's options come last, so they win over run_tiny's --max-new-tokens 2.
    code, out, err = cli(capsys, "run", audio["tone"], "--model", tiny_dir, "--device", "cpu",
                         "--store", seeded.path, "--max-new-tokens", "2", *args)
    assert_user_error(code, err, phrase)
    assert_untouched(seeded, before)


@pytest.mark.parametrize("args, phrase", [
    (["--task", "translate"], "is English-only and cannot translate; use a multilingual model"),
    (["--language", "de"], "is English-only; drop --language"),
])
def test_english_only_model_refuses_other_languages(capsys, seeded, audio, args, phrase):
    before = store_snapshot(seeded.path)
    code, _, err = cli(capsys, "run", audio["tone"], "--model", "tiny.en", "--device", "cpu",
                       "--store", seeded.path, *args)
    assert_user_error(code, err, phrase)
    assert_untouched(seeded, before)


@pytest.mark.parametrize("argv, phrase", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "x.wav", "--bogus"], "unrecognized arguments: --bogus"),
    (["export", "x", "--format", "docx"], "invalid choice: 'docx'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_command_lines_are_one_line(capsys, argv, phrase):
    code, _, err = cli(capsys, *argv)
    assert_user_error(code, err, phrase)
    assert "--help" in err


def test_bad_option_in_a_subprocess(tmp_path, audio):
    code, _, err = probe_subprocess("run", audio["tone"], "--num-beams", "lots", "--store", tmp_path / "store")
    assert_user_error(code, err, "invalid int value: 'lots'")


# --------------------------------------------------------------------------- plugins


def _plugin(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text("import time\n\nfrom probe import hookimpl\n\n@hookimpl\n" + body + "\n")
    return path


@pytest.mark.parametrize("hook", sorted(HOOK_BODIES))
def test_plugin_that_raises(capsys, tmp_path, tiny_dir, seeded, audio, hook):
    plugin = _plugin(tmp_path, "faulty", HOOK_BODIES[hook])
    before = store_snapshot(seeded.path)
    code, _, err = run_tiny(capsys, tiny_dir, seeded, audio["tone"], "-p", plugin)
    assert_user_error(code, err, f"plugin 'faulty' raised in {hook}")
    assert "ValueError: bad" in err and "-p no:faulty" in err
    assert_untouched(seeded, before)


WRONG_TYPES = {
    "probe_decode_points": ("def probe_decode_points(run):\n    return 42", "returned int"),
    "probe_replay_points": ("def probe_replay_points(run):\n    return 'decoder.hook_embed'", "returned str"),
    "probe_estimate": ("def probe_estimate(run):\n    return ['a lot']", "returned list"),
}


@pytest.mark.parametrize("hook", sorted(WRONG_TYPES))
def test_plugin_returning_the_wrong_type(capsys, tmp_path, tiny_dir, seeded, audio, hook):
    body, phrase = WRONG_TYPES[hook]
    plugin = _plugin(tmp_path, "wrongtype", body)
    before = store_snapshot(seeded.path)
    code, _, err = run_tiny(capsys, tiny_dir, seeded, audio["tone"], "-p", plugin)
    assert_user_error(code, err, f"plugin 'wrongtype' {phrase} from {hook}")
    assert_untouched(seeded, before)


def test_slow_plugin_still_finishes(capsys, tmp_path, tiny_dir, store, audio):
    plugin = _plugin(tmp_path, "sluggish", "def probe_decode_points(run):\n    return ['encoder.hook_conv2']\n\n"
                                           "@hookimpl\ndef probe_capture(run, point, tensor, ctx):\n"
                                           "    time.sleep(0.3)")
    code, out, err = run_tiny(capsys, tiny_dir, store, audio["tone"], "-p", plugin, "--json")
    assert code == 0, err
    trace = store.open(json.loads(out)["trace"])
    assert trace.manifest["plugins"]["sluggish"] == "unknown"
    # The 0.3 s shows up only inside the encode timing; which plugin spent it is not reported.
    assert trace.manifest["timings"]["encode"] >= 0.3


def test_plugin_that_raises_in_a_subprocess(tmp_path, audio):
    plugin = _plugin(tmp_path, "faulty", HOOK_BODIES["probe_window_end"])
    store = tmp_path / "store"
    code, _, err = probe_subprocess("run", audio["tone"], "--model", "tiny.en", "-p", plugin, "--store", store,
                                    "--max-new-tokens", "2")
    assert_user_error(code, err, "plugin 'faulty' raised in probe_window_end")
    assert store_snapshot(store) == []


# --------------------------------------------------------------------------- store


@pytest.fixture(scope="module")
def two_traces(tmp_path_factory, tiny):
    """A store with two small real traces (all built-in plugins), copied by each test."""
    store = probe.Store(tmp_path_factory.mktemp("traces") / "store")
    with torch.inference_mode():
        for name in ("first", "second"):
            probe.run(tone().astype(np.float32), model=tiny, store=store, name=name, max_new_tokens=2)
    return store.path


@pytest.fixture
def traces(two_traces, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(two_traces, path)
    store = probe.Store(path)
    return store, store.resolve("first"), store.resolve("second")


def _damage(trace, how: str) -> None:
    if how == "missing tensor file":
        (trace.path / trace.records["cross_attention.weights"]["file"]).unlink()
    elif how == "corrupt manifest":
        (trace.path / "manifest.json").write_text('{"schema_version": 1, "records": ')
    elif how == "future schema":
        manifest = json.loads((trace.path / "manifest.json").read_text())
        (trace.path / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    elif how == "oversized manifest":
        manifest = json.loads((trace.path / "manifest.json").read_text())
        padding = "x" * (probe.store.MAX_MANIFEST_BYTES + 1)
        (trace.path / "manifest.json").write_text(json.dumps({**manifest, "padding": padding}))


DAMAGE = {
    "missing tensor file": "is missing its record cross_attention.weights file",
    "corrupt manifest": "is corrupt (manifest.json is not valid JSON",
    "future schema": "was written by a newer whisper-probe (schema 99 > 1); upgrade whisper-probe",
    "oversized manifest": "is corrupt (manifest.json is larger than 16 MB)",
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_broken_trace_show_ls_and_rm(capsys, traces, how):
    store, first, second = traces
    _damage(first, how)
    code, out, err = cli(capsys, "show", first.id, "--store", store.path)
    assert_user_error(code, err, DAMAGE[how])
    assert out == ""

    code, out, err = cli(capsys, "ls", "--store", store.path)
    assert code == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {first.id, second.id}
    assert "BROKEN: " in lines[first.id] and DAMAGE[how] in lines[first.id]
    assert "BROKEN" not in lines[second.id]

    code, out, err = cli(capsys, "rm", first.id, "--store", store.path)
    assert code == 0, err
    assert [info.id for info in store.list()] == [second.id]


def test_broken_trace_show_in_a_subprocess(traces):
    store, first, _ = traces
    _damage(first, "corrupt manifest")
    code, _, err = probe_subprocess("show", first.id, "--store", store.path)
    assert_user_error(code, err, "is corrupt")


@pytest.mark.parametrize("content", [b"this is not a safetensors file",
                                     struct.pack("<Q", 2**62) + b"{}",  # a header length far past the file
                                     pickle.dumps(_Exploit(Path(tempfile.gettempdir()) / "whisper-probe-never-unpickled"))])
def test_tensor_file_that_is_not_safetensors(capsys, traces, tmp_path, content):
    store, first, _ = traces
    (first.path / first.records["activations.encoder.hook_conv2"]["file"]).write_bytes(content)
    with pytest.raises(StoreError, match="record activations.encoder.hook_conv2 of trace .* is corrupt"):
        first.record("activations.encoder.hook_conv2")
    out_dir = tmp_path / "figures"
    code, _, err = cli(capsys, "export", first.id, "--store", store.path, "--format", "png",
                       "--views", "conv_stem", "--out", out_dir)
    assert_user_error(code, err, "record activations.encoder.hook_conv2 of trace")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    assert not (Path(tempfile.gettempdir()) / "whisper-probe-never-unpickled").exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["tensor", "audio"])
def test_disk_full_during_a_run(capsys, tiny_dir, seeded, audio, monkeypatch, target):
    where = {"tensor": (probe.store.writer, "save_file"), "audio": (Path, "write_bytes")}[target]
    before = store_snapshot(seeded.path)
    run_tiny(capsys, tiny_dir, seeded, audio["tone"], "--no-store")  # load the model before the disk "fills"
    monkeypatch.setattr(*where, _disk_full)
    code, _, err = run_tiny(capsys, tiny_dir, seeded, audio["tone"])
    monkeypatch.undo()
    assert_user_error(code, err, "could not write trace to")
    assert "No space left on device; free space or use --store elsewhere" in err
    assert_untouched(seeded, before)


def test_concurrent_runs_into_one_store(tmp_path, tiny_dir, audio):
    store = tmp_path / "store"
    command = [sys.executable, "-m", "probe", "run", str(audio["tone"]), "--model", str(tiny_dir),
               "--device", "cpu", "--store", str(store), "--max-new-tokens", "2", "--json"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=_env()) for _ in range(2)]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in results]
    ids = [json.loads(out)["trace"] for out, _ in results]
    assert len(set(ids)) == 2
    listed = probe.Store(store).list()
    assert sorted(info.id for info in listed) == sorted(ids) and all(info.error is None for info in listed)
    assert not (store / ".tmp").exists()


STALL_PLUGIN = """
import os, pathlib, time
from probe import hookimpl

MARKER = pathlib.Path(os.environ["STALL_MARKER"])
PHASE = os.environ["STALL_PHASE"]

@hookimpl
def probe_decode_points(run):
    return ["encoder.hook_conv2"]

@hookimpl
def probe_capture(run, point, tensor, ctx):
    if PHASE == "capture":
        MARKER.touch()
        time.sleep(120)

@hookimpl
def probe_run_end(run, writer):
    writer.add_json("stall.partial", {"written": True}, plugin="stall")
    if PHASE == "run_end":
        MARKER.touch()
        time.sleep(120)
"""


@pytest.mark.parametrize("phase", ["capture", "run_end"])
def test_ctrl_c_during_a_run(tmp_path, tiny_dir, audio, phase):
    """SIGINT while decoding, or while the trace is half written: exit 130, one line, no trace."""
    plugin = tmp_path / "stall.py"
    plugin.write_text(STALL_PLUGIN)
    marker, store = tmp_path / "stalled", tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "probe", "run", str(audio["long"]), "--model", str(tiny_dir), "--device", "cpu",
         "--store", str(store), "--max-new-tokens", "2", "-p", str(plugin)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=_env(STALL_MARKER=str(marker), STALL_PHASE=phase),
        # a suite started in the background (`cmd &`) ignores SIGINT, and children inherit that:
        # give the child the default, so Python turns Ctrl-C into KeyboardInterrupt as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=10)
        if phase == "run_end":
            assert any((store / ".tmp").rglob("stall.partial*"))  # the half-written trace exists now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_user_error(proc.returncode, err, "nothing was written", exit_code=130, prefix="probe: interrupted")
    assert store_snapshot(store) == []


@pytest.mark.parametrize("hook", ["probe_capture", "probe_run_end"])
def test_keyboard_interrupt_inside_a_plugin(capsys, tmp_path, tiny_dir, seeded, audio, hook):
    body = {"probe_capture": "def probe_decode_points(run):\n    return ['decoder.hook_embed']\n\n@hookimpl\n"
                             "def probe_capture(run, point, tensor, ctx):\n    raise KeyboardInterrupt",
            "probe_run_end": "def probe_run_end(run, writer):\n    writer.add_json('ctrlc.x', {}, plugin='ctrlc')\n"
                             "    raise KeyboardInterrupt"}[hook]
    plugin = _plugin(tmp_path, "ctrlc", body)
    before = store_snapshot(seeded.path)
    code, _, err = run_tiny(capsys, tiny_dir, seeded, audio["tone"], "-p", plugin)
    assert_user_error(code, err, "nothing was written", exit_code=130, prefix="probe: interrupted")
    assert _LOADED and all(hooks_left(loaded.model) == 0 for loaded in _LOADED.values())
    assert_untouched(seeded, before)


# --------------------------------------------------------------------------- faults


def test_reading_while_another_trace_is_written(store):
    with store.writer(name="done") as writer:
        writer.add_tensor("x", np.arange(10), plugin="p")
        writer.add_json("j", {"a": 1}, plugin="p")
    done = writer.id
    started, failures = threading.Event(), []

    def write_slowly():
        try:
            with store.writer(name="slow") as slow:
                for i in range(25):
                    slow.add_tensor(f"t{i}", np.full(1000, i), plugin="p")
                    started.set()
                    time.sleep(0.01)
                slow.update_manifest(transcript="slow one")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)
            started.set()

    thread = threading.Thread(target=write_slowly)
    thread.start()
    assert started.wait(10)
    reads = 0
    while thread.is_alive() or reads == 0:
        for info in store.list():
            assert info.error is None
            trace = store.open(info.id)  # whatever is listed is complete: every record reads
            for name in trace.records:
                trace.record(name)
        assert store.open(done).tensor("x").tolist() == list(range(10))
        reads += 1
    thread.join()
    assert failures == []
    assert sorted(info.transcript for info in store.list()) == ["", "slow one"]
    assert not (store.path / ".tmp").exists()


# --------------------------------------------------------------------------- untrusted files


def _modules(*names: str) -> list[Path]:
    """``probe/<name>.py``, or every module of the package ``probe/<name>/``."""
    files = []
    for name in names:
        package = ROOT / "probe" / name
        files += sorted(package.rglob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
    return files


LOAD_PATH = _modules("store", "export", "models", "convert") + sorted((ROOT / "dashboards").rglob("*.py"))
_PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
_HARMLESS_PICKLE_NAMES = {"UnpicklingError", "PicklingError"}  # exception classes, for `except`


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str) -> list[str]:
    """Calls that could run code from a file: unpickling, torch.load without weights_only=True,
    allow_pickle=True, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and ((node.module or "").split(".")[0] in _PICKLE_MODULES or (
                node.module == "torch" and any(alias.name == "load" for alias in node.names))):
            found.append(f"{where}: from {node.module} import ...")
        if isinstance(node, ast.Attribute) and _dotted(node.value) in _PICKLE_MODULES \
                and node.attr not in _HARMLESS_PICKLE_NAMES:
            found.append(f"{where}: {_dotted(node)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {kw.arg: kw.value for kw in node.keywords}
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(f"{where}: {name}(")
        if name.endswith(("read_pickle", "yaml.load", "yaml.unsafe_load")):
            found.append(f"{where}: {name}(")
        if name == "torch.load" and not _is_true(keywords.get("weights_only")):
            found.append(f"{where}: {name}( without weights_only=True")
        if "allow_pickle" in keywords and not (isinstance(keywords["allow_pickle"], ast.Constant)
                                               and keywords["allow_pickle"].value is False):
            found.append(f"{where}: allow_pickle=...")
    return found


def test_unsafe_load_scanner_finds_what_it_looks_for():
    sample = textwrap.dedent("""
        import pickle, torch, numpy as np
        pickle.loads(data)
        torch.load(path)
        torch.load(path, weights_only=False)
        np.load(path, allow_pickle=True)
        eval(text)
        exec(text)
        from dill import loads
        from torch import load
        torch.load(path, map_location="cpu", weights_only=True)
        try:
            pass
        except pickle.UnpicklingError:
            pass
    """)
    assert len(unsafe_loads(sample)) == 8


@pytest.mark.parametrize("path", LOAD_PATH, ids=lambda p: str(p.relative_to(ROOT)))
def test_load_path_never_runs_code_from_files(path):
    assert unsafe_loads(path.read_text(encoding="utf-8")) == []
