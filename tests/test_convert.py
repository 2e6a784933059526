"""Conversion of foreign Whisper formats (probe.convert) on the real pip-installed weights.

Exactness is checked tensor by tensor against the CTranslate2 source with this file's own copy of
the mapping table from ENVIRONMENT.md; real decoding is checked on speech synthesized here with
espeak-ng (pip ``espeakng-loader``): English words, Mandarin detection, ``language=zh`` and
``task=translate``.  The embedded conversions use the normal cache (converted once, 1-3 s).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from probe import convert  # noqa: E402
from probe.errors import ModelError  # noqa: E402
from probe.models import EMBEDDED, embedded_model_dir, load_model  # noqa: E402

SAMPLE_RATE = 16000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def base_dir() -> Path:
    return embedded_model_dir("base")


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    return embedded_model_dir("tiny.en")


@pytest.fixture(scope="session")
def base_processor(base_dir):
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def base_loading(base_dir):
    """Plain transformers on the converted directory: (model, loading info)."""
    from transformers import WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(base_dir, output_loading_info=True)
    return model.eval(), info


@pytest.fixture(scope="session")
def base_model(base_loading):
    return base_loading[0]


class _Espeak:
    """espeak-ng through ctypes (pip espeakng-loader bundles the library and its voices)."""

    _SYNCHRONOUS, _CHARS_UTF8, _POS_CHARACTER = 2, 1, 1
    _Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self):
        import espeakng_loader as loader
        self._lib = ctypes.CDLL(loader.get_library_path())
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = self._lib.espeak_Initialize(self._SYNCHRONOUS, 0, loader.get_data_path().encode(), 0)
        self._chunks: list[np.ndarray] = []
        self._callback = self._Callback(self._collect)  # kept alive: the library calls it
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str) -> np.ndarray:
        """[samples] float32 mono at 16 kHz."""
        assert self._lib.espeak_SetVoiceByName(voice.encode()) == 0, voice
        self._chunks.clear()
        data = text.encode()
        assert self._lib.espeak_Synth(data, len(data) + 1, 0, self._POS_CHARACTER, 0, self._CHARS_UTF8, None, None) == 0
        audio = np.concatenate(self._chunks).astype(np.float32) / 32768  # [samples at self.rate]
        # Band-limited resampling to 16 kHz through the spectrum (exact for a finite clip).
        n_out = round(len(audio) * SAMPLE_RATE / self.rate)
        return (np.fft.irfft(np.fft.rfft(audio), n_out) * (n_out / len(audio))).astype(np.float32)


@pytest.fixture(scope="session")
def espeak() -> _Espeak:
    return _Espeak()


@pytest.fixture(scope="session")
def english_features(espeak, base_processor) -> torch.Tensor:
    audio = espeak.say("The quick brown fox jumps over the lazy dog.", "en-us")
    return base_processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


@pytest.fixture(scope="session")
def english_tokens(base_model, english_features) -> torch.Tensor:
    """Plain greedy decoding with language detection: [1, new tokens] (the prompt is not included)."""
    return base_model.generate(english_features)


@pytest.fixture(scope="session")
def mandarin_features(espeak, base_processor) -> torch.Tensor:
    audio = espeak.say("我们明天一起去北京吧。", "cmn")  # "Let's go to Beijing together tomorrow."
    return base_processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


# --------------------------------------------------------------------------- the mapping, independently


def expected_from_ct2(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> dict[str, np.ndarray]:
    """transformers name -> CTranslate2 array, written out from ENVIRONMENT.md's table."""
    def var(name):
        return variables[aliases.get(name, name)]

    expected = {
        "model.encoder.conv1.weight": var("encoder/conv1/weight"),
        "model.encoder.conv1.bias": var("encoder/conv1/bias"),
        "model.encoder.conv2.weight": var("encoder/conv2/weight"),
        "model.encoder.conv2.bias": var("encoder/conv2/bias"),
        "model.encoder.embed_positions.weight": var("encoder/position_encodings/encodings"),
        "model.decoder.embed_positions.weight": var("decoder/position_encodings/encodings"),
        "model.decoder.embed_tokens.weight": var("decoder/embeddings/weight"),
    }
    for side in ("encoder", "decoder"):
        expected[f"model.{side}.layer_norm.weight"] = var(f"{side}/layer_norm/gamma")
        expected[f"model.{side}.layer_norm.bias"] = var(f"{side}/layer_norm/beta")
        layers = {int(m.group(1)) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))}
        for i in layers:
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            qkv_w, qkv_b = var(f"{ct}/self_attention/linear_0/weight"), var(f"{ct}/self_attention/linear_0/bias")
            d = qkv_w.shape[1]
            assert not qkv_b[d:2 * d].any(), "CTranslate2 stores a zero key bias"
            expected |= {
                f"{hf}.self_attn.q_proj.weight": qkv_w[:d], f"{hf}.self_attn.q_proj.bias": qkv_b[:d],
                f"{hf}.self_attn.k_proj.weight": qkv_w[d:2 * d],
                f"{hf}.self_attn.v_proj.weight": qkv_w[2 * d:], f"{hf}.self_attn.v_proj.bias": qkv_b[2 * d:],
                f"{hf}.self_attn.out_proj.weight": var(f"{ct}/self_attention/linear_1/weight"),
                f"{hf}.self_attn.out_proj.bias": var(f"{ct}/self_attention/linear_1/bias"),
                f"{hf}.self_attn_layer_norm.weight": var(f"{ct}/self_attention/layer_norm/gamma"),
                f"{hf}.self_attn_layer_norm.bias": var(f"{ct}/self_attention/layer_norm/beta"),
                f"{hf}.fc1.weight": var(f"{ct}/ffn/linear_0/weight"), f"{hf}.fc1.bias": var(f"{ct}/ffn/linear_0/bias"),
                f"{hf}.fc2.weight": var(f"{ct}/ffn/linear_1/weight"), f"{hf}.fc2.bias": var(f"{ct}/ffn/linear_1/bias"),
                f"{hf}.final_layer_norm.weight": var(f"{ct}/ffn/layer_norm/gamma"),
                f"{hf}.final_layer_norm.bias": var(f"{ct}/ffn/layer_norm/beta"),
            }
            if side == "decoder":
                kv_w, kv_b = var(f"{ct}/attention/linear_1/weight"), var(f"{ct}/attention/linear_1/bias")
                assert not kv_b[:d].any(), "CTranslate2 stores a zero cross-attention key bias"
                expected |= {
                    f"{hf}.encoder_attn.q_proj.weight": var(f"{ct}/attention/linear_0/weight"),
                    f"{hf}.encoder_attn.q_proj.bias": var(f"{ct}/attention/linear_0/bias"),
                    f"{hf}.encoder_attn.k_proj.weight": kv_w[:d],
                    f"{hf}.encoder_attn.v_proj.weight": kv_w[d:], f"{hf}.encoder_attn.v_proj.bias": kv_b[d:],
                    f"{hf}.encoder_attn.out_proj.weight": var(f"{ct}/attention/linear_2/weight"),
                    f"{hf}.encoder_attn.out_proj.bias": var(f"{ct}/attention/linear_2/bias"),
                    f"{hf}.encoder_attn_layer_norm.weight": var(f"{ct}/attention/layer_norm/gamma"),
                    f"{hf}.encoder_attn_layer_norm.bias": var(f"{ct}/attention/layer_norm/beta"),
                }
    return expected


# --------------------------------------------------------------------------- CTranslate2 reader


def test_read_ctranslate2_parses_split_base():
    variables, aliases = convert.read_ctranslate2(EMBEDDED["base"].model_bin_parts())
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)
    assert variables["encoder/conv1/weight"].dtype == np.float16
    assert int(variables["encoder/num_heads"]) == 8
    assert variables["decoder/embeddings/weight"].shape == (51865, 512)


def test_read_ctranslate2_refuses_truncated_and_foreign_files(tmp_path):
    whole = EMBEDDED["tiny.en"].model_bin_parts()[0]
    cut = tmp_path / "model.bin"
    with open(whole, "rb") as src:
        cut.write_bytes(src.read(whole.stat().st_size // 2))
    with pytest.raises(ModelError, match="truncated or not a CTranslate2 model.bin; re-install/re-convert it"):
        convert.read_ctranslate2([cut])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="truncated or not a CTranslate2"):
        convert.read_ctranslate2([garbage])
    parts = EMBEDDED["base"].model_bin_parts()
    with pytest.raises(ModelError, match="truncated or not a CTranslate2"):
        convert.read_ctranslate2(list(reversed(parts)))  # parts in the wrong order


# --------------------------------------------------------------------------- exact weights


@pytest.mark.parametrize("name", ["base", "tiny.en"])
def test_conversion_equals_the_source_tensors(name):
    converted = load_file(embedded_model_dir(name) / "model.safetensors")
    variables, aliases = convert.read_ctranslate2(EMBEDDED[name].model_bin_parts())
    expected = expected_from_ct2(variables, aliases)
    assert set(converted) == set(expected)
    for key, source in expected.items():
        assert converted[key].dtype == torch.float32
        assert torch.equal(converted[key], torch.from_numpy(source.astype(np.float32))), key


def test_output_projection_is_tied_and_nothing_is_missing(base_loading):
    model, info = base_loading
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32


def test_dimensions_are_inferred(base_dir, tiny_en_dir):
    base = json.loads((base_dir / "config.json").read_text())
    assert (base["d_model"], base["encoder_attention_heads"], base["decoder_attention_heads"]) == (512, 8, 8)
    assert (base["encoder_layers"], base["decoder_layers"], base["encoder_ffn_dim"]) == (6, 6, 2048)
    assert (base["num_mel_bins"], base["vocab_size"], base["model_type"]) == (80, 51865, "whisper")
    assert base["whisper_probe"]["source_format"] == "ctranslate2"
    assert Path(base["whisper_probe"]["source"]).is_dir()
    tiny = json.loads((tiny_en_dir / "config.json").read_text())
    assert (tiny["d_model"], tiny["encoder_attention_heads"], tiny["encoder_layers"], tiny["decoder_layers"]) == (384, 6, 4, 4)
    assert tiny["vocab_size"] == 51864


# --------------------------------------------------------------------------- tokenizer and generation config


def test_base_special_token_ids(base_processor):
    tokenizer = base_processor.tokenizer
    ids = dict(zip(
        ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
         "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"],
        tokenizer.convert_tokens_to_ids(
            ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
             "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]),
    ))
    assert ids == {
        "<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259, "<|zh|>": 50260,
        "<|translate|>": 50358, "<|transcribe|>": 50359, "<|startoflm|>": 50360, "<|startofprev|>": 50361,
        "<|nospeech|>": 50362, "<|notimestamps|>": 50363, "<|0.00|>": 50364, "<|30.00|>": 51864,
    }
    assert len(tokenizer) == 51865
    assert tokenizer.all_special_ids[-1] == 50363  # WhisperTokenizer's timestamp base is this + 1
    text = tokenizer.encode(" The quick brown fox.", add_special_tokens=False)
    prompt = [50258, 50259, 50359, 50363, 50364]
    assert tokenizer.decode(prompt + text + [50414, 50257], skip_special_tokens=True) == " The quick brown fox."
    assert tokenizer.decode([50258, 50364, *text, 50414], decode_with_timestamps=True).startswith("<|startoftranscript|><|0.00|> The")


def test_tiny_en_special_token_ids(tiny_en_dir):
    from transformers import WhisperProcessor

    tokenizer = WhisperProcessor.from_pretrained(tiny_en_dir).tokenizer
    assert tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|nocaptions|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]
    ) == [50256, 50257, 50358, 50361, 50362, 50363, 51863]
    assert len(tokenizer) == 51864
    assert tokenizer.decode([50257, 50362, 383, 2068, 50256], skip_special_tokens=True) == " The quick"


def test_base_generation_config(base_model):
    config = base_model.generation_config
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id, config.bos_token_id) == (50258, 50257, 50257, 50257)
    assert config.max_length == 448
    assert config.is_multilingual is True
    assert config.no_timestamps_token_id == 50363 and config.prev_sot_token_id == 50361
    assert config.max_initial_timestamp_index == 50 and config.return_timestamps is False
    assert config.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert len(config.lang_to_id) == 99 and config.lang_to_id["<|en|>"] == 50259 and config.lang_to_id["<|su|>"] == 50357
    assert config.alignment_heads == [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]
    assert config.begin_suppress_tokens == [220, 50257]
    assert len(config.suppress_tokens) == 88 and 50358 in config.suppress_tokens


def test_tiny_en_generation_config_is_english_only(tiny_en_dir):
    config = json.loads((tiny_en_dir / "generation_config.json").read_text())
    assert config["is_multilingual"] is False
    assert "lang_to_id" not in config and "task_to_id" not in config and "task" not in config
    assert (config["decoder_start_token_id"], config["no_timestamps_token_id"], config["eos_token_id"]) == (50257, 50362, 50256)


def test_large_v3_tokenizer_is_base_plus_cantonese():
    spec = json.loads((EMBEDDED["base"].metadata_dir() / "tokenizer.json").read_text())
    tokenizer = convert.whisper_tokenizer(convert.tokenizer_json_with_extra_language(spec, "<|yue|>"))
    assert len(tokenizer) == 51866
    assert tokenizer.convert_tokens_to_ids(
        ["<|su|>", "<|yue|>", "<|translate|>", "<|transcribe|>", "<|notimestamps|>", "<|0.00|>"]
    ) == [50357, 50358, 50359, 50360, 50364, 50365]
    assert convert.language_token_ids(tokenizer)["<|yue|>"] == 50358


# --------------------------------------------------------------------------- real decoding


@pytest.mark.integration
def test_base_transcribes_english(base_processor, english_tokens):
    text = base_processor.batch_decode(english_tokens, skip_special_tokens=True)[0].lower()
    for word in ("quick", "brown", "fox", "lazy", "dog"):
        assert word in text, text


@pytest.mark.integration
def test_load_model_decodes_like_plain_transformers(english_features, english_tokens):
    loaded = load_model(None, device="cpu", dtype="float32")
    assert loaded.model_id == "embedded:base"
    assert torch.equal(loaded.model.generate(english_features), english_tokens)


@pytest.mark.integration
def test_base_detects_and_transcribes_mandarin(base_model, base_processor, mandarin_features):
    with torch.inference_mode():
        encoder_outputs = base_model.model.encoder(mandarin_features)
    detected = base_model.detect_language(encoder_outputs=encoder_outputs)
    assert base_processor.tokenizer.convert_ids_to_tokens(detected.tolist()) == ["<|zh|>"]

    def decode(**options) -> str:
        tokens = base_model.generate(encoder_outputs=encoder_outputs, max_new_tokens=40, **options)
        return base_processor.batch_decode(tokens, skip_special_tokens=True)[0]

    assert re.search(r"[\u4e00-\u9fff]", decode(language="zh")), "no CJK characters"
    translated = decode(task="translate")
    assert re.search(r"[A-Za-z]{3}", translated) and not re.search(r"[\u4e00-\u9fff]", translated), translated


@pytest.mark.integration
def test_tiny_en_transcribes_english(tiny_en_dir, espeak):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir).eval()
    processor = WhisperProcessor.from_pretrained(tiny_en_dir)
    audio = espeak.say("The quick brown fox jumps over the lazy dog.", "en-us")
    features = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    text = processor.batch_decode(model.generate(features), skip_special_tokens=True)[0].lower()
    assert "quick brown fox" in text and "lazy" in text, text


# --------------------------------------------------------------------------- openai-whisper .pt


_HF_TO_OPENAI_PARTS = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_HF_TO_OPENAI_NAMES = {
    "model.encoder.embed_positions.weight": "encoder.positional_embedding",
    "model.decoder.embed_positions.weight": "decoder.positional_embedding",
    "model.decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}
_HF_TO_OPENAI_MODULES = {
    "model.encoder.conv1": "encoder.conv1", "model.encoder.conv2": "encoder.conv2",
    "model.encoder.layer_norm": "encoder.ln_post", "model.decoder.layer_norm": "decoder.ln",
}


def hf_to_openai(name: str) -> str:
    if name in _HF_TO_OPENAI_NAMES:
        return _HF_TO_OPENAI_NAMES[name]
    if m := re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
        side, i, part, kind = m.groups()
        return f"{side}.blocks.{i}.{_HF_TO_OPENAI_PARTS[part]}.{kind}"
    module, kind = name.rsplit(".", 1)
    return f"{_HF_TO_OPENAI_MODULES[module]}.{kind}"


BASE_DIMS = {"n_mels": 80, "n_vocab": 51865, "n_audio_ctx": 1500, "n_audio_state": 512, "n_audio_head": 8,
             "n_audio_layer": 6, "n_text_ctx": 448, "n_text_state": 512, "n_text_head": 8, "n_text_layer": 6}


class NotAWeight:
    """A custom class: pickling it into a checkpoint makes the file carry code references."""


def test_openai_checkpoint_round_trip(base_dir, tmp_path):
    hf_state = load_file(base_dir / "model.safetensors")
    openai_state = {hf_to_openai(name): tensor.half() for name, tensor in hf_state.items()}  # fp16, as shipped
    assert "encoder.blocks.0.attn.key.bias" not in openai_state
    pt_path = tmp_path / "base.pt"
    torch.save({"dims": BASE_DIMS, "model_state_dict": openai_state}, pt_path)

    dest = convert.convert(pt_path, tmp_path / "converted")
    assert convert.detect_format(pt_path) == "openai" and convert.detect_format(dest) == "hf"
    round_tripped = load_file(dest / "model.safetensors")
    assert set(round_tripped) == set(hf_state)
    for name, tensor in hf_state.items():
        assert torch.equal(round_tripped[name], tensor), name
    generation = json.loads((dest / "generation_config.json").read_text())
    original = json.loads((base_dir / "generation_config.json").read_text())
    # Without stored alignment heads: every head of the second half of the decoder layers.
    assert generation["alignment_heads"] == [[layer, head] for layer in (3, 4, 5) for head in range(8)]
    for key in ("lang_to_id", "task_to_id", "suppress_tokens", "begin_suppress_tokens", "no_timestamps_token_id"):
        assert generation[key] == original[key], key
    assert json.loads((dest / "config.json").read_text())["whisper_probe"]["source_format"] == "openai"


def test_openai_checkpoint_with_code_is_refused(tmp_path):
    pt_path = tmp_path / "evil.pt"
    torch.save({"dims": BASE_DIMS, "model_state_dict": {}, "extra": NotAWeight()}, pt_path)
    with pytest.raises(ModelError, match=r"is not a plain Whisper checkpoint \(refusing to unpickle code\)"):
        convert.convert_openai_checkpoint(pt_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_openai_checkpoint_without_whisper_keys_is_refused(tmp_path):
    pt_path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, pt_path)
    with pytest.raises(ModelError, match="needs 'dims' and 'model_state_dict'"):
        convert.convert_openai_checkpoint(pt_path, tmp_path / "out")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="cannot be read as a PyTorch checkpoint"):
        convert.convert_openai_checkpoint(corrupt, tmp_path / "out")


def test_large_v3_shaped_checkpoint_gets_the_cantonese_tokenizer(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims = {"n_mels": 128, "n_vocab": 51866, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 4,
            "n_audio_layer": 2, "n_text_ctx": 448, "n_text_state": 64, "n_text_head": 4, "n_text_layer": 2}
    config = WhisperConfig(vocab_size=51866, num_mel_bins=128, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256)
    random_state = WhisperForConditionalGeneration(config).state_dict()
    openai_state = {hf_to_openai(name): tensor for name, tensor in random_state.items() if name != "proj_out.weight"}
    torch.save({"dims": dims, "model_state_dict": openai_state}, tmp_path / "v3-shaped.pt")

    dest = convert.convert_openai_checkpoint(tmp_path / "v3-shaped.pt", tmp_path / "out")
    generation = json.loads((dest / "generation_config.json").read_text())
    assert generation["task_to_id"] == {"transcribe": 50360, "translate": 50359}
    assert generation["lang_to_id"]["<|yue|>"] == 50358 and len(generation["lang_to_id"]) == 100
    assert generation["no_timestamps_token_id"] == 50364 and generation["decoder_start_token_id"] == 50258
    assert generation["alignment_heads"] == [[1, 0], [1, 1], [1, 2], [1, 3]]
    assert {50359, 50360, 50363} <= set(generation["suppress_tokens"])  # base's special ids, shifted by one
    assert json.loads((dest / "preprocessor_config.json").read_text())["feature_size"] == 128


def test_openai_names_map_onto_transformers():
    assert convert.openai_to_hf_name("decoder.blocks.3.cross_attn.key.weight") == "model.decoder.layers.3.encoder_attn.k_proj.weight"
    assert convert.openai_to_hf_name("encoder.blocks.0.mlp.2.bias") == "model.encoder.layers.0.fc2.bias"
    assert convert.openai_to_hf_name("encoder.ln_post.weight") == "model.encoder.layer_norm.weight"
    assert convert.openai_to_hf_name("encoder.positional_embedding") == "model.encoder.embed_positions.weight"
    assert convert.openai_to_hf_name("decoder.blocks.0.attn.rotary") is None


# --------------------------------------------------------------------------- convert() and detection


def test_convert_detects_formats(tmp_path, tiny_en_dir):
    ct2_dir = EMBEDDED["tiny.en"].metadata_dir()
    assert convert.detect_format(ct2_dir) == "ctranslate2"
    assert convert.detect_format(tiny_en_dir) == "hf"
    assert convert.detect_format(tmp_path) is None

    dest = convert.convert(ct2_dir, tmp_path / "from-ct2")
    assert load_file(dest / "model.safetensors").keys() == load_file(tiny_en_dir / "model.safetensors").keys()
    resaved = convert.convert(dest, tmp_path / "resaved")
    assert torch.equal(
        load_file(resaved / "model.safetensors")["model.decoder.embed_tokens.weight"],
        load_file(dest / "model.safetensors")["model.decoder.embed_tokens.weight"],
    )
    with pytest.raises(ModelError, match="already exists and is not empty"):
        convert.convert(ct2_dir, dest)
    with pytest.raises(ModelError, match="is not a Whisper model this tool knows"):
        convert.convert(tmp_path / "from-ct2" / "config.json", tmp_path / "nope")
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_convert_refuses_non_whisper_hf_directory(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="holds a bert model, not Whisper"):
        convert.convert(tmp_path / "bert", tmp_path / "out")


def test_ctranslate2_directory_without_tokenizer_is_refused(tmp_path):
    source = EMBEDDED["tiny.en"].metadata_dir()
    incomplete = tmp_path / "ct2"
    incomplete.mkdir()
    shutil.copy(source / "config.json", incomplete / "config.json")
    (incomplete / "model.bin").symlink_to(source / "model.bin")
    with pytest.raises(ModelError, match="has no tokenizer.json"):
        convert.convert_ctranslate2(incomplete, tmp_path / "out")
