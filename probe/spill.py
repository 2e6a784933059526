"""Keeping a long run's big per-window arrays on disk while it decodes, so host memory stays bounded.

A plugin that keeps something large for every window (cross-attention weights: ~150 KB per token on
base) would hold gigabytes by the end of an hour-long lecture.  :class:`Spill` is a run's scratch
folder: :meth:`Spill.put` writes an array as ``.npy`` and gives back a :class:`Spilled` handle that
reads it again memory-mapped.  :class:`Concatenated` declares a record made of per-window parts —
arrays in memory or spilled — joined along one axis (each zero-padded on the last axis), and
:meth:`Concatenated.write_safetensors` streams it into the trace's safetensors file part by part, so
the whole record never sits in memory.  The tracer removes a run's spill folder when its trace is
written or the run fails.  Nothing here is ever unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_SAFETENSORS_NAMES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
                      "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
                      "float16": "F16", "float32": "F32", "float64": "F64"}


@dataclass(frozen=True)
class Spilled:
    """An array written to a run's spill folder."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype

    def load(self) -> np.ndarray:
        """The array, memory-mapped read-only (pages are read as they are used)."""
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def blocks(self, leading: int):
        """Yield the C-ordered sub-arrays ``array[index]`` for every index over the first ``leading``
        axes, each read from the file on its own (not mapped, so what was read is not kept)."""
        inner = self.shape[leading:]
        count = int(np.prod(inner))
        with open(self.path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}[version]
            _, fortran, _ = read_header(file)
            if fortran:
                raise ValueError(f"{self.path} is not C-ordered")
            for _ in np.ndindex(*self.shape[:leading]):
                yield np.fromfile(file, dtype=self.dtype, count=count).reshape(inner)


class Spill:
    """A run's scratch folder of spilled arrays; made on first use, removed by :meth:`remove`."""

    def __init__(self, prefix: str = "whisper-probe-spill-"):
        self.prefix = prefix
        self.folder: Path | None = None
        self._count = 0

    def put(self, array: Any) -> Spilled:
        """Write ``array`` (numpy, or a torch tensor: copied to the host) and return its handle."""
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        array = np.ascontiguousarray(array)
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix=self.prefix))
        path = self.folder / f"{self._count:06d}.npy"
        self._count += 1
        np.save(path, array, allow_pickle=False)
        return Spilled(path, tuple(array.shape), array.dtype)

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _materialise(part: Any) -> np.ndarray:
    if isinstance(part, Spilled):
        return part.load()
    if hasattr(part, "wait"):  # probe.transfer.to_host handles
        part = part.wait()
    if hasattr(part, "detach"):
        part = part.detach().cpu().numpy()
    return np.asarray(part)


def _rows(array: np.ndarray, leading: int):
    for index in np.ndindex(*array.shape[:leading]):
        yield array[index]


@dataclass
class Concatenated:
    """Parts joined along ``axis``, each zero-padded at the end of the last axis to ``last``.

    Parts are numpy arrays, torch tensors, ``to_host`` handles or :class:`Spilled` arrays, all of one
    dtype and equal in every other axis.  ``shape``/``dtype`` are known without reading the parts.
    """

    parts: list[Any]
    axis: int
    last: int
    shapes: list[tuple[int, ...]] = field(init=False)

    def __post_init__(self):
        self.shapes = [tuple(p.shape) for p in self.parts]
        if not self.shapes:
            raise ValueError("Concatenated needs at least one part")
        if self.axis < 0 or self.axis >= len(self.shapes[0]) - 1:
            raise ValueError("Concatenated joins along an axis before the last one")

    @property
    def shape(self) -> list[int]:
        shape = list(self.shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in self.shapes)
        shape[-1] = self.last
        return shape

    def write_safetensors(self, path: Path, key: str) -> tuple[list[int], str]:
        """Stream the joined array into a safetensors file holding one tensor ``key``; returns
        (shape, dtype name).  Reads each part's rows as it writes them (C order)."""
        # spilled parts are read block by block from their files; the others are in memory
        arrays = [part.blocks(self.axis) if isinstance(part, Spilled) else iter(_rows(_materialise(part), self.axis))
                  for part in self.parts]
        dtypes = {np.dtype(part.dtype) if isinstance(part, Spilled) else _materialise(part).dtype
                  for part in self.parts}
        if len(dtypes) != 1:
            raise ValueError(f"parts of one record must share a dtype, got {sorted(str(d) for d in dtypes)}")
        dtype = dtypes.pop()
        shape = self.shape
        nbytes = int(np.prod(shape)) * dtype.itemsize
        header = json.dumps({key: {"dtype": _SAFETENSORS_NAMES[dtype.name], "shape": shape,
                                   "data_offsets": [0, nbytes]}}).encode()
        header += b" " * (-len(header) % 8)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(header)) + header)
            for _ in np.ndindex(*shape[:self.axis]):
                for blocks in arrays:
                    block = next(blocks)  # [part's axis, ..., last ≤ self.last]
                    pad = [(0, 0)] * (block.ndim - 1) + [(0, self.last - block.shape[-1])]
                    out.write(np.ascontiguousarray(np.pad(block, pad)).astype(dtype.newbyteorder("<"),
                                                                                copy=False).tobytes())
        return shape, dtype.name
