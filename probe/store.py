"""The trace store: where runs are written, listed, opened and read back.

A store is a folder of traces (``$WHISPER_PROBE_STORE`` if set, else
``~/.local/share/whisper-probe/store``); a trace is one folder ``<store>/<trace_id>/`` holding
``manifest.json`` (schema version, model, audio, decode options, transcript, plugins, and one entry
per record with its kind, file, shape and dtype), tensors as safetensors under ``tensors/``, tables
as Parquet under ``tables/``, JSON records under ``json/`` and a FLAC copy of the audio.
:class:`TraceWriter` builds a trace in ``<store>/.tmp/`` and publishes it with one atomic rename,
so a crashed or failing run never leaves a half trace and readers only ever see complete ones.
:class:`Trace` reads lazily: opening one loads only its manifest, and a tensor can be sliced
without loading its file.  Traces are untrusted input (they travel as zip bundles), so every
path, size and header is checked before use, and loading runs no code a trace could carry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import struct
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from probe.errors import PluginError, StoreError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
AUDIO_FILE = "audio.flac"
WORDS_RECORD = "cross_attention.words"
KINDS = ("tensor", "table", "json")
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_TENSOR_HEADER_BYTES = 100 * 2**20

_TMP = ".tmp"
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

    def writer(self, name: str | None = None, queue: WriteQueue | None = None) -> TraceWriter:
        """A :class:`TraceWriter` for a new trace; use it as a context manager.

        With a :class:`WriteQueue` the files are written (and the trace published) by the queue's
        background thread; :meth:`TraceWriter.wait` returns the trace once it is there.
        """
        return TraceWriter(self, name, queue)

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
        staging = self._tmp_dir() / f"import-{secrets.token_hex(3)}"
        copy_dir = staging / trace_id  # named like the trace so checks name it properly
        try:
            for rel in source._member_files():
                target = copy_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source._member_path(rel, "listed"), target)
            _read_every_record(Trace(copy_dir))
            _fsync_tree(copy_dir)
            os.rename(copy_dir, self.path / trace_id)
        except OSError as err:
            raise _write_error(self.path, err) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.open(trace_id)

    def __iter__(self) -> Iterator[str]:
        """Trace ids, newest first by the timestamp they start with."""
        return iter(sorted(self._trace_ids(), reverse=True))

    def __len__(self) -> int:
        return len(self._trace_ids())

    def __contains__(self, trace_id: object) -> bool:
        return _is_plain_name(trace_id) and _is_trace_dir(self.path / trace_id)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, traces={len(self)})"

    def _trace_ids(self) -> list[str]:
        # Hidden names (".tmp" with traces being written, editor files) are never traces.
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        return [entry.name for entry in entries
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)]

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
        return TraceInfo(trace.id, trace.name, trace.created, trace.transcript[:80],
                         trace.model_id, trace.audio_source)

    def _tmp_dir(self) -> Path:
        tmp = self.path / _TMP
        try:
            tmp.mkdir(exist_ok=True)
        except OSError as err:
            raise _write_error(self.path, err) from err
        return tmp


class WriteQueue:
    """One background thread that writes traces' files, in the order they were handed over.

    Trace writers given the queue (``store.writer(name, queue=q)``) return from ``add_*`` as soon
    as the record is registered, and their commit is queued too, so decoding goes on while the
    files are written, fsynced and published.  The thread runs file I/O and the record functions
    plugins hand over (``add_json(name, function)``: the cross_attention plugin's DTW, the audio's
    FLAC encoding), never a plugin hook, so Ctrl-C still lands in the code that was running.  :meth:`close` (or leaving the
    ``with`` block) waits for every queued job: finished traces are published, aborted ones removed.
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-store-writer")

    def submit(self, job: Callable[[], Any]) -> Future:
        return self._executor.submit(job)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> WriteQueue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TraceWriter:
    """Builds one trace in ``<store>/.tmp/<id>/`` and publishes it atomically on :meth:`commit`.

    ``with store.writer(name) as w:`` commits on a clean exit and removes everything on an
    exception.  Any OS error while writing (a full disk) removes the partial trace and raises
    :class:`StoreError`.  Misuse (duplicate record names, unsupported dtypes, values that are not
    JSON) raises ``ValueError``/``TypeError`` as the bug it is.

    Given a :class:`WriteQueue`, the files are written on the queue's thread: ``add_*`` keep a
    reference to what they are handed (do not change an array in place afterwards), a CUDA
    tensor's copy to pinned host memory starts without blocking, a write error surfaces at the
    next call or in :meth:`wait`, and leaving the ``with`` block queues the commit.
    """

    def __init__(self, store: Store, name: str | None = None, queue: WriteQueue | None = None):
        self.store = store
        self._created = datetime.datetime.now(datetime.timezone.utc)
        self._fields: dict[str, Any] = {"name": name}
        self._records: dict[str, dict] = {}
        self._files: set[str] = set()  # casefolded, so case-insensitive disks cannot collide
        self._audio: dict[str, Any] | None = None
        self._closed = False
        self._queue = queue
        self._last: Future | None = None  # this writer's newest queued job
        self._failure: BaseException | None = None  # set by a queued job that failed
        self._aborted = threading.Event()
        self.id, self._dir = self._reserve(name)

    def update_manifest(self, **fields: Any) -> None:
        """Set top-level manifest fields (model, audio, decode, transcript, timings, ...)."""
        owned = sorted(fields.keys() & {"schema_version", "id", "created", "records"})
        if owned:
            raise ValueError(f"the writer owns manifest fields {owned}; do not set them")
        json.dumps(fields)  # fail here, not at commit, on values that are not JSON
        self._fields.update(fields)

    def add_tensor(self, name: str, array: Any, plugin: str, meta: dict | None = None) -> None:
        """Store a numpy array or torch tensor (copied to host) as ``tensors/<name>.safetensors``.

        ``array`` may also be a function making it: see :meth:`_add` (made where files are written).
        """
        if callable(array):
            self._add(name, "tensor", plugin, meta, None, None, array, self._write_tensor)
            return
        from probe.spill import Concatenated

        if isinstance(array, Concatenated):  # per-window parts, streamed into the file
            self._add(name, "tensor", plugin, meta, None, None, lambda: array, self._write_tensor)
            return
        shape, dtype, host = _host_array(array)
        self._add(name, "tensor", plugin, meta, shape, dtype,
                  lambda path: save_file({_TENSOR_KEY: host()}, str(path)))

    def add_table(self, name: str, rows: Any, plugin: str, meta: dict | None = None) -> None:
        """Store a list of row dicts or a dict of columns as ``tables/<name>.parquet``
        (or a function making them)."""
        if callable(rows):
            self._add(name, "table", plugin, meta, None, None, rows, self._write_table)
            return
        table = _arrow_table(rows)
        self._add(name, "table", plugin, meta, [table.num_rows, table.num_columns], None,
                  lambda path: pq.write_table(table, path))

    def add_json(self, name: str, obj: Any, plugin: str, meta: dict | None = None) -> None:
        """Store any JSON-able value as ``json/<name>.json`` (or a function making it)."""
        if callable(obj):
            self._add(name, "json", plugin, meta, None, None, obj, self._write_json)
            return
        text = json.dumps(obj)
        self._add(name, "json", plugin, meta, None, None,
                  lambda path: path.write_text(text, encoding="utf-8"))

    # Writing what a function made; each returns the record's (shape, dtype) for the manifest.
    @staticmethod
    def _write_tensor(value: Any, path: Path) -> tuple[list[int], str]:
        from probe.spill import Concatenated

        if isinstance(value, Concatenated):
            return value.write_safetensors(path, _TENSOR_KEY)
        shape, dtype, host = _host_array(value)
        save_file({_TENSOR_KEY: host()}, str(path))
        return shape, dtype

    @staticmethod
    def _write_table(value: Any, path: Path) -> tuple[list[int], None]:
        table = _arrow_table(value)
        pq.write_table(table, path)
        return [table.num_rows, table.num_columns], None

    @staticmethod
    def _write_json(value: Any, path: Path) -> tuple[None, None]:
        path.write_text(json.dumps(value), encoding="utf-8")
        return None, None

    def add_audio(self, flac: bytes | Callable[[], bytes], sample_rate: int = 16000, **audio_fields: Any) -> None:
        """Keep the compressed audio as ``audio.flac``; ``audio_fields`` (source, sha256,
        duration) join ``manifest["audio"]``.  ``flac`` is FLAC bytes, or a function making them
        (called where the files are written, so a queued writer encodes off the calling thread)."""
        self._check_open()
        if self._audio is not None:
            raise ValueError("this trace already has audio")
        json.dumps(audio_fields)

        def write():  # bytes are checked now; what a function makes, when it is made
            (self._dir / AUDIO_FILE).write_bytes(_checked_flac(flac()) if callable(flac) else flac)

        if not callable(flac):
            _checked_flac(flac)
        self._io(write)
        self._audio = {**audio_fields, "sample_rate": sample_rate, "file": AUDIO_FILE}

    def has(self, name: str) -> bool:
        return name in self._records

    def commit(self) -> Trace:
        """Write the manifest and publish the trace with one atomic rename (waits for a queue)."""
        self._finish()
        return self.wait()

    def wait(self) -> Trace:
        """The published trace, once every file and the commit are done; raises what failed."""
        if self._last is not None:
            self._last.result()
        self._raise_failure()
        if not self._closed or self._aborted.is_set():
            raise ValueError(f"trace writer {self.id} was not committed")
        return self.store.open(self.id)

    def written(self) -> bool:
        """True once nothing this writer handed over is still being written."""
        return self._last is None or self._last.done()

    def abort(self) -> None:
        """Drop everything written so far; nothing becomes visible in the store."""
        if not self._closed:
            self._closed = True
            self._aborted.set()  # queued jobs of this writer do nothing from now on
            if self._queue is None:
                self._remove_staging()
            else:
                self._last = self._queue.submit(self._remove_staging)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self._closed:
                self._finish()
        finally:
            self.abort()  # after a commit this does nothing

    def _finish(self) -> None:
        """Write the manifest and publish the trace, now or on the queue (after the record jobs,
        so the shapes of records made there are known)."""
        self._check_open()
        fields, audio = dict(self._fields), self._audio

        def publish():
            manifest = {"schema_version": SCHEMA_VERSION, "id": self.id,
                        "created": self._created.isoformat(), **fields, "records": self._records}
            if audio is not None:
                manifest["audio"] = {**(manifest.get("audio") or {}), **audio}
            (self._dir / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            _fsync_tree(self._dir)  # the rename must never publish data still in a cache
            os.rename(self._dir, self.store.path / self.id)
            _remove_if_empty(self._dir.parent)
            _fsync_dir(self.store.path)

        self._io(publish)
        self._closed = True

    def _io(self, job: Callable[[], Any]) -> None:
        """Run a file job now, or queue it behind this writer's earlier ones."""
        if self._queue is None:
            with self._writing():
                job()
            return
        self._raise_failure()
        self._last = self._queue.submit(lambda: self._background(job))

    def _background(self, job: Callable[[], Any]) -> None:
        if self._aborted.is_set() or self._failure is not None:
            return
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - handed to the thread that waits
            self._remove_staging()  # first, so whoever sees the failure finds nothing left
            self._failure = _write_error(self.store.path, err) if isinstance(err, OSError) else err

    def _raise_failure(self) -> None:
        if self._failure is not None:
            self._closed = True
            raise self._failure

    def _remove_staging(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        _remove_if_empty(self._dir.parent)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TraceWriter {self.id} {state} records={len(self._records)}>"

    def _reserve(self, name: str | None) -> tuple[str, Path]:
        # The temp folder is named by the id and made with an exclusive mkdir, so two writers
        # never share an id: one taken by a writer in flight or by a committed trace is redrawn.
        tmp = self.store._tmp_dir()
        while True:
            trace_id = _new_trace_id(name, self._created)
            staging = tmp / trace_id
            try:
                staging.mkdir(parents=True)  # parents: a finishing writer may just have removed .tmp
            except FileExistsError:
                continue
            except OSError as err:
                raise _write_error(self.store.path, err) from err
            if not (self.store.path / trace_id).exists():
                return trace_id, staging
            staging.rmdir()

    def _add(self, name: str, kind: str, plugin: str, meta: dict | None,
             shape: list | None, dtype: str | None, write: Callable[[Path], Any],
             made_by: Callable[[Any, Path], tuple] | None = None) -> None:
        """Register record ``name`` and queue (or run) the job writing its file.

        With ``made_by``, ``write`` is a function of no arguments that makes the value: it is
        called where the file is written (on a :class:`WriteQueue`'s thread, off decoding), then
        ``made_by(value, path)`` writes it and gives the shape and dtype the manifest lists.
        Such a function must only compute (no plugin state, no model); what it raises fails the
        trace with a :class:`~probe.errors.PluginError` naming the plugin and record.
        """
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ValueError(f"record names are non-empty strings, not {name!r}")
        if name in self._records:
            raise ValueError(f"record {name!r} was already added to this trace")
        if not isinstance(plugin, str) or not plugin:
            raise ValueError(f"record {name!r} needs the name of the plugin that made it")
        json.dumps(meta)
        rel = self._file_for(name, kind)
        path = self._dir / rel
        record = {"plugin": plugin, "kind": kind, "file": rel, "shape": shape, "dtype": dtype, "meta": meta or {}}

        def job():
            path.parent.mkdir(exist_ok=True)
            if made_by is None:
                write(path)
                return
            try:
                value = write()
            except Exception as exc:
                raise PluginError(f"plugin {plugin!r} raised making record {name!r}: {type(exc).__name__}:"
                                  f" {exc} (disable it with -p no:{plugin})") from exc
            try:
                record["shape"], record["dtype"] = made_by(value, path)
            except (ValueError, TypeError, pa.ArrowException) as exc:
                raise PluginError(f"plugin {plugin!r} made record {name!r} as something it cannot store:"
                                  f" {exc}") from exc

        self._io(job)
        self._files.add(rel.casefold())
        self._records[name] = record

    def _file_for(self, name: str, kind: str) -> str:
        # Record names are free text ("activations.encoder.blocks.0.hook_resid_post"); a name
        # that is not already a safe file name, or that collides, gets a hash of itself appended.
        folder, suffix = _RECORD_FOLDERS[kind]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120].lstrip(".")
        rel = f"{folder}/{stem}{suffix}"
        if stem != name or rel.casefold() in self._files:
            rel = f"{folder}/{stem}-{hashlib.sha1(name.encode()).hexdigest()[:8]}{suffix}"
        return rel

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            self.abort()
            raise _write_error(self.store.path, err) from err

    def _check_open(self) -> None:
        self._raise_failure()
        if self._closed:
            raise ValueError(f"trace writer {self.id} is already committed or aborted")


class Trace:
    """One stored trace.  Opening reads and checks only ``manifest.json``; records are read
    when asked for, and each file is checked (path, header, shape, dtype) as it is read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.id = self.path.name
        self.manifest: dict[str, Any] = self._read_manifest()
        self.records: dict[str, dict] = self.manifest["records"]

    @property
    def name(self) -> str | None:
        return _text_or_none(self.manifest.get("name"))

    @property
    def transcript(self) -> str:
        return _text_or_none(self.manifest.get("transcript")) or ""

    @property
    def language(self) -> Any:
        return self.manifest.get("language")

    @property
    def created(self) -> str:
        return _text_or_none(self.manifest.get("created")) or ""

    @property
    def model_id(self) -> str | None:
        return _text_or_none(_section(self.manifest, "model").get("id"))

    @property
    def audio_source(self) -> str | None:
        return _text_or_none(_section(self.manifest, "audio").get("source"))

    def record(self, name: str) -> Any:
        """A record by name: a numpy array, a list of row dicts, or a JSON value, by its kind."""
        kind = self._entry(name)["kind"]
        return {"tensor": self.tensor, "table": self.table, "json": self.json}[kind](name)

    def tensor(self, name: str, lazy: bool = False) -> Any:
        """A tensor record as a numpy array; ``lazy=True`` gives a safetensors slice instead
        (``.get_shape()``, ``view[layer]``) that reads only the part indexed."""
        return self._read(name, "tensor", lambda path, entry: _read_tensor(path, entry, lazy))

    def table(self, name: str) -> list[dict]:
        """A table record as a list of row dicts."""
        return self._read(name, "table", lambda path, _: pq.read_table(path).to_pylist())

    def table_frame(self, name: str) -> Any:
        """A table record as a pandas DataFrame (needs pandas)."""
        return self._read(name, "table", lambda path, _: pq.read_table(path).to_pandas())

    def json(self, name: str) -> Any:
        """A JSON record."""
        return self._read(name, "json",
                          lambda path, _: json.loads(path.read_text(encoding="utf-8")))

    def records_of(self, plugin: str) -> dict[str, dict]:
        """The manifest entries of the records ``plugin`` made."""
        return {name: entry for name, entry in self.records.items()
                if entry.get("plugin") == plugin}

    def words(self) -> list[dict]:
        """Word timestamps from the cross-attention plugin, or ``[]`` if it did not run."""
        return self.record(WORDS_RECORD) if WORDS_RECORD in self.records else []

    def check_files(self) -> None:
        """Raise :class:`StoreError` if a file the manifest names is missing; nothing is read."""
        for name, entry in self.records.items():
            self._member_path(entry["file"], f"record {name}")
        audio = _section(self.manifest, "audio").get("file")
        if audio is not None:
            self._member_path(audio, "audio")

    def audio_bytes(self) -> bytes | None:
        """The stored FLAC bytes, or ``None`` if the trace kept no audio."""
        rel = _section(self.manifest, "audio").get("file")
        if rel is None:
            return None
        try:
            return self._member_path(rel, "audio").read_bytes()
        except OSError as err:
            raise StoreError(f"could not read the audio of trace {self.id}: {_reason(err)}; "
                             "re-run the trace") from err

    def audio(self, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int] | None:
        """The stored audio decoded to ``(samples, sample_rate)``, or ``None`` without audio.

        ``start`` / ``end`` (seconds) decode only that span — one window of an hour-long trace is
        read by seeking in the FLAC, not by decoding the hour.
        """
        rel = _section(self.manifest, "audio").get("file")
        if rel is None:
            return None
        import soundfile  # libsndfile reads the FLAC without torch, so drawing a waveform stays quick

        try:
            with soundfile.SoundFile(self._member_path(rel, "audio")) as flac:
                rate = flac.samplerate
                first = min(max(0, round((start or 0.0) * rate)), flac.frames)
                last = flac.frames if end is None else min(max(first, round(end * rate)), flac.frames)
                flac.seek(first)
                samples = flac.read(last - first, dtype="float32")  # [n] or [n, channel]
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise StoreError(f"the audio of trace {self.id} is corrupt ({err}); re-run the trace") from err
        except OSError as err:
            raise StoreError(f"could not read the audio of trace {self.id}: {_reason(err)}; "
                             "re-run the trace") from err
        return (samples.mean(axis=1) if samples.ndim > 1 else samples), int(rate)

    def __repr__(self) -> str:
        text = self.transcript
        short = text if len(text) <= 60 else text[:57] + "..."
        return (f"<Trace {self.id} model={self.model_id} records={len(self.records)} "
                f"transcript={short!r}>")

    def _repr_html_(self) -> str:
        rows = [("id", self.id), ("name", self.name), ("model", self.model_id),
                ("created", self.created), ("records", len(self.records)),
                ("transcript", self.transcript)]
        body = "".join(f"<tr><th style='text-align:left'>{key}</th>"
                       f"<td style='text-align:left'>{html.escape(str(value))}</td></tr>"
                       for key, value in rows)
        return f"<table>{body}</table>"

    def _read_manifest(self) -> dict[str, Any]:
        try:
            with open(self._member_path(MANIFEST, "manifest"), "rb") as file:
                raw = file.read(MAX_MANIFEST_BYTES + 1)
        except OSError as err:
            raise StoreError(f"could not read trace {self.id}: {_reason(err)}; "
                             f"check the permissions of {self.path}") from err
        if len(raw) > MAX_MANIFEST_BYTES:
            raise self._corrupt("manifest.json is larger than 16 MB")
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise self._corrupt(f"manifest.json is not valid JSON: {err}") from err
        self._check_manifest(manifest)
        return manifest

    def _check_manifest(self, manifest: Any) -> None:
        if not isinstance(manifest, dict):
            raise self._corrupt("manifest.json is not a JSON object")
        version = manifest.get("schema_version")
        if type(version) is not int or version < 1:
            raise self._corrupt("manifest.json has no valid schema_version")
        if version > SCHEMA_VERSION:
            raise StoreError(f"trace {self.id} was written by a newer whisper-probe (schema "
                             f"{version} > {SCHEMA_VERSION}); upgrade whisper-probe to read it")
        records = manifest.get("records")
        if not isinstance(records, dict):
            raise self._corrupt("manifest.json has no records table")
        for name, entry in records.items():
            if (not isinstance(entry, dict) or entry.get("kind") not in KINDS
                    or not _is_safe_relpath(entry.get("file"))):
                raise self._corrupt(f"the manifest entry of record {name!r} is invalid")
        audio = manifest.get("audio")
        if isinstance(audio, dict) and "file" in audio and not _is_safe_relpath(audio["file"]):
            raise self._corrupt("the manifest's audio file path is invalid")

    def _entry(self, name: str, kind: str | None = None) -> dict:
        entry = self.records.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(self.records), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else (
                f"it has {len(self.records)} records, see Trace.records")
            raise StoreError(f"trace {self.id} has no record {name!r}; {hint}")
        if kind is not None and entry["kind"] != kind:
            raise StoreError(f"record {name} of trace {self.id} is a {entry['kind']}, "
                             f"not a {kind}; read it with Trace.record")
        return entry

    def _read(self, name: str, kind: str, reader: Callable[[Path, dict], Any]) -> Any:
        entry = self._entry(name, kind)
        path = self._member_path(entry["file"], f"record {name}")
        try:
            return reader(path, entry)
        except (SafetensorError, pa.ArrowException, ValueError, RecursionError,
                OSError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise StoreError(f"record {name} of trace {self.id} is corrupt ({reason}); "
                             "re-run the trace") from err

    def _member_path(self, rel: str, what: str) -> Path:
        """The file ``rel`` of this trace, refused unless it resolves to a file inside it."""
        root = self.path.resolve()
        path = (root / rel).resolve() if _is_safe_relpath(rel) else None
        if path is None or not path.is_relative_to(root):
            raise self._corrupt(f"its {what} file {rel!r} points outside the trace")
        if not path.is_file():
            if what == "manifest":
                raise StoreError(f"{self.path} is not a trace (no manifest.json) or was not "
                                 "written completely; delete it")
            raise StoreError(f"trace {self.id} is missing its {what} file {rel}; "
                             "re-run the trace")
        return path

    def _member_files(self) -> list[str]:
        """Every file the manifest names, manifest first."""
        files = [MANIFEST] + [entry["file"] for entry in self.records.values()]
        audio = _section(self.manifest, "audio").get("file")
        return files + ([audio] if audio is not None else [])

    def _corrupt(self, reason: str) -> StoreError:
        return StoreError(f"trace {self.id} is corrupt ({reason}); re-run the trace")


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


def _checked_flac(data: bytes) -> bytes:
    if bytes(data[:4]) != b"fLaC":
        raise ValueError("add_audio takes FLAC bytes (probe.audio.encode_flac makes them)")
    return data


def _checked_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.name not in _SAFETENSORS_DTYPES.values():
        raise ValueError(f"cannot store a {dtype} tensor; use one of "
                         f"{sorted(set(_SAFETENSORS_DTYPES.values()))}")
    return dtype


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def _new_trace_id(name: str | None, created: datetime.datetime) -> str:
    """``<YYYYmmdd-HHMMSS>-<slug>-<6 hex>``; the slug is left out for unnamed traces."""
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:40].strip("-")
    parts = [created.strftime("%Y%m%d-%H%M%S"), slug, secrets.token_hex(3)]
    return "-".join(part for part in parts if part)


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


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for file in files:
            with open(os.path.join(folder, file), "rb+") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    # Makes new entries and renames durable.  Best effort: folders cannot be opened off POSIX,
    # and some network filesystems refuse to fsync them.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_if_empty(directory: Path) -> None:
    """Remove the store's temp folder once no writer uses it (another writer may have just made it)."""
    try:
        directory.rmdir()
    except OSError:
        pass
