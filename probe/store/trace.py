"""Reading one stored trace: its manifest, records and audio, lazily and checked.

:class:`Trace` opens a trace folder by reading and checking only ``manifest.json``; a record is
read when asked for (a tensor can be sliced without loading its file), and every file is checked
(path, header, shape, dtype) as it is read.  Anything wrong with a trace raises
:class:`~probe.errors.StoreError` naming the trace and what to do.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError

from probe.errors import StoreError
from probe.store.layout import (KINDS, MANIFEST, MAX_MANIFEST_BYTES, SCHEMA_VERSION, _reason, _section,
                                _text_or_none)
from probe.store.safety import _is_safe_relpath, _read_tensor



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
        return self._read(name, "table", lambda path, _: _read_parquet(path).to_pylist())

    def table_frame(self, name: str) -> Any:
        """A table record as a pandas DataFrame (needs pandas)."""
        return self._read(name, "table", lambda path, _: _read_parquet(path).to_pandas())

    def json(self, name: str) -> Any:
        """A JSON record."""
        return self._read(name, "json",
                          lambda path, _: json.loads(path.read_text(encoding="utf-8")))

    def records_of(self, plugin: str) -> dict[str, dict]:
        """The manifest entries of the records ``plugin`` made."""
        return {name: entry for name, entry in self.records.items()
                if entry.get("plugin") == plugin}

    def words(self) -> list[dict]:
        """Word timestamps (word, start, end in seconds of the clip, window): the record a plugin
        describes with ``"role": "words"`` (``probe_describe_records``; the built-in
        cross_attention's), or ``[]`` if none ran."""
        from probe.contributions import current  # the plugins' descriptions; loaded only when asked

        described = current()
        for name, entry in self.records.items():
            if described.describe(name, entry).get("role") == "words":
                return self.record(name)
        return []

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
        """In a notebook: summary, prompt, player, transcript and a few figures (:mod:`probe.notebook`)."""
        from probe.notebook import trace_html

        return trace_html(self)

    def figure(self, name: str, **options: Any) -> Any:
        """Figure ``name`` (``probe.figures.FIGURES``, the dashboard's and the export's) as a
        matplotlib Figure; ``options`` are the figure's choices (``layer=``, ``window=``, ...)."""
        from probe.notebook import figure

        return figure(self, name, **options)

    def show(self, name: str, **options: Any) -> Any:
        """Display figure ``name`` in IPython (returns ``None``); elsewhere return the Figure."""
        from probe.notebook import show

        return show(self, name, **options)

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


def _read_parquet(path: Path) -> pa.Table:
    """One parquet file as a table, read directly (``pq.read_table`` goes through
    ``pyarrow.dataset``, whose import alone takes a third of a second: pandas comes with it)."""
    with pq.ParquetFile(path) as handle:
        return handle.read()
