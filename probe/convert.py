"""Converting Whisper checkpoints from other formats into a normal Hugging Face directory.

This module owns every foreign weight format the toolkit accepts: CTranslate2 / faster-whisper
directories (``model.bin`` + ``config.json`` + ``tokenizer.json``, possibly with ``model.bin``
split into parts), openai-whisper ``.pt`` checkpoints, and Hugging Face directories (re-saved as
they are).  A conversion writes ``model.safetensors`` (float32: every source value is kept
exactly, and the directory loads like a hub checkpoint), ``config.json`` (with a ``whisper_probe``
key naming the source), ``generation_config.json`` (everything ``generate()`` needs for
``language=``, ``task=``, timestamps and beam search), the tokenizer with all Whisper special
tokens registered, and ``preprocessor_config.json``.  Output is staged beside the destination and
renamed into place, so a failed conversion leaves nothing behind.  The formats are described in
``ENVIRONMENT.md``; nothing here unpickles code.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from probe.constants import N_TIMESTAMP_TOKENS, TIMESTAMP_SECONDS
from probe.embedded import EMBEDDED, ct2_model_files
from probe.errors import ModelError
from probe.quiet import quiet_transformers

CT2_BINARY_VERSION = 6
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_MAX_RANK = 8
# openai-whisper's vocabulary sizes: English-only, multilingual, and large-v3's (adds <|yue|>).
ENGLISH_VOCAB, MULTILINGUAL_VOCAB, V3_VOCAB = 51864, 51865, 51866
TIMESTAMP_COUNT = N_TIMESTAMP_TOKENS  # <|0.00|> ... <|30.00|> in 0.02 s steps
MAX_TARGET_POSITIONS = 448
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper's max_initial_timestamp of 1.0 s
Format = Literal["hf", "ctranslate2", "openai"]


# --------------------------------------------------------------------------- CTranslate2 reader


class _Truncated(Exception):
    """The byte stream ended (or made no sense) before the model.bin structure did."""


class _PartsReader:
    """Reads the concatenation of ``paths`` as one stream, opening one part at a time."""

    def __init__(self, paths: list[Path]):
        self._pending = list(paths)
        self._file = None

    def __enter__(self) -> _PartsReader:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def _next_file(self) -> bool:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._pending:
            return False
        self._file = open(self._pending.pop(0), "rb")
        return True

    def read(self, n: int) -> memoryview:
        buffer = bytearray(n)
        view = memoryview(buffer)
        filled = 0
        while filled < n:
            got = self._file.readinto(view[filled:]) if self._file is not None else 0
            if got:
                filled += got
            elif not self._next_file():
                raise _Truncated(f"needed {n} bytes, got {filled}")
        return memoryview(buffer)

    def at_end(self) -> bool:
        while self._file is None or self._file.peek(1) == b"":
            if not self._next_file():
                return True
        return False

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def string(self) -> str:
        length = self.u16()  # counts the trailing NUL
        raw = bytes(self.read(length))
        if length == 0 or raw[-1] != 0:
            raise _Truncated("string without its NUL terminator")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Truncated("string is not UTF-8") from exc


def _read_ct2_variable(reader: _PartsReader) -> tuple[str, np.ndarray]:
    name = reader.string()
    rank = reader.u8()
    if rank > _MAX_RANK:
        raise _Truncated(f"rank {rank} for {name}")
    shape = tuple(reader.u32() for _ in range(rank))
    dtype_id = reader.u8()
    nbytes = reader.u32()
    if dtype_id not in _CT2_DTYPES:
        raise _Truncated(f"dtype id {dtype_id} for {name}")
    dtype = _CT2_DTYPES[dtype_id]
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise _Truncated(f"{name} has {nbytes} bytes for shape {shape}")
    raw = reader.read(nbytes)
    if dtype == "bfloat16":  # numpy has no bfloat16: widen exactly by putting the bits on top
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return name, bits.view(np.float32).reshape(shape)
    return name, np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def read_ctranslate2(model_bin_paths: list[Path]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin`` (given as its parts, in order) into variables and aliases.

    Returns ``(variables, aliases)``: variable name -> array (scalars are 0-d arrays; bfloat16 is
    widened exactly to float32) and alias name -> target variable name.
    """
    paths = [Path(p) for p in model_bin_paths]
    if not paths:
        raise ModelError("no model.bin parts were given; pass the model.bin file(s)")
    shown = " + ".join(str(p) for p in paths)
    broken = f"{shown} is truncated or not a CTranslate2 model.bin; re-install/re-convert it"
    for path in paths:
        if not path.is_file():
            raise ModelError(f"{path} does not exist; re-install/re-convert the model")
    try:
        with _PartsReader(paths) as reader:
            version = reader.u32()
            if version != CT2_BINARY_VERSION:
                if 1 <= version < CT2_BINARY_VERSION:
                    raise ModelError(
                        f"{shown} is CTranslate2 binary version {version}, but only version "
                        f"{CT2_BINARY_VERSION} is supported; re-convert it with a recent ctranslate2"
                    )
                raise ModelError(broken)
            spec = reader.string()
            if spec != "WhisperSpec":
                raise ModelError(f"{shown} holds a CTranslate2 {spec!r} model, not Whisper; use a Whisper model")
            reader.u32()  # spec revision
            variables = dict(_read_ct2_variable(reader) for _ in range(reader.u32()))
            aliases = {}
            for _ in range(reader.u32()):
                alias = reader.string()
                aliases[alias] = reader.string()
            if not reader.at_end():
                raise _Truncated("unexpected bytes after the aliases")
    except (_Truncated, struct.error) as exc:
        raise ModelError(broken) from exc
    return variables, aliases


# --------------------------------------------------------------------------- shared model parts


@dataclass(frozen=True)
class WhisperDims:
    """The sizes that define a Whisper architecture."""

    n_mels: int
    vocab_size: int
    d_model: int
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    ffn_dim: int
    max_source_positions: int
    max_target_positions: int

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= MULTILINGUAL_VOCAB


def default_alignment_heads(decoder_layers: int, decoder_heads: int) -> list[list[int]]:
    """openai-whisper's fallback: every head of the second half of the decoder layers."""
    return [[layer, head] for layer in range(decoder_layers // 2, decoder_layers) for head in range(decoder_heads)]


def whisper_model_config(dims: WhisperDims, tokenizer, provenance: dict | None = None):
    """A ``WhisperConfig`` for ``dims`` whose special-token ids come from ``tokenizer``."""
    from transformers import WhisperConfig

    ids = special_token_ids(tokenizer)
    extra = {"whisper_probe": provenance} if provenance else {}
    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_layers=dims.decoder_layers,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.ffn_dim,
        decoder_ffn_dim=dims.ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        begin_suppress_tokens=[220, ids["eot"]],
        tie_word_embeddings=True,
        dtype="float32",
        **extra,
    )


# --------------------------------------------------------------------------- tokenizer


_REQUIRED_SPECIALS = {
    "eot": ("<|endoftext|>",),
    "sot": ("<|startoftranscript|>",),
    "translate": ("<|translate|>",),
    "transcribe": ("<|transcribe|>",),
    "sot_lm": ("<|startoflm|>",),
    "sot_prev": ("<|startofprev|>",),
    "no_speech": ("<|nospeech|>", "<|nocaptions|>"),
    "no_timestamps": ("<|notimestamps|>",),
}


def _token_id(tokenizer, token: str) -> int | None:
    """The id of ``token``, or None when the vocabulary lacks it (no fallback to the unknown token)."""
    return tokenizer.backend_tokenizer.token_to_id(token)


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of Whisper's named special tokens (``eot``, ``sot``, ``translate``, ``transcribe``,
    ``sot_lm``, ``sot_prev``, ``no_speech``, ``no_timestamps``, ``timestamp_begin``), looked up in
    ``tokenizer``; a tokenizer missing any of them raises :class:`ModelError`."""
    ids = {}
    for key, spellings in _REQUIRED_SPECIALS.items():
        found = [index for index in (_token_id(tokenizer, s) for s in spellings) if index is not None]
        if not found:
            raise ModelError(f"the tokenizer has no {spellings[0]} token; it is not a Whisper tokenizer")
        ids[key] = found[0]
    timestamp_begin = _token_id(tokenizer, "<|0.00|>")
    ids["timestamp_begin"] = ids["no_timestamps"] + 1 if timestamp_begin is None else timestamp_begin
    return ids


def language_token_ids(tokenizer) -> dict[str, int]:
    """``{"<|en|>": 50259, ...}``: the tokens between ``<|startoftranscript|>`` and ``<|translate|>``."""
    ids = special_token_ids(tokenizer)
    indices = list(range(ids["sot"] + 1, ids["translate"]))
    return dict(zip(tokenizer.convert_ids_to_tokens(indices), indices))


def _timestamp_token(index: int) -> str:
    return f"<|{index * TIMESTAMP_SECONDS:.2f}|>"


def whisper_tokenizer(tokenizer_json: Path | dict):
    """A ``WhisperTokenizer`` from a ``tokenizer.json`` file (or its parsed dict) with every Whisper
    special token registered and the 1501 timestamp tokens present right after ``<|notimestamps|>``."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    try:
        if isinstance(tokenizer_json, dict):
            backend = Tokenizer.from_str(json.dumps(tokenizer_json))
        else:
            backend = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises a bare Exception for missing or malformed files
        raise ModelError(f"{tokenizer_json} is not a valid tokenizer.json ({first_line(exc)}); re-install/re-convert it") from exc
    # Sorted by id, <|notimestamps|> comes last: WhisperTokenizer puts timestamps right after it.
    specials = [token.content for _, token in sorted(backend.get_added_tokens_decoder().items()) if token.special]
    tokenizer = WhisperTokenizer(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = special_token_ids(tokenizer)
    if _token_id(tokenizer, "<|0.00|>") is None:
        if len(tokenizer) != ids["no_timestamps"] + 1:
            raise ModelError(
                f"{tokenizer_json} has tokens after <|notimestamps|> but no timestamp tokens; re-install/re-convert it"
            )
        tokenizer.add_tokens(
            [AddedToken(_timestamp_token(i), lstrip=False, rstrip=False, normalized=False, special=False)
             for i in range(TIMESTAMP_COUNT)]
        )
    if _token_id(tokenizer, "<|0.00|>") != ids["no_timestamps"] + 1:
        raise ModelError(f"{tokenizer_json} does not place <|0.00|> right after <|notimestamps|>; it is not a Whisper tokenizer")
    return tokenizer


def tokenizer_json_with_extra_language(spec: dict, language_token: str) -> dict:
    """A copy of a multilingual ``tokenizer.json`` dict with ``language_token`` added after the
    last language and every later added token shifted by one id (how large-v3 added ``<|yue|>``)."""
    spec = json.loads(json.dumps(spec))
    translate_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == "<|translate|>")
    new_token = dict(next(t for t in spec["added_tokens"] if t["content"] == "<|startoftranscript|>"))
    new_token.update(id=translate_id, content=language_token)
    for token in spec["added_tokens"]:
        if token["id"] >= translate_id:
            token["id"] += 1
    spec["added_tokens"].append(new_token)
    spec["added_tokens"].sort(key=lambda token: token["id"])
    for special in ((spec.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [i + 1 if i >= translate_id else i for i in special["ids"]]
    return spec


# --------------------------------------------------------------------------- generation config


def whisper_generation_config(
    tokenizer,
    *,
    is_multilingual: bool,
    alignment_heads: list[list[int]],
    suppress_tokens: list[int],
    begin_suppress_tokens: list[int],
):
    """The ``GenerationConfig`` Whisper's ``generate()`` needs, with every id looked up in ``tokenizer``.

    Multilingual models default to ``task="transcribe"`` so that the forced prompt always holds a
    task token (``<|startoftranscript|><|xx|><|transcribe|><|notimestamps|>``), also when the
    language is detected; ``generate(task=..., language=...)`` overrides both per call.
    """
    from transformers import GenerationConfig

    ids = special_token_ids(tokenizer)
    settings = dict(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=MAX_TARGET_POSITIONS,
        suppress_tokens=[int(i) for i in suppress_tokens],
        begin_suppress_tokens=[int(i) for i in begin_suppress_tokens],
        alignment_heads=[[int(layer), int(head)] for layer, head in alignment_heads],
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["sot_prev"],
        is_multilingual=is_multilingual,
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
    )
    if is_multilingual:
        settings.update(
            lang_to_id=language_token_ids(tokenizer),
            task_to_id={"transcribe": ids["transcribe"], "translate": ids["translate"]},
            task="transcribe",
        )
    return GenerationConfig(**settings)


def _remap_token_ids(ids: Iterable[int], source_tokenizer, target_tokenizer) -> list[int]:
    """The same tokens' ids in another tokenizer (they differ only where large-v3 shifted them)."""
    tokens = source_tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [int(i) for i in target_tokenizer.convert_tokens_to_ids(tokens)]


# --------------------------------------------------------------------------- writing a directory


def _check_state_dict(state_dict: dict[str, torch.Tensor], config, source: str) -> None:
    """Every parameter of the transformers model is present with the right shape, nothing extra."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    expected.pop("proj_out.weight")  # tied to model.decoder.embed_tokens.weight
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected tensor {extra[0]}"
        raise ModelError(f"{source} {what} ({len(missing)} missing, {len(extra)} unexpected); it is not a complete Whisper model")
    for name, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}; "
                "the checkpoint is inconsistent"
            )


def _staging_dir(dest_dir: Path) -> Path:
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise ModelError(f"{dest_dir} already exists and is not empty; choose a new destination or remove it")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".partial", dir=dest_dir.parent))


def _normal_permissions(directory: Path) -> None:
    """Temporary files are private (0600/0700); give the result the permissions of normal output."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _publish(staging: Path, dest_dir: Path) -> Path:
    """Move a finished staging directory into place (rename is atomic on one filesystem)."""
    _normal_permissions(staging)
    try:
        if dest_dir.is_dir():
            dest_dir.rmdir()  # empty, checked in _staging_dir; fails if someone filled it meanwhile
        os.rename(staging, dest_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelError(f"{dest_dir} appeared while converting; choose a new destination or remove it") from exc
    return dest_dir.resolve()


def _write_hf_dir(dest_dir: Path, state_dict: dict[str, torch.Tensor], config, generation_config, tokenizer, source: str) -> Path:
    """Write a loadable transformers Whisper directory, atomically."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    _check_state_dict(state_dict, config, source)
    staging = _staging_dir(Path(dest_dir))
    try:
        tensors = {name: tensor.to(torch.float32).contiguous() for name, tensor in state_dict.items()}
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(staging)
        feature_extractor.save_pretrained(staging)  # preprocessor_config.json, for tools that read only that
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, Path(dest_dir))


# --------------------------------------------------------------------------- CTranslate2 -> HF


class _VariableTable:
    """CTranslate2 variables looked up through aliases, remembering which ones were used."""

    def __init__(self, variables: dict[str, np.ndarray], aliases: dict[str, str]):
        self._variables = variables
        self._aliases = aliases
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return self._aliases.get(name, name) in self._variables

    def take(self, name: str) -> np.ndarray:
        target = self._aliases.get(name, name)
        if target not in self._variables:
            raise ModelError(f"the CTranslate2 model has no {name}; it is not a complete Whisper model")
        self.used.add(target)
        return self._variables[target]

    def scalar(self, name: str, default: int | None = None) -> int | None:
        return int(self.take(name)) if name in self else default

    def unused_tensors(self) -> list[str]:
        return sorted(n for n, v in self._variables.items() if v.ndim > 0 and n not in self.used)


def _layer_count(variables: Iterable[str], side: str) -> int:
    """Layers counted from ``{side}/layer_N/`` names (``decoder/layer_norm`` is not a layer)."""
    indices = {int(m.group(1)) for name in variables if (m := re.match(rf"{side}/layer_(\d+)/", name))}
    if indices != set(range(len(indices))):
        raise ModelError(f"the CTranslate2 model's {side} layers are not numbered 0..N-1; it is corrupt")
    return len(indices)


def _ct2_dims(table: _VariableTable, names: Iterable[str]) -> WhisperDims:
    conv1 = table.take("encoder/conv1/weight")  # [D, n_mels, 3]
    d_model = conv1.shape[0]
    return WhisperDims(
        n_mels=conv1.shape[1],
        vocab_size=table.take("decoder/embeddings/weight").shape[0],  # [vocab, D]
        d_model=d_model,
        encoder_layers=_layer_count(names, "encoder"),
        encoder_heads=table.scalar("encoder/num_heads", d_model // 64),  # Whisper's head size is 64
        decoder_layers=_layer_count(names, "decoder"),
        decoder_heads=table.scalar("decoder/num_heads", d_model // 64),
        ffn_dim=table.take("encoder/layer_0/ffn/linear_0/weight").shape[0],  # [F, D]
        max_source_positions=table.take("encoder/position_encodings/encodings").shape[0],  # [1500, D]
        max_target_positions=table.take("decoder/position_encodings/encodings").shape[0],  # [448, D]
    )


def _ct2_state_dict(table: _VariableTable, dims: WhisperDims) -> dict[str, torch.Tensor]:
    """Map CTranslate2 variables onto transformers parameter names (``ENVIRONMENT.md`` has the table)."""
    state: dict[str, np.ndarray] = {}

    def linear(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"] = table.take(f"{ct2}/weight")  # [out, in]
        state[f"{hf}.bias"] = table.take(f"{ct2}/bias")  # [out]

    def layer_norm(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"] = table.take(f"{ct2}/gamma")
        state[f"{hf}.bias"] = table.take(f"{ct2}/beta")

    def fused(hf_attn: str, projections: list[str], ct2: str) -> None:
        # CTranslate2 stacks projections row-wise: [len(projections) * D, D].
        weights = np.split(table.take(f"{ct2}/weight"), len(projections))
        biases = np.split(table.take(f"{ct2}/bias"), len(projections))
        for projection, weight, bias in zip(projections, weights, biases):
            state[f"{hf_attn}.{projection}.weight"] = weight
            if projection != "k_proj":  # key projections have no bias; CTranslate2 stores zeros there
                state[f"{hf_attn}.{projection}.bias"] = bias

    for side in ("encoder", "decoder"):
        layers = dims.encoder_layers if side == "encoder" else dims.decoder_layers
        for i in range(layers):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{hf}.self_attn", ["q_proj", "k_proj", "v_proj"], f"{ct2}/self_attention/linear_0")
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                fused(f"{hf}.encoder_attn", ["k_proj", "v_proj"], f"{ct2}/attention/linear_1")
                linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
                layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            layer_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        layer_norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")  # [D, n_mels, 3]
    linear("model.encoder.conv2", "encoder/conv2")  # [D, D, 3]
    state["model.encoder.embed_positions.weight"] = table.take("encoder/position_encodings/encodings")
    state["model.decoder.embed_positions.weight"] = table.take("decoder/position_encodings/encodings")
    state["model.decoder.embed_tokens.weight"] = table.take("decoder/embeddings/weight")  # [vocab, D]
    table.take("decoder/projection/weight")  # the output projection: tied to the embeddings
    return {name: torch.from_numpy(np.array(array, dtype=np.float32)) for name, array in state.items()}


def _check_ct2_is_plain_whisper(table: _VariableTable, variables: dict[str, np.ndarray], shown: str) -> None:
    if any(name.endswith("weight_scale") for name in variables):
        raise ModelError(f"{shown} is a quantized (int8) CTranslate2 model; convert from a float16/float32 one")
    if table.scalar("decoder/activation", 3) != 3 or table.scalar("decoder/pre_norm", 1) != 1:
        raise ModelError(f"{shown} is not a pre-norm GELU transformer, so it is not a Whisper model")


def convert_ctranslate2(src_dir: Path, dest_dir: Path, model_bin_parts: list[Path] | None = None) -> Path:
    """Convert a CTranslate2 / faster-whisper directory into a transformers directory at ``dest_dir``.

    ``src_dir`` holds ``config.json`` and ``tokenizer.json`` (and ``model.bin`` unless
    ``model_bin_parts`` lists the pieces of a split one, in order).  Returns the resolved destination.
    """
    src_dir = Path(src_dir).resolve()
    parts = [Path(p) for p in model_bin_parts] if model_bin_parts else ct2_model_files(src_dir)
    for needed in ("config.json", "tokenizer.json"):
        if not (src_dir / needed).is_file():
            raise ModelError(f"{src_dir} has no {needed}; a CTranslate2 Whisper directory needs model.bin, config.json and tokenizer.json")
    if not parts:
        raise ModelError(f"{src_dir} has no model.bin; a CTranslate2 Whisper directory needs model.bin, config.json and tokenizer.json")
    shown = str(parts[0]) if len(parts) == 1 else f"{parts[0]} (+{len(parts) - 1} parts)"

    variables, aliases = read_ctranslate2(parts)
    table = _VariableTable(variables, aliases)
    _check_ct2_is_plain_whisper(table, variables, shown)
    dims = _ct2_dims(table, variables)
    state_dict = _ct2_state_dict(table, dims)
    if leftovers := table.unused_tensors():
        raise ModelError(f"{shown} has tensors this converter does not know (e.g. {leftovers[0]}); it is not a plain Whisper model")

    ct2_config = _read_json(src_dir / "config.json")
    tokenizer = whisper_tokenizer(src_dir / "tokenizer.json")
    _check_vocab(tokenizer, dims.vocab_size, src_dir / "tokenizer.json")
    generation_config = whisper_generation_config(
        tokenizer,
        is_multilingual=dims.is_multilingual,
        alignment_heads=ct2_config.get("alignment_heads") or default_alignment_heads(dims.decoder_layers, dims.decoder_heads),
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, special_token_ids(tokenizer)["eot"]]),
    )
    provenance = {"source": str(src_dir), "source_format": "ctranslate2", "source_dtype": _source_dtype(variables)}
    config = whisper_model_config(dims, tokenizer, provenance)
    return _write_hf_dir(dest_dir, state_dict, config, generation_config, tokenizer, shown)


def _source_dtype(variables: dict[str, np.ndarray]) -> str:
    return str(variables["encoder/conv1/weight"].dtype)


def _check_vocab(tokenizer, vocab_size: int, where: Path | str) -> None:
    if len(tokenizer) != vocab_size:
        raise ModelError(
            f"{where} has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}; "
            "the tokenizer does not belong to these weights"
        )


# --------------------------------------------------------------------------- openai-whisper .pt -> HF


_OPENAI_DIMS = ("n_mels", "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
                "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")
# Parts of a residual block: openai-whisper name -> transformers name.
_OPENAI_BLOCK_PARTS = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_OPENAI_MODULES = {
    "encoder.conv1": "model.encoder.conv1",
    "encoder.conv2": "model.encoder.conv2",
    "encoder.ln_post": "model.encoder.layer_norm",
    "decoder.token_embedding": "model.decoder.embed_tokens",
    "decoder.ln": "model.decoder.layer_norm",
}
_OPENAI_TENSORS = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",  # [1500, D]
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",  # [448, D]
}
_OPENAI_IGNORED = {"decoder.mask", "alignment_heads"}  # causal mask buffer; heads are read separately


def openai_to_hf_name(name: str) -> str | None:
    """The transformers parameter name for an openai-whisper state-dict name (None if unknown)."""
    if name in _OPENAI_TENSORS:
        return _OPENAI_TENSORS[name]
    if m := re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)", name):
        side, index, part, kind = m.groups()
        return f"model.{side}.layers.{index}.{_OPENAI_BLOCK_PARTS[part]}.{kind}" if part in _OPENAI_BLOCK_PARTS else None
    module, _, kind = name.rpartition(".")
    return f"{_OPENAI_MODULES[module]}.{kind}" if module in _OPENAI_MODULES and kind in ("weight", "bias") else None


def _load_openai_checkpoint(pt_path: Path) -> tuple[dict, dict]:
    """``(dims, model_state_dict)`` from a ``.pt`` file, without ever unpickling code."""
    if not pt_path.is_file():
        raise ModelError(f"{pt_path} does not exist; pass an openai-whisper .pt checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols it then refuses anyway
            checkpoint = torch.load(pt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{pt_path} is not a plain Whisper checkpoint (refusing to unpickle code)") from exc
    except Exception as exc:  # on garbage the weights-only unpickler raises KeyError, IndexError, ...
        raise ModelError(f"{pt_path} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {first_line(exc)}); "
                         "it is truncated or not a .pt file, re-download it") from exc
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= set(checkpoint):
        raise ModelError(f"{pt_path} is not an openai-whisper checkpoint (it needs 'dims' and 'model_state_dict')")
    dims, state = checkpoint["dims"], checkpoint["model_state_dict"]
    if not isinstance(dims, dict) or not set(_OPENAI_DIMS) <= set(dims) or not isinstance(state, dict):
        raise ModelError(f"{pt_path} has incomplete 'dims' or 'model_state_dict'; it is not an openai-whisper checkpoint")
    return dims, state


def _openai_alignment_heads(state: dict, dims: WhisperDims) -> list[list[int]]:
    heads = state.get("alignment_heads")
    if isinstance(heads, torch.Tensor) and tuple(heads.shape) == (dims.decoder_layers, dims.decoder_heads):
        dense = heads.to_dense() if heads.is_sparse else heads
        return [[int(layer), int(head)] for layer, head in dense.bool().nonzero().tolist()]
    return default_alignment_heads(dims.decoder_layers, dims.decoder_heads)


def _donor_tokenizer_dir(vocab_size: int) -> Path:
    """The embedded model whose tokenizer matches ``vocab_size`` (large-v3's is derived from base's)."""
    name = {ENGLISH_VOCAB: "tiny.en", MULTILINGUAL_VOCAB: "base", V3_VOCAB: "base"}.get(vocab_size)
    if name is None:
        raise ModelError(
            f"no known Whisper tokenizer has {vocab_size} tokens; pass tokenizer_dir= with this model's tokenizer"
        )
    return EMBEDDED[name].metadata_dir()


def _donor_suppression(tokenizer_dir: Path) -> tuple[list[int], list[int]]:
    """(suppress_tokens, begin_suppress_tokens) from a CTranslate2 config.json or an HF generation_config.json."""
    generation = tokenizer_dir / "generation_config.json"
    if generation.is_file():
        settings = _read_json(generation)
        return settings.get("suppress_tokens") or [], settings.get("begin_suppress_tokens") or []
    ct2 = tokenizer_dir / "config.json"
    settings = _read_json(ct2) if ct2.is_file() else {}
    if "suppress_ids" not in settings:
        raise ModelError(f"{tokenizer_dir} has no suppress-token settings (generation_config.json or a CTranslate2 config.json)")
    return settings["suppress_ids"], settings.get("suppress_ids_begin") or []


def convert_openai_checkpoint(pt_path: Path, dest_dir: Path, tokenizer_dir: Path | None = None) -> Path:
    """Convert an openai-whisper ``.pt`` checkpoint into a transformers directory at ``dest_dir``.

    The tokenizer (and suppress-token lists) come from ``tokenizer_dir`` (a CTranslate2 or
    transformers directory with a ``tokenizer.json``) or, by default, from the embedded model with
    the same vocabulary; large-v3's 51866-token vocabulary is base's plus ``<|yue|>``.
    """
    pt_path = Path(pt_path).resolve()
    raw_dims, raw_state = _load_openai_checkpoint(pt_path)
    dims = WhisperDims(
        n_mels=int(raw_dims["n_mels"]),
        vocab_size=int(raw_dims["n_vocab"]),
        d_model=int(raw_dims["n_audio_state"]),
        encoder_layers=int(raw_dims["n_audio_layer"]),
        encoder_heads=int(raw_dims["n_audio_head"]),
        decoder_layers=int(raw_dims["n_text_layer"]),
        decoder_heads=int(raw_dims["n_text_head"]),
        ffn_dim=4 * int(raw_dims["n_audio_state"]),  # openai-whisper's MLP is always 4 x d_model
        max_source_positions=int(raw_dims["n_audio_ctx"]),
        max_target_positions=int(raw_dims["n_text_ctx"]),
    )
    if dims.d_model != int(raw_dims["n_text_state"]):
        raise ModelError(f"{pt_path} has different encoder and decoder widths; transformers' Whisper cannot hold it")

    state_dict = {}
    for name, tensor in raw_state.items():
        if name in _OPENAI_IGNORED:
            continue
        hf_name = openai_to_hf_name(name)
        if hf_name is None or not isinstance(tensor, torch.Tensor):
            raise ModelError(f"{pt_path} has a tensor this converter does not know ({name}); it is not a plain Whisper checkpoint")
        state_dict[hf_name] = tensor

    explicit = tokenizer_dir is not None
    donor_dir = Path(tokenizer_dir).resolve() if explicit else _donor_tokenizer_dir(dims.vocab_size)
    if not (donor_dir / "tokenizer.json").is_file():
        raise ModelError(f"{donor_dir} has no tokenizer.json; pass a directory holding this model's tokenizer")
    donor_spec = _read_json(donor_dir / "tokenizer.json")
    donor = whisper_tokenizer(donor_spec)
    tokenizer = donor
    if not explicit and dims.vocab_size == V3_VOCAB:
        tokenizer = whisper_tokenizer(tokenizer_json_with_extra_language(donor_spec, "<|yue|>"))
    _check_vocab(tokenizer, dims.vocab_size, donor_dir / "tokenizer.json")
    suppress, begin_suppress = _donor_suppression(donor_dir)
    generation_config = whisper_generation_config(
        tokenizer,
        is_multilingual=dims.is_multilingual,
        alignment_heads=_openai_alignment_heads(raw_state, dims),
        suppress_tokens=_remap_token_ids(suppress, donor, tokenizer),
        begin_suppress_tokens=_remap_token_ids(begin_suppress, donor, tokenizer),
    )
    source_dtype = str(raw_state.get("encoder.conv1.weight", torch.empty(0)).dtype).removeprefix("torch.")
    provenance = {"source": str(pt_path), "source_format": "openai", "source_dtype": source_dtype}
    config = whisper_model_config(dims, tokenizer, provenance)
    return _write_hf_dir(dest_dir, state_dict, config, generation_config, tokenizer, str(pt_path))


# --------------------------------------------------------------------------- HF -> HF and detection


def read_hf_config(src_dir: Path) -> dict:
    """A transformers ``config.json``, checked to describe a Whisper model."""
    config = _read_json(Path(src_dir) / "config.json")
    model_type = config.get("model_type")
    if model_type != "whisper":
        raise ModelError(f"{src_dir} holds a {model_type or 'untyped'} model, not Whisper; pass a Whisper model")
    return config


def convert_hf(src_dir: Path, dest_dir: Path) -> Path:
    """Re-save a transformers Whisper directory (weights, configs, tokenizer, feature extractor)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    src_dir = Path(src_dir).resolve()
    read_hf_config(src_dir)
    try:
        with quiet_transformers():
            model = WhisperForConditionalGeneration.from_pretrained(src_dir, dtype="auto")
            processor = WhisperProcessor.from_pretrained(src_dir)
    except Exception as exc:  # transformers, safetensors, torch and tokenizers each raise their own types
        raise ModelError(f"{src_dir} cannot be loaded as a Whisper model ({first_line(exc)}); re-download it") from exc
    staging = _staging_dir(Path(dest_dir))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, Path(dest_dir))


def detect_format(path: Path | str) -> Format | None:
    """``"hf"``, ``"ctranslate2"`` or ``"openai"`` for what ``path`` looks like, else None."""
    path = Path(path)
    if path.is_file():
        return "openai" if path.suffix in (".pt", ".pth") else None
    if not (path / "config.json").is_file():
        return None
    if ct2_model_files(path) and (path / "tokenizer.json").is_file():
        return "ctranslate2"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "hf" if isinstance(config, dict) and "model_type" in config else None


def convert(src: Path | str, dest: Path | str) -> Path:
    """Convert whatever Whisper checkpoint ``src`` is into a transformers directory at ``dest``."""
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise ModelError(f"{src} does not exist; pass a Whisper directory or .pt file")
    fmt = detect_format(src)
    if fmt == "ctranslate2":
        return convert_ctranslate2(src, dest)
    if fmt == "openai":
        return convert_openai_checkpoint(src, dest)
    if fmt == "hf":
        return convert_hf(src, dest)
    raise ModelError(
        f"{src} is not a Whisper model this tool knows; pass a transformers directory (config.json + "
        "model.safetensors), a CTranslate2 directory (model.bin + config.json + tokenizer.json) or a .pt file"
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} does not exist; the model directory is incomplete") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON ({first_line(exc)}); re-install/re-convert the model") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path} does not hold a JSON object; re-install/re-convert the model")
    return value


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, short enough to quote in a one-line error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
