"""A store on disk: where it is, what a trace folder holds, and the limits a reader enforces.

A store is a folder of traces (``$WHISPER_PROBE_STORE`` if set, else
``~/.local/share/whisper-probe/store``); a trace is one folder ``<store>/<trace_id>/`` holding
``manifest.json`` (schema version, model, audio, decode options, transcript, plugins, and one entry
per record with its kind, file, shape and dtype), tensors as safetensors under ``tensors/``, tables
as Parquet under ``tables/``, JSON records under ``json/`` and a FLAC copy of the audio.  Traces
being written or imported live in ``<store>/.tmp/`` until one rename publishes them; sweeps
(:mod:`probe.sweep`) keep their tables under ``<store>/sweeps/``.  This module
owns those names and limits, and the one-line messages for a store that cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from probe.errors import StoreError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
AUDIO_FILE = "audio.flac"
KINDS = ("tensor", "table", "json")
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_TENSOR_HEADER_BYTES = 100 * 2**20

_TMP = ".tmp"
SWEEPS = "sweeps"  # <store>/sweeps/: probe.sweep's tables, never a trace
_TENSOR_KEY = "data"
# safetensors dtype codes -> numpy dtype names: the dtypes a trace may hold.
_SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
    "F16": "float16", "F32": "float32", "F64": "float64",
}
_RECORD_FOLDERS = {"tensor": ("tensors", ".safetensors"), "table": ("tables", ".parquet"),
                   "json": ("json", ".json")}


def default_store_dir() -> Path:
    """The store used when none is given: ``$WHISPER_PROBE_STORE``, else
    ``~/.local/share/whisper-probe/store``."""
    configured = os.environ.get("WHISPER_PROBE_STORE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "whisper-probe" / "store"


def _section(manifest: dict, key: str) -> dict:
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _write_error(store: Path, err: OSError) -> StoreError:
    return StoreError(f"could not write trace to {store}: {_reason(err)}; "
                      "free space or use --store elsewhere")


def _remove_if_empty(directory: Path) -> None:
    """Remove the store's temp folder once no writer uses it (another writer may have just made it)."""
    try:
        directory.rmdir()
    except OSError:
        pass
