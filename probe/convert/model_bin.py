"""Reading CTranslate2's ``model.bin``: a little-endian binary of named variables and aliases.

This module owns the parser for the ``model.bin`` of CTranslate2 / faster-whisper models (binary
version 6), given as one file or as the parts of a split one, read in order as one stream.  Every
length is checked against what is left before it is read, so a truncated or foreign file raises
:class:`~probe.errors.ModelError` instead of an ``IndexError`` deep inside; nothing is unpickled.
The layout is described in ``ENVIRONMENT.md``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from probe.errors import ModelError

CT2_BINARY_VERSION = 6
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_MAX_RANK = 8


class _Truncated(Exception):
    """The byte stream ended (or made no sense) before the model.bin structure did."""


class _PartsReader:
    """Reads the concatenation of ``paths`` as one stream, opening one part at a time."""

    def __init__(self, paths: list[Path]):
        self._pending = list(paths)
        self._file = None

    def __enter__(self) -> _PartsReader:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def _next_file(self) -> bool:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._pending:
            return False
        self._file = open(self._pending.pop(0), "rb")
        return True

    def read(self, n: int) -> memoryview:
        buffer = bytearray(n)
        view = memoryview(buffer)
        filled = 0
        while filled < n:
            got = self._file.readinto(view[filled:]) if self._file is not None else 0
            if got:
                filled += got
            elif not self._next_file():
                raise _Truncated(f"needed {n} bytes, got {filled}")
        return memoryview(buffer)

    def at_end(self) -> bool:
        while self._file is None or self._file.peek(1) == b"":
            if not self._next_file():
                return True
        return False

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def string(self) -> str:
        length = self.u16()  # counts the trailing NUL
        raw = bytes(self.read(length))
        if length == 0 or raw[-1] != 0:
            raise _Truncated("string without its NUL terminator")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Truncated("string is not UTF-8") from exc


def _read_ct2_variable(reader: _PartsReader) -> tuple[str, np.ndarray]:
    name = reader.string()
    rank = reader.u8()
    if rank > _MAX_RANK:
        raise _Truncated(f"rank {rank} for {name}")
    shape = tuple(reader.u32() for _ in range(rank))
    dtype_id = reader.u8()
    nbytes = reader.u32()
    if dtype_id not in _CT2_DTYPES:
        raise _Truncated(f"dtype id {dtype_id} for {name}")
    dtype = _CT2_DTYPES[dtype_id]
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise _Truncated(f"{name} has {nbytes} bytes for shape {shape}")
    raw = reader.read(nbytes)
    if dtype == "bfloat16":  # numpy has no bfloat16: widen exactly by putting the bits on top
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return name, bits.view(np.float32).reshape(shape)
    return name, np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def read_ctranslate2(model_bin_paths: list[Path]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin`` (given as its parts, in order) into variables and aliases.

    Returns ``(variables, aliases)``: variable name -> array (scalars are 0-d arrays; bfloat16 is
    widened exactly to float32) and alias name -> target variable name.
    """
    paths = [Path(p) for p in model_bin_paths]
    if not paths:
        raise ModelError("no model.bin parts were given; pass the model.bin file(s)")
    shown = " + ".join(str(p) for p in paths)
    broken = f"{shown} is truncated or not a CTranslate2 model.bin; re-install/re-convert it"
    for path in paths:
        if not path.is_file():
            raise ModelError(f"{path} does not exist; re-install/re-convert the model")
    try:
        with _PartsReader(paths) as reader:
            version = reader.u32()
            if version != CT2_BINARY_VERSION:
                if 1 <= version < CT2_BINARY_VERSION:
                    raise ModelError(
                        f"{shown} is CTranslate2 binary version {version}, but only version "
                        f"{CT2_BINARY_VERSION} is supported; re-convert it with a recent ctranslate2"
                    )
                raise ModelError(broken)
            spec = reader.string()
            if spec != "WhisperSpec":
                raise ModelError(f"{shown} holds a CTranslate2 {spec!r} model, not Whisper; use a Whisper model")
            reader.u32()  # spec revision
            variables = dict(_read_ct2_variable(reader) for _ in range(reader.u32()))
            aliases = {}
            for _ in range(reader.u32()):
                alias = reader.string()
                aliases[alias] = reader.string()
            if not reader.at_end():
                raise _Truncated("unexpected bytes after the aliases")
    except (_Truncated, struct.error) as exc:
        raise ModelError(broken) from exc
    return variables, aliases
