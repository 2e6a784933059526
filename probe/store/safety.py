"""Traces are untrusted input: the checks that make reading one safe.

Traces travel as zip bundles, so nothing a trace says is believed before it is checked: trace ids
and record paths must be plain names and relative paths that stay inside the trace folder (no
``..``, absolute paths, drive colons, NUL or symlinks out), a safetensors file's header length
must fit the file before the file is opened, and its one tensor must have the dtype and shape
the manifest lists.  Loading runs no code a trace could carry: records are parsed as data
(safetensors, Parquet, JSON), never deserialised as objects.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from probe.store.layout import _SAFETENSORS_DTYPES, _TENSOR_KEY, MAX_TENSOR_HEADER_BYTES

if TYPE_CHECKING:
    from probe.store.trace import Trace


def _is_plain_name(name: object) -> bool:
    """A single, visible path component: no separators, NUL, drive colon, '.' or '..'."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and not name.startswith(".")
            and not any(char in name for char in "/\\\0:"))


def _is_safe_relpath(rel: object) -> bool:
    """A relative POSIX path that cannot climb out of the folder it is joined to."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or ":" in rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts


def _is_trace_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref.startswith((".", "~"))


def _read_tensor(path: Path, entry: dict, lazy: bool) -> Any:
    """Open a safetensors record after checking its header fits the file; raise ValueError
    on anything that does not match the manifest."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
    if len(head) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > MAX_TENSOR_HEADER_BYTES or 8 + header_len > size:
        raise ValueError(f"not a safetensors file: header length {header_len} does not fit "
                         f"a {size}-byte file")
    handle = safe_open(str(path), framework="numpy")  # validates header JSON and byte ranges
    if list(handle.keys()) != [_TENSOR_KEY]:
        raise ValueError(f"expected one tensor named {_TENSOR_KEY!r}, found {handle.keys()}")
    view = handle.get_slice(_TENSOR_KEY)
    dtype, shape = _SAFETENSORS_DTYPES.get(view.get_dtype()), list(view.get_shape())
    if dtype is None:
        raise ValueError(f"unsupported dtype {view.get_dtype()}")
    if (dtype, shape) != (entry.get("dtype"), entry.get("shape")):
        raise ValueError(f"file holds {dtype} {shape}, manifest says "
                         f"{entry.get('dtype')} {entry.get('shape')}")
    return view if lazy else handle.get_tensor(_TENSOR_KEY)


def _read_every_record(trace: Trace) -> None:
    """Read every record of ``trace`` so a bad file fails now (tensors: header and size only)."""
    for name, entry in trace.records.items():
        if entry["kind"] == "tensor":
            trace.tensor(name, lazy=True)
        else:
            trace.record(name)
    trace.audio_bytes()

