"""The trace store: where runs are written, listed, opened and read back.

A store is a folder of traces; a trace is one folder holding ``manifest.json``, its records
(tensors as safetensors, tables as Parquet, JSON) and a FLAC copy of the audio.  Writers build a
trace in ``<store>/.tmp/`` and publish it with one atomic rename, so readers only ever see complete
traces; readers load lazily and treat every trace as untrusted input.  The parts:

- :mod:`probe.store.layout` — the on-disk layout: file names, schema version, limits, where the
  store is (:func:`default_store_dir`).
- :mod:`probe.store.store` — :class:`Store`: list, open, resolve, delete and import traces.
- :mod:`probe.store.writer` — :class:`TraceWriter`: stage one trace's records and publish it.
- :mod:`probe.store.queue` — :class:`WriteQueue`: the background thread that writes the files.
- :mod:`probe.store.records` — what a tensor or table record's value becomes on disk.
- :mod:`probe.store.trace` — :class:`Trace`: read one trace's manifest, records and audio.
- :mod:`probe.store.safety` — the checks that make reading an untrusted trace safe.

Nothing here imports torch: the dashboard reads traces without it.
"""

from probe.store.layout import (AUDIO_FILE, KINDS, MANIFEST, MAX_MANIFEST_BYTES, MAX_TENSOR_HEADER_BYTES,
                                SCHEMA_VERSION, _remove_if_empty, default_store_dir)
from probe.store.queue import WriteQueue
from probe.store.store import Store, TraceInfo
from probe.store.trace import Trace
from probe.store.writer import TraceExists, TraceWriter

__all__ = ["TraceExists", "AUDIO_FILE", "KINDS", "MANIFEST", "MAX_MANIFEST_BYTES", "MAX_TENSOR_HEADER_BYTES", "SCHEMA_VERSION",
           "Store", "Trace", "TraceInfo", "TraceWriter", "WriteQueue", "default_store_dir",
           "_remove_if_empty"]  # the last is private: probe.export's bundle import cleans .tmp with it
