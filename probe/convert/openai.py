"""openai-whisper ``.pt`` checkpoints to transformers, without ever unpickling code.

A checkpoint is a dict of ``dims`` and ``model_state_dict``, loaded with ``weights_only=True`` so
a file carrying code is refused.  This module owns mapping openai-whisper's parameter names onto
transformers' (:func:`openai_to_hf_name`), the alignment heads stored in the checkpoint, and the
tokenizer such a checkpoint lacks: borrowed from ``tokenizer_dir`` or from the embedded model with
the same vocabulary (large-v3's is base's plus ``<|yue|>``), with its suppress-token lists.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from probe.convert.config import (ENGLISH_VOCAB, MULTILINGUAL_VOCAB, V3_VOCAB, WhisperDims, default_alignment_heads,
                                  whisper_generation_config, whisper_model_config)
from probe.convert.hf_dir import _write_hf_dir
from probe.convert.reading import _read_json, first_line
from probe.convert.tokenizer import (_check_vocab, _remap_token_ids, tokenizer_json_with_extra_language,
                                     whisper_tokenizer)
from probe.embedded import EMBEDDED
from probe.errors import ModelError

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
