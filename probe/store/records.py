"""What a record's value becomes on disk: host arrays for tensors, Arrow tables for rows.

A tensor record is a numpy array or torch tensor (a CUDA one is copied to pinned host memory
without blocking) stored little-endian and C-ordered, in one of the dtypes safetensors and numpy
share; a table record is a list of row dicts or a dict of columns, stored as an Arrow table.
Unsupported values raise ``ValueError`` when they are handed over, not when they are written.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from probe.store.layout import _SAFETENSORS_DTYPES


def _arrow_table(rows: Any) -> pa.Table:
    """A list of row dicts or a dict of columns as an Arrow table."""
    return pa.Table.from_pylist(rows) if isinstance(rows, list) else pa.table(rows)


def _host_array(array: Any) -> tuple[list[int], str, Callable[[], np.ndarray]]:
    """(shape, dtype name, a function giving the little-endian C-ordered numpy array) for a numpy
    array or torch tensor; unsupported dtypes raise ``ValueError`` here, not when written.

    A CUDA tensor's copy to pinned host memory is started now without blocking (after whatever the
    current stream has queued) and the function waits for it, so a writer on a :class:`WriteQueue`
    never stalls the decoding thread on a device→host copy.
    """
    torch = sys.modules.get("torch")  # a torch tensor implies torch is already imported
    if torch is not None and isinstance(array, torch.Tensor):
        from probe.transfer import to_host

        tensor = array.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16; float32 holds it exactly
        dtype = _checked_dtype(torch.empty(0, dtype=tensor.dtype).numpy().dtype)
        copy = to_host(tensor)
        return list(tensor.shape), dtype.name, lambda: _little_endian(copy.wait().numpy())
    array = np.asarray(array)
    _checked_dtype(array.dtype)
    array = _little_endian(array)
    return list(array.shape), array.dtype.name, lambda: array


def _checked_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.name not in _SAFETENSORS_DTYPES.values():
        raise ValueError(f"cannot store a {dtype} tensor; use one of "
                         f"{sorted(set(_SAFETENSORS_DTYPES.values()))}")
    return dtype


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")

