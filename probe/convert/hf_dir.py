"""Transformers directories: reading one's config, re-saving one, and writing a converted one.

A conversion's output is a normal Hugging Face directory: ``model.safetensors`` (float32, so every
source value is kept exactly, and it loads like a hub checkpoint), ``config.json`` (with a
``whisper_probe`` key naming the source), ``generation_config.json``, the tokenizer and
``preprocessor_config.json``.  This module checks the weights against what transformers expects,
stages the directory beside its destination and publishes it with one rename
(:func:`probe.publish.staged`), so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch

from probe.convert.reading import _read_json, first_line
from probe.errors import ModelError
from probe.publish import PublishError, staged
from probe.quiet import quiet_transformers


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


@contextlib.contextmanager
def _staged_output(dest_dir: Path) -> Iterator[Path]:
    """A staging folder beside ``dest_dir``, renamed to it on success and removed on any failure."""
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise ModelError(f"{dest_dir} already exists and is not empty; choose a new destination or remove it")
    try:
        with staged(dest_dir, is_dir=True) as staging:
            yield staging
            _normal_permissions(staging)
    except PublishError as exc:
        raise ModelError(f"{dest_dir} appeared while converting; choose a new destination or remove it") from exc


def _normal_permissions(directory: Path) -> None:
    """safetensors writes its file private (0600); give the result the permissions of normal output."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _write_hf_dir(dest_dir: Path, state_dict: dict[str, torch.Tensor], config, generation_config, tokenizer, source: str) -> Path:
    """Write a loadable transformers Whisper directory, atomically."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    _check_state_dict(state_dict, config, source)
    with _staged_output(Path(dest_dir)) as staging:
        tensors = {name: tensor.to(torch.float32).contiguous() for name, tensor in state_dict.items()}
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(staging)
        feature_extractor.save_pretrained(staging)  # preprocessor_config.json, for tools that read only that
    return Path(dest_dir).resolve()


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
    with _staged_output(Path(dest_dir)) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return Path(dest_dir).resolve()
