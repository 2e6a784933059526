"""A store: the folder of traces, and listing, opening, resolving, deleting and importing them.

:class:`Store` is what the CLI and the dashboard hold: ``list()`` (newest first, broken traces
listed with their error rather than raised), ``open(id)``, ``resolve(ref)`` (an id, a unique id
prefix, a name or a path), ``delete(id)`` (one rename out of sight, then removal), ``writer()``
for a new trace and ``import_dir(src)`` for a copied one, checked like any untrusted trace
before it is published.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from probe.errors import StoreError
from probe.publish import staged
from probe.store.layout import _TMP, SWEEPS, _reason, _remove_if_empty, _write_error, default_store_dir
from probe.store.queue import WriteQueue
from probe.store.safety import _is_plain_name, _is_trace_dir, _looks_like_path, _read_every_record
from probe.store.trace import Trace
from probe.store.writer import TraceWriter


@dataclasses.dataclass(frozen=True)
class TraceInfo:
    """One line of ``Store.list()``: enough to pick a trace without loading it."""

    id: str
    name: str | None
    created: str
    transcript: str  # the first 80 characters
    model_id: str | None
    audio_source: str | None
    error: str | None = None  # why the trace cannot be opened, for broken traces
    language: str | None = None  # the language token's code, e.g. "zh"
    task: str | None = None  # transcribe or translate


class Store:
    """A folder of traces: list, open, resolve, delete, write and import them."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True):
        path = Path(path).expanduser() if path is not None else default_store_dir()
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"could not create store at {path}: {_reason(err)}; "
                                 "pass --store DIR") from err
        elif not path.is_dir():
            raise StoreError(f"no store at {path}; run a trace first or pass --store DIR")
        self.path = path.resolve()

    def list(self, check_files: bool = False) -> list[TraceInfo]:
        """Every trace, newest first; a broken one is listed with ``error`` set, never raised.

        ``check_files``: also count a trace as broken when a file its manifest names is gone
        (each file is looked up, none is read).
        """
        infos = [self._info(trace_id, check_files) for trace_id in self._trace_ids()]
        return sorted(infos, key=lambda info: (info.created, info.id), reverse=True)

    def open(self, trace_id: str) -> Trace:
        """The trace ``trace_id``; only its manifest is read now."""
        return Trace(self._trace_dir(trace_id))

    def delete(self, trace_id: str) -> None:
        """Remove a trace (broken ones too); readers see it either whole or gone."""
        path = self._trace_dir(trace_id)
        doomed = self._tmp_dir() / f"deleted-{trace_id}-{secrets.token_hex(3)}"
        try:
            os.rename(path, doomed)  # atomic: no reader ever sees a half-deleted trace
            shutil.rmtree(doomed)
            _remove_if_empty(doomed.parent)
        except OSError as err:
            raise StoreError(f"could not delete trace {trace_id}: {_reason(err)}; "
                             f"check the permissions of {self.path}") from err

    def resolve(self, ref: str) -> Trace:
        """The trace ``ref`` names: an id, a unique id prefix, a name (the newest trace of that
        name wins), or a path to a trace folder inside this store."""
        return self.open(self.resolve_id(ref))

    def resolve_id(self, ref: str) -> str:
        """The id of the trace ``ref`` names (as :meth:`resolve`) without opening it, so that
        broken traces can be named too (by id, prefix or path; a name lives in the manifest)."""
        if ref in self:
            return ref
        if _looks_like_path(ref):
            return self._path_id(ref)
        by_prefix = [trace_id for trace_id in self if ref and trace_id.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        by_name = [info.id for info in self.list() if ref and info.name == ref]
        if by_name:
            return by_name[0]
        if by_prefix:
            shown = ", ".join(by_prefix[:5]) + (", ..." if len(by_prefix) > 5 else "")
            raise StoreError(f"{ref!r} matches {len(by_prefix)} traces ({shown}); "
                             "give more of the id")
        raise self._missing(ref)

    def writer(self, name: str | None = None, queue: WriteQueue | None = None,
               trace_id: str | None = None) -> TraceWriter:
        """A :class:`TraceWriter` for a new trace; use it as a context manager.

        With a :class:`WriteQueue` the files are written (and the trace published) by the queue's
        background thread; :meth:`TraceWriter.wait` returns the trace once it is there.  ``trace_id``
        names the id instead of drawing a new one (:class:`~probe.store.writer.TraceExists` if taken).
        """
        return TraceWriter(self, name, queue, trace_id)

    def import_dir(self, src: str | os.PathLike) -> Trace:
        """Copy the trace folder ``src`` into this store under its manifest id.

        Only the files its manifest names are copied; the copy is checked like a trace from an
        untrusted source (manifest, every path, every record readable) before one atomic rename
        publishes it.
        """
        source = Trace(Path(src))
        trace_id = source.manifest.get("id")
        if not _is_plain_name(trace_id):
            raise StoreError(f"trace at {src} has no usable id in its manifest; export it again")
        if trace_id in self:
            raise StoreError(f"trace {trace_id} is already in store {self.path}; "
                             "delete it there first to replace it")
        try:
            # The stage is named like the trace, so the checks name it properly.
            with staged(self.path / trace_id, is_dir=True, stage_in=self._tmp_dir(), durable=True) as copy_dir:
                for rel in source._member_files():
                    target = copy_dir / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source._member_path(rel, "listed"), target)
                _read_every_record(Trace(copy_dir))
        except OSError as err:
            raise _write_error(self.path, err) from err
        return self.open(trace_id)

    def __iter__(self) -> Iterator[str]:
        """Trace ids, newest first by the timestamp they start with."""
        return iter(sorted(self._trace_ids(), reverse=True))

    def __len__(self) -> int:
        return len(self._trace_ids())

    def __contains__(self, trace_id: object) -> bool:
        return _is_plain_name(trace_id) and trace_id != SWEEPS and _is_trace_dir(self.path / trace_id)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, traces={len(self)})"

    def _trace_ids(self) -> list[str]:
        # Hidden names (".tmp" with traces being written, editor files) are never traces.
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        return [entry.name for entry in entries
                if not entry.name.startswith(".") and entry.name != SWEEPS and entry.is_dir(follow_symlinks=False)]

    def _trace_dir(self, trace_id: str) -> Path:
        # Only a plain name of a real folder directly in the store: no separators, "..",
        # absolute paths, hidden folders, or symlinks that could lead outside it.
        if trace_id not in self:
            raise self._missing(trace_id)
        return self.path / trace_id

    def _missing(self, ref: object) -> StoreError:
        return StoreError(f"no trace {ref!r} in store {self.path}; `probe ls` lists them")

    def _path_id(self, ref: str) -> str:
        path = Path(ref).expanduser().resolve()
        if path.parent == self.path and path.name in self:
            return path.name
        raise StoreError(f"{ref} is not a trace folder in store {self.path}; "
                         f"pass --store {path.parent} to read it where it is")

    def _info(self, trace_id: str, check_files: bool = False) -> TraceInfo:
        try:
            trace = self.open(trace_id)
            if check_files:
                trace.check_files()
        except StoreError as err:
            return TraceInfo(trace_id, None, "", "", None, None, error=str(err))
        decode = trace.manifest.get("decode")
        return TraceInfo(trace.id, trace.name, trace.created, trace.transcript[:80], trace.model_id, trace.audio_source,
                         language=trace.language, task=decode.get("task") if isinstance(decode, dict) else None)

    def _tmp_dir(self) -> Path:
        tmp = self.path / _TMP
        for _ in range(10):
            try:
                tmp.mkdir(exist_ok=True)
                return tmp
            except FileExistsError:  # a finishing writer removed it between mkdir and its is_dir check
                continue
            except OSError as err:
                raise _write_error(self.path, err) from err
        return tmp  # the writer's own mkdir(parents=True) makes it if it is gone again

