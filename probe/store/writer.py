"""Writing one trace: records and audio staged in ``<store>/.tmp/<id>/``, published by one rename.

:class:`TraceWriter` registers each record in the manifest and writes its file now or, given a
:class:`~probe.store.queue.WriteQueue`, on the queue's thread; :meth:`TraceWriter.commit` writes
the manifest, fsyncs the staged files and renames the folder into the store
(:func:`probe.publish.publish`), so a crashed or failing run never leaves a half trace and readers
only ever see complete ones.  Trace ids are
``<YYYYmmdd-HHMMSS>-<slug>-<6 hex>`` and reserved by an exclusive mkdir, so concurrent writers
never share one.  A caller may instead name the id (a dataset run's deterministic row id,
:mod:`probe.dataset_runs`): it is refused with :class:`TraceExists` when the store holds it
already, and a writer that finds it published by someone else meanwhile raises the same at commit.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import secrets
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from probe.errors import PluginError, StoreError
from probe.publish import PublishError, publish
from probe.store.layout import (AUDIO_FILE, MANIFEST, SCHEMA_VERSION, _RECORD_FOLDERS, _TENSOR_KEY, _remove_if_empty,
                                _write_error)
from probe.store.records import _arrow_table, _host_array



class TraceExists(StoreError):
    """The trace id a writer was asked for is already in the store (traced before, or by another
    run just now); ``trace_id`` names it."""

    def __init__(self, message: str, trace_id: str):
        super().__init__(message)
        self.trace_id = trace_id


if TYPE_CHECKING:
    from probe.store.queue import WriteQueue
    from probe.store.store import Store
    from probe.store.trace import Trace


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

    def __init__(self, store: Store, name: str | None = None, queue: WriteQueue | None = None,
                 trace_id: str | None = None):
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
        self.id, self._dir = self._reserve(name) if trace_id is None else self._reserve_named(trace_id)

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

        def write_manifest_and_publish():
            manifest = {"schema_version": SCHEMA_VERSION, "id": self.id,
                        "created": self._created.isoformat(), **fields, "records": self._records}
            if audio is not None:
                manifest["audio"] = {**(manifest.get("audio") or {}), **audio}
            (self._dir / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            try:
                publish(self._dir, self.store.path / self.id, durable=True)
            except PublishError:
                if (self.store.path / self.id).exists():  # a named id published meanwhile by another run
                    self._remove_staging()
                    raise self._exists() from None
                raise
            _remove_if_empty(self._dir.parent)

        self._io(write_manifest_and_publish)
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

    def _reserve_named(self, trace_id: str) -> tuple[str, Path]:
        # A named id's stage gets a random suffix: a run killed while writing it left its stage
        # behind (hidden in .tmp), and the retry must not trip over it.
        from probe.store.safety import _is_plain_name

        if not _is_plain_name(trace_id):
            raise ValueError(f"trace id {trace_id!r} is not a plain folder name")
        if (self.store.path / trace_id).exists():
            raise self._exists(trace_id)
        staging = self.store._tmp_dir() / f"{trace_id}.{secrets.token_hex(4)}"
        try:
            staging.mkdir(parents=True)
        except OSError as err:
            raise _write_error(self.store.path, err) from err
        return trace_id, staging

    def _exists(self, trace_id: str | None = None) -> TraceExists:
        trace_id = trace_id or self.id
        return TraceExists(f"trace {trace_id} is already in store {self.store.path}", trace_id)

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
        # Record names are free text ("my_plugin.blocks.0 / mean"); a name
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


def _checked_flac(data: bytes) -> bytes:
    if bytes(data[:4]) != b"fLaC":
        raise ValueError("add_audio takes FLAC bytes (probe.audio.encode_flac makes them)")
    return data


def _new_trace_id(name: str | None, created: datetime.datetime) -> str:
    """``<YYYYmmdd-HHMMSS>-<slug>-<6 hex>``; the slug is left out for unnamed traces."""
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:40].strip("-")
    parts = [created.strftime("%Y%m%d-%H%M%S"), slug, secrets.token_hex(3)]
    return "-".join(part for part in parts if part)

