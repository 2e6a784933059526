"""Reading a source's small files, and quoting a library's error on one line.

Every converter reads JSON (``config.json``, ``tokenizer.json``, ``generation_config.json``) with
:func:`_read_json`, which turns a missing, unreadable or malformed file into a one-line
:class:`~probe.errors.ModelError`; :func:`first_line` shortens a library's exception message so it
fits in such a line.
"""

from __future__ import annotations

import json
from pathlib import Path

from probe.errors import ModelError


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
