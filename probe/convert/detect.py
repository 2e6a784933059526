"""Which format a checkpoint is, and :func:`convert`, which converts whatever it is.

A file ending ``.pt``/``.pth`` is an openai-whisper checkpoint; a directory with ``model.bin``,
``config.json`` and ``tokenizer.json`` is CTranslate2; one whose ``config.json`` has a
``model_type`` is a transformers directory.  Anything else is refused with a message listing
what is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from probe.convert.ctranslate2 import convert_ctranslate2
from probe.convert.hf_dir import convert_hf
from probe.convert.openai import convert_openai_checkpoint
from probe.embedded import ct2_model_files
from probe.errors import ModelError

Format = Literal["hf", "ctranslate2", "openai"]


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
