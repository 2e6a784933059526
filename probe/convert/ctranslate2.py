"""CTranslate2 / faster-whisper directories to transformers: mapping variables onto parameters.

A CTranslate2 Whisper directory holds ``model.bin`` (possibly split into parts), ``config.json``
(alignment heads, suppressed tokens) and ``tokenizer.json``.  This module owns checking that the
model is a plain float Whisper (not quantized, pre-norm GELU), reading its sizes from the variable
shapes, and mapping every variable onto its transformers name (fused q/k/v projections split,
aliases followed, nothing left over); the table is in ``ENVIRONMENT.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from probe.convert.config import WhisperDims, default_alignment_heads, whisper_generation_config, whisper_model_config
from probe.convert.hf_dir import _write_hf_dir
from probe.convert.model_bin import read_ctranslate2
from probe.convert.reading import _read_json
from probe.convert.tokenizer import _check_vocab, special_token_ids, whisper_tokenizer
from probe.embedded import ct2_model_files
from probe.errors import ModelError


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
