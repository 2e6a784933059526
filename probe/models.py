"""Loading Whisper models: what a model spec means and where its weights come from.

This module owns the answer to "which model, on which device, in which dtype".  A spec is a hub
id (``openai/whisper-base``), a local transformers directory, a CTranslate2 directory or an
openai-whisper ``.pt`` file (both converted once into the cache), or the name of an **embedded**
model: real Whisper weights installed by pip (``EMBEDDED``), converted once into
``cache_dir()/models/<name>``.  With no hub access, a hub id that has an embedded equivalent
falls back to it and says so in ``LoadedModel.note``.  Every user mistake becomes a one-line
:class:`~probe.errors.ModelError` or :class:`~probe.errors.OptionError`.  ``tiny_random_model``
builds a tiny random-initialised Whisper for unit tests only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from probe import convert
# the embedded registry lives in probe.embedded; its names stay importable from here
from probe.embedded import (DEFAULT_EMBEDDED, EMBEDDED, EmbeddedModel, _embedded,  # noqa: F401
                            ct2_model_files, installed_embedded)
from probe.errors import ModelError, OptionError
# the converted-model cache lives in probe.model_cache; its names stay importable from here
from probe.model_cache import CONVERTER_VERSION, _converted_local_dir, cache_dir, embedded_model_dir

__all__ = ["CONVERTER_VERSION", "DEFAULT_EMBEDDED", "EMBEDDED", "EmbeddedModel", "LoadedModel", "cache_dir",
           "ct2_model_files", "embedded_model_dir", "installed_embedded", "load_model", "quiet_transformers",
           "resolve_device", "resolve_dtype", "tiny_random_model"]
from probe.quiet import quiet_transformers  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if m := re.fullmatch(r"cuda(?::(\d+))?", name):
        if not torch.cuda.is_available():
            raise OptionError(f"device '{device}' was asked for but CUDA is not available here; use --device cpu or auto")
        index = int(m.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise OptionError(f"device '{device}' does not exist (this machine has {torch.cuda.device_count()} GPU(s)); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    raise OptionError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name in _DTYPES:
        return _DTYPES[name]
    raise OptionError(f"unknown dtype '{dtype}'; use auto, float32, float16 or bfloat16")


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A Whisper model ready for decoding, with where it came from."""

    model: WhisperForConditionalGeneration  # in eval mode, on device, in dtype
    processor: WhisperProcessor
    model_id: str  # hub id, "embedded:NAME", or an absolute path
    source: str  # human description of where the weights came from
    device: torch.device
    dtype: torch.dtype
    is_multilingual: bool
    alignment_heads: list[tuple[int, int]]  # (decoder layer, head) pairs used for word timing
    note: str | None = None  # something the user should know, e.g. a hub fallback

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation


def _from_pretrained(where: str | Path, dtype: torch.dtype, attn_implementation: str | None, local_files_only: bool = False):
    """``(model, processor)`` via transformers; its exceptions pass through for the caller to word."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    kwargs = {"dtype": dtype, "local_files_only": local_files_only}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with quiet_transformers():
        model = WhisperForConditionalGeneration.from_pretrained(str(where), **kwargs)
        processor = WhisperProcessor.from_pretrained(str(where), local_files_only=local_files_only)
    return model, processor


def _load_local_hf(directory: Path, dtype: torch.dtype, attn_implementation: str | None):
    convert.read_hf_config(directory)  # a clear error for non-Whisper configs
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        raise ModelError(f"{directory} has config.json but no weights (model.safetensors); the download or conversion is incomplete")
    try:
        return _from_pretrained(directory, dtype, attn_implementation)
    except Exception as exc:  # transformers, safetensors, torch and tokenizers each raise their own types
        if isinstance(exc, (ImportError, ValueError)):
            _raise_if_attention_problem(exc, attn_implementation)
        raise ModelError(f"{directory} cannot be loaded as a Whisper model ({convert.first_line(exc)}); re-download or re-convert it") from exc


def _raise_if_attention_problem(exc: Exception, attn_implementation: str | None) -> None:
    if attn_implementation not in (None, "eager", "sdpa"):
        raise OptionError(f"attention implementation '{attn_implementation}' cannot be used here ({convert.first_line(exc)}); use sdpa or eager") from exc


def _check_attn_implementation(attn_implementation: str | None) -> None:
    if attn_implementation is not None and attn_implementation not in _ATTN_IMPLEMENTATIONS:
        raise OptionError(f"unknown attention implementation '{attn_implementation}'; use one of: {', '.join(_ATTN_IMPLEMENTATIONS)}")


def _embedded_for_hub_id(hub_id: str) -> EmbeddedModel | None:
    return next((model for model in EMBEDDED.values() if hub_id in model.hub_ids), None)


def _offline_choices() -> str:
    names = "|".join(installed_embedded()) or DEFAULT_EMBEDDED
    return f"use --model {names}, a local directory, or a .pt file"


def _hub_failure(hub_id: str, exc: Exception) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(e, (RepositoryNotFoundError, GatedRepoError)) for e in chain):
        return f"{hub_id} was not found on the Hugging Face hub (or is gated)"
    return f"{hub_id} cannot be reached offline"


@dataclass
class _Resolved:
    """Where to load from and how to describe it."""

    where: str | Path  # a local transformers directory (Path) or a hub id (str)
    model_id: str
    source: str
    note: str | None = None


def _resolve_embedded(name: str, note: str | None = None) -> _Resolved:
    model = _embedded(name)
    directory = embedded_model_dir(name)
    source = f"embedded {name} (pip: {', '.join(model.packages)}; CTranslate2 float16 converted to {directory})"
    return _Resolved(directory, f"embedded:{name}", source, note)


def _resolve_local(path: Path) -> _Resolved:
    path = path.expanduser().resolve()
    if path.is_dir() and not any(path.iterdir()):
        raise ModelError(f"{path} is empty; pass a Whisper directory (config.json + model.safetensors), a CTranslate2 directory or a .pt file")
    fmt = convert.detect_format(path)
    if fmt == "hf":
        return _Resolved(path, str(path), f"local transformers directory {path}")
    if fmt in ("ctranslate2", "openai"):
        directory = _converted_local_dir(path, fmt)
        kind = "CTranslate2 directory" if fmt == "ctranslate2" else "openai-whisper checkpoint"
        return _Resolved(directory, str(path), f"{kind} {path} (converted to {directory})")
    if path.is_file():
        raise ModelError(f"{path} is not a Whisper checkpoint this tool knows; pass a .pt file, or a model directory")
    if (path / "config.json").is_file():
        if ct2_model_files(path):
            raise ModelError(f"{path} has model.bin but no tokenizer.json; a CTranslate2 directory needs model.bin, config.json and tokenizer.json")
        raise ModelError(f"{path} has config.json but no model weights; the download or conversion is incomplete")
    raise ModelError(f"{path} holds no Whisper model; pass a transformers directory (config.json + model.safetensors), a CTranslate2 directory or a .pt file")


def _missing(spec: str | Path) -> ModelError:
    return ModelError(f"{spec} does not exist; pass a model directory, a .pt file, or an embedded name ({', '.join(EMBEDDED)})")


def _resolve(spec: str | Path | None) -> _Resolved:
    if spec is None:
        return _resolve_embedded(DEFAULT_EMBEDDED)
    if isinstance(spec, Path):
        if not spec.exists():
            raise _missing(spec)
        return _resolve_local(spec)
    spec = spec.strip()
    if spec.startswith("embedded:"):
        return _resolve_embedded(spec.removeprefix("embedded:"))
    if spec in EMBEDDED:
        return _resolve_embedded(spec)
    if Path(spec).expanduser().exists():
        return _resolve_local(Path(spec))
    if _HUB_ID.fullmatch(spec) and not spec.endswith((".pt", ".pth")):
        return _Resolved(spec, spec, f"Hugging Face hub: {spec}")
    if os.sep in spec or spec.endswith((".pt", ".pth")):
        raise _missing(spec)
    raise ModelError(f"model '{spec}' is neither an existing path, an embedded model ({', '.join(EMBEDDED)}) nor a hub id (owner/name)")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub can be contacted: offline mode says no; otherwise one quick TCP connect.

    Without this check huggingface_hub retries an unreachable hub for about 25 s per file.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; a direct connection test would say nothing
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _load_hub(resolved: _Resolved, dtype: torch.dtype, attn_implementation: str | None):
    """Load from the hub (or the local HF cache); fall back to an embedded equivalent when unreachable."""
    from transformers import AutoConfig

    hub_id = str(resolved.where)
    local_only = not _hub_reachable()  # then only the local Hugging Face cache can serve it
    try:
        with quiet_transformers():
            model_type = AutoConfig.from_pretrained(hub_id, local_files_only=local_only).model_type
        if model_type != "whisper":
            raise ModelError(f"{hub_id} is a {model_type} model, not Whisper; pass a Whisper model")
        return resolved, _from_pretrained(hub_id, dtype, attn_implementation, local_only)
    except OSError as exc:
        failure = _hub_failure(hub_id, exc)
        equivalent = _embedded_for_hub_id(hub_id)
        if equivalent is None:
            raise ModelError(f"{failure}; {_offline_choices()}") from exc
        if not equivalent.installed:
            raise ModelError(f"{failure} and its embedded equivalent is not installed; run: {equivalent.pip_install}") from exc
        note = f"{hub_id}: hub unreachable, using the embedded equivalent (embedded:{equivalent.name})"
        fallback = _resolve_embedded(equivalent.name, note)
        return fallback, _load_local_hf(Path(fallback.where), dtype, attn_implementation)
    except (ImportError, ValueError) as exc:
        _raise_if_attention_problem(exc, attn_implementation)
        raise ModelError(f"{hub_id} cannot be loaded as a Whisper model ({convert.first_line(exc)})") from exc


def _alignment_heads(model) -> list[tuple[int, int]]:
    heads = getattr(model.generation_config, "alignment_heads", None)
    if not heads:
        heads = convert.default_alignment_heads(model.config.decoder_layers, model.config.decoder_attention_heads)
    return [(int(layer), int(head)) for layer, head in heads]


def _is_multilingual(model) -> bool:
    flag = getattr(model.generation_config, "is_multilingual", None)
    return bool(flag) if flag is not None else model.config.vocab_size >= convert.MULTILINGUAL_VOCAB


def _finish(model, processor, resolved: _Resolved, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(
        model=model,
        processor=processor,
        model_id=resolved.model_id,
        source=resolved.source,
        device=device,
        dtype=dtype,
        is_multilingual=_is_multilingual(model),
        alignment_heads=_alignment_heads(model),
        note=resolved.note,
    )


def load_model(
    spec: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a Whisper model from a spec (see the module docstring) onto ``device`` in ``dtype``.

    ``spec`` None means the embedded default (``base``); ``"embedded:NAME"`` or a bare embedded
    name picks another embedded model (a local folder with such a name needs ``./NAME``).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    _check_attn_implementation(attn_implementation)
    resolved = _resolve(spec)
    if isinstance(resolved.where, Path):
        model, processor = _load_local_hf(resolved.where, torch_dtype, attn_implementation)
    else:
        resolved, (model, processor) = _load_hub(resolved, torch_dtype, attn_implementation)
    return _finish(model, processor, resolved, torch_device, torch_dtype)


# --------------------------------------------------------------------------- unit-test model


def tiny_random_model(n_mels: int = 80, multilingual: bool = True, seed: int = 0) -> LoadedModel:
    """A tiny random-initialised Whisper (d_model 64, 2 encoder + 2 decoder layers, 4 heads) on CPU.

    FOR UNIT TESTS ONLY: it produces noise, never transcripts.  It has the real vocabulary and a
    full generation config (tokenizer of the embedded ``base``, or ``tiny.en`` when not
    multilingual), so prompts, language detection and timestamps behave as with real weights.
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    embedded = _embedded(DEFAULT_EMBEDDED if multilingual else "tiny.en")
    metadata = embedded.metadata_dir()
    ct2_config = json.loads((metadata / "config.json").read_text(encoding="utf-8"))
    tokenizer = convert.whisper_tokenizer(metadata / "tokenizer.json")
    dims = convert.WhisperDims(
        n_mels=n_mels, vocab_size=len(tokenizer), d_model=64,
        encoder_layers=2, encoder_heads=4, decoder_layers=2, decoder_heads=4, ffn_dim=256,
        max_source_positions=1500, max_target_positions=convert.MAX_TARGET_POSITIONS,
    )
    generation_config = convert.whisper_generation_config(
        tokenizer,
        is_multilingual=multilingual,
        alignment_heads=convert.default_alignment_heads(dims.decoder_layers, dims.decoder_heads),
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
    )
    provenance = {"source": f"random init, seed {seed}", "source_format": "random"}
    config = convert.whisper_model_config(dims, tokenizer, provenance)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.generation_config = generation_config
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tokenizer)
    resolved = _Resolved(
        "", f"tiny-random:{'multilingual' if multilingual else 'en'}-{n_mels}mels-seed{seed}",
        f"tiny random-initialised Whisper for unit tests (seed {seed}, tokenizer of embedded {embedded.name})",
    )
    return _finish(model, processor, resolved, torch.device("cpu"), torch.float32)
