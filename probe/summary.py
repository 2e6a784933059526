"""A store's summary: one row per trace (what it is, how well it was transcribed, how sure the
model was, and the columns plugins add), the results across those rows, and the index that keeps
both quick on a store of 10 000 traces.

:func:`summary_table` is what ``probe summary`` and the dashboard's Dataset view read: a
``pandas.DataFrame``, newest trace first, with the columns of :data:`CORE_COLUMNS`, then every other
key of the manifests' ``metrics`` (the reference's word edits, plugins' ``probe_trace_metrics``),
then the columns plugins return from ``probe_summary_columns``.  A trace that cannot be opened is a
row with only ``id`` and ``error`` set, never an exception (as ``Store.list()`` lists it).  Traces
made before manifests had ``metrics`` get what their manifest still tells, worked out as the runner
works out ``metrics``: the duration, language, no-speech and language probability, the windows and
the tokens they kept, the windows' token-weighted average log-probability and the transcript's
compression ratio; their WER/CER stay empty.
:func:`summary_reduce` adds the results across the rows: the core's aggregates under ``"core"`` and
each plugin's ``probe_summary_reduce`` under its name.

The index is ``<store>/.summary/index.parquet`` (a hidden name, so never a trace): every row with
the size and modification time of the manifest it was read from.  A call lists the store's folders,
reads the manifests of new or changed traces only, drops deleted ones, and publishes the index again
(one atomic rename) only if something changed.  It is rebuilt from every manifest when the summary
plugins (those implementing ``probe_summary_columns``, by name and version) or whisper-probe's version
differ from the ones it was built with; bump your plugin's ``__version__`` when its columns change.
Readers never depend on it: an index that is missing, unreadable or cannot be written (a read-only
store, a full disk, another process publishing at the same moment) only means computing the rows.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from probe.errors import OptionError, PluginError, StoreError
from probe.metrics import token_weighted_logprob
from probe.publish import staged
from probe.store import MANIFEST, Store, Trace

SUMMARY_DIR = ".summary"
INDEX_FILE = "index.parquet"
INDEX_VERSION = 1  # bump when what a row holds changes: older indexes are rebuilt
_META_KEY = b"whisper_probe.summary"
_KEY_COLUMNS = ("_mtime_ns", "_size")  # the manifest a row was read from; index only
_STALE_STAGE_SECONDS = 3600  # a stage this old was left by a process that died mid-write

# The core's columns and their types, in the order a summary lists them.
_STRING, _FLOAT, _INT, _BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()
CORE_TYPES: dict[str, pa.DataType] = {
    "id": _STRING, "name": _STRING, "created": _STRING, "model": _STRING, "source": _STRING,
    "duration": _FLOAT, "language": _STRING, "task": _STRING, "transcript": _STRING, "reference": _STRING,
    "dataset": _STRING, "config": _STRING, "split": _STRING, "row": _INT, "key": _STRING,
    "wer": _FLOAT, "cer": _FLOAT, "error_rate": _FLOAT, "headline": _STRING,
    "avg_logprob": _FLOAT, "compression_ratio": _FLOAT, "no_speech_probability": _FLOAT,
    "language_probability": _FLOAT, "tokens": _INT, "windows": _INT, "interventions": _BOOL, "error": _STRING,
}
CORE_COLUMNS = tuple(CORE_TYPES)
# metrics keys that are not core columns but whose type is known; listed first among the metrics
METRIC_TYPES: dict[str, pa.DataType] = {"substitutions": _INT, "deletions": _INT, "insertions": _INT,
                                        "reference_words": _INT}


def summary_table(store: Store | str | os.PathLike, pm=None, where: str | None = None):
    """One row per trace of ``store``, newest first (see the module docstring for the columns).

    :param store: a :class:`~probe.store.Store` or its folder.
    :param pm: the plugins asked for columns (``probe_summary_columns``); default: the plugins this
        process presents (:func:`plugin_manager`).
    :param where: a filter over the columns, as ``pandas.DataFrame.query`` reads it, e.g.
        ``"wer > 0.3 and language == 'zh'"`` (a column with dots in backticks: ```my_plugin.score` > 1``);
        a bad one is a one-line :class:`~probe.errors.OptionError`.
    """
    store = store if isinstance(store, Store) else Store(store, create=False)
    pm = plugin_manager() if pm is None else pm
    table, plugin_columns = _indexed(store, pm)
    types = {_INT: _pandas_int(), _BOOL: _pandas_bool()}
    frame = _filtered(table.drop_columns(list(_KEY_COLUMNS)).to_pandas(types_mapper=types.get), where)
    frame.attrs["plugin_columns"] = [c for c in plugin_columns if c in frame.columns]
    return frame


def summary_reduce(table, pm=None) -> dict:
    """Results across the rows of ``table`` (a :func:`summary_table`, filtered or not): the core's
    aggregates under ``"core"``, then each plugin's ``probe_summary_reduce`` result under its name.

    The core's: ``count`` (rows), ``broken`` (rows with an ``error``), ``with_reference``, ``wer``,
    ``cer`` and ``error_rate`` over the traces with a reference, each rate weighted by the trace's
    reference words (so ``wer`` is the corpus WER: all word edits over all reference words), the
    mean ``avg_logprob`` and the ``total_duration`` of audio in seconds; ``None`` where no row has it.
    """
    from probe.plugin_manager import ask

    pm = plugin_manager() if pm is None else pm
    results = ask(pm, "probe_summary_reduce", expect=lambda result: isinstance(result, dict), table=table.copy())
    reduced = {"core": {**_plain(results.pop("core", {}), "core"), **core_aggregates(table)}}
    for plugin, result in results.items():
        reduced[plugin] = _plain(result, plugin)
    return reduced


def core_aggregates(table) -> dict:
    """The core's results across ``table``'s rows (see :func:`summary_reduce`)."""
    broken = int(table["error"].notna().sum()) if "error" in table else 0
    scored = table[table["wer"].notna()] if "wer" in table else table.iloc[:0]
    words = (scored["reference_words"].astype("float64").fillna(0.0) if "reference_words" in scored
             else None)

    def weighted(column: str) -> float | None:
        if column not in scored:
            return None
        values = scored[column].astype("float64")
        known = values.notna()
        if not known.any():
            return None
        if words is not None and words[known].sum() > 0:
            return float((values[known] * words[known]).sum() / words[known].sum())
        return float(values[known].mean())

    def mean(column: str) -> float | None:
        values = table[column].astype("float64").dropna() if column in table else ()
        return float(values.mean()) if len(values) else None

    duration = table["duration"].astype("float64").dropna() if "duration" in table else ()
    return {"count": int(len(table)), "broken": broken, "with_reference": int(len(scored)),
            "wer": weighted("wer"), "cer": weighted("cer"), "error_rate": weighted("error_rate"),
            "avg_logprob": mean("avg_logprob"), "total_duration": float(duration.sum()) if len(duration) else None}


def plugin_manager(plugins: Iterable = ()):
    """The plugins a summary asks: those this process presents (the built-ins' torch-free parts, the
    entry points, ``$WHISPER_PROBE_PLUGINS`` and what ``probe dashboard -p`` / ``probe export -p``
    configured, :func:`probe.contributions.configure`), plus ``plugins`` (``-p`` references,
    ``no:NAME`` leaves one out).  Made once per configuration."""
    from probe import contributions
    from probe.plugin_manager import DISABLE_AUTOLOAD_ENV, get_plugin_manager

    extra = tuple(ref for ref in os.environ.get(contributions.PLUGINS_ENV, "").split(os.pathsep) if ref.strip())
    configured = contributions._CONFIG  # what configure() set; contributions keeps no plugin manager to share
    refs, disabled = extra + tuple(configured["plugins"]) + tuple(plugins), tuple(configured["disabled"])
    key = (refs, disabled, tuple(sys.path), os.environ.get(DISABLE_AUTOLOAD_ENV))
    pm = _MANAGERS.get(key)
    if pm is None:
        pm = get_plugin_manager(refs, disabled, presentation=True)
        _MANAGERS.clear()  # one configuration at a time, as contributions.current() keeps
        _MANAGERS[key] = pm
    return pm


_MANAGERS: dict[tuple, Any] = {}


# --- rows ------------------------------------------------------------------------------------------

def trace_row(trace: Trace) -> dict:
    """The core's row of ``trace``: its manifest's fields and ``metrics`` (or, for a trace made before
    manifests had ``metrics``, what can be derived), every other metrics key as its own column."""
    manifest = trace.manifest
    metrics, audio, decode = _section(manifest, "metrics"), _section(manifest, "audio"), _section(manifest, "decode")
    dataset, reference = _section(manifest, "dataset"), _section(manifest, "reference")
    windows = manifest.get("windows") if isinstance(manifest.get("windows"), list) else []
    row: dict[str, Any] = {
        "id": trace.id, "name": trace.name, "created": trace.created or None, "model": trace.model_id,
        "source": trace.audio_source,
        "duration": _first_number(metrics.get("duration"), audio.get("duration")),
        "language": _text(metrics.get("language")) or _text(manifest.get("language")),
        "task": _text(decode.get("task")), "transcript": trace.transcript, "reference": _text(reference.get("text")),
        "dataset": _text(dataset.get("name")), "config": _text(dataset.get("config")),
        "split": _text(dataset.get("split")), "row": _whole(dataset.get("row")), "key": _text(dataset.get("key")),
        "wer": _number(metrics.get("wer")), "cer": _number(metrics.get("cer")),
        "error_rate": _number(metrics.get("error_rate")), "headline": _text(metrics.get("headline")),
        "avg_logprob": _first_number(metrics.get("avg_logprob"), lambda: token_weighted_logprob(w.get("signals") for w in windows if isinstance(w, dict))),
        "compression_ratio": _first_number(metrics.get("compression_ratio"), lambda: _text_ratio(trace.transcript)),
        "no_speech_probability": _first_number(metrics.get("no_speech_probability"),
                                               manifest.get("no_speech_probability")),
        "language_probability": _first_number(metrics.get("language_probability"),
                                              manifest.get("language_probability")),
        "tokens": _whole(metrics["tokens"]) if "tokens" in metrics else _kept_tokens(windows),
        "windows": _whole(metrics.get("windows")) if "windows" in metrics else len(windows),
        "interventions": bool(manifest.get("interventions")), "error": None,
    }
    for key, value in metrics.items():
        if isinstance(key, str) and key not in row:
            row[key] = _whole(value) if key in METRIC_TYPES else _scalar(value)
    return row


def _row_of(store: Store, trace_id: str, pm) -> tuple[dict, list[str]] | None:
    """The row of one trace with its plugin columns, and their names; None if it is gone."""
    from probe.plugin_manager import ask

    try:  # the id is a folder the store listed (no symlink, no hidden name): opened without checking again
        trace = Trace(store.path / trace_id)
    except StoreError as err:
        if not (store.path / trace_id).is_dir():
            return None  # deleted between listing and reading
        return {"id": trace_id, "error": str(err)}, []
    row = trace_row(trace)
    added: list[str] = []
    for plugin, columns in ask(pm, "probe_summary_columns", expect=lambda r: isinstance(r, dict), trace=trace).items():
        for column, value in columns.items():
            value = _cell(value)  # a numpy scalar as its number
            if not isinstance(column, str) or column in CORE_TYPES:
                raise PluginError(f"plugin {plugin!r} returned the column {column!r} from probe_summary_columns, "
                                  "which is not a name it may use; start its columns with the plugin's name")
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise PluginError(f"plugin {plugin!r} returned a {type(value).__name__} for column {column!r} from "
                                  "probe_summary_columns; a column holds str, int, float, bool or None")
            row[column] = value
            added.append(column)
    return row, added


# --- the index -------------------------------------------------------------------------------------

def index_path(store: Store) -> Path:
    """Where ``store``'s summary index is kept."""
    return store.path / SUMMARY_DIR / INDEX_FILE


def _indexed(store: Store, pm) -> tuple[pa.Table, list[str]]:
    """Every row, from the index where the manifest is unchanged, read afresh where not, and the
    plugin columns; the index published again if anything changed (best effort)."""
    import probe
    from probe.plugin_manager import implementers, plugin_version

    plugins = {name: plugin_version(pm.get_plugin(name)) for name in implementers(pm, "probe_summary_columns")}
    built_with = {"version": INDEX_VERSION, "probe": probe.__version__, "plugins": plugins}
    keys = _manifest_keys(store)
    index, plugin_columns = _read_index(store, built_with)
    known: dict[str, tuple] = {}
    if index is not None:
        known = dict(zip(index["id"].to_pylist(), zip(*(index[c].to_pylist() for c in _KEY_COLUMNS))))
    fresh = [trace_id for trace_id, key in keys.items() if known.get(trace_id) != key]
    if index is not None and not fresh and len(known) == len(keys):
        return index, plugin_columns
    rows = []
    for trace_id in fresh:
        found = _row_of(store, trace_id, pm)
        if found is None:
            continue
        row, added = found
        plugin_columns += [column for column in added if column not in plugin_columns]
        rows.append({**row, "_mtime_ns": keys[trace_id][0], "_size": keys[trace_id][1]})
    new = _arrow(rows)
    if index is not None:
        kept = [i for i, trace_id in enumerate(index["id"].to_pylist()) if keys.get(trace_id) == known[trace_id]]
        new = _merged(index.take(pa.array(kept, type=pa.int64())), new)
    table = _ordered(new, plugin_columns)
    _write_index(store, table, {**built_with, "plugin_columns": plugin_columns})
    return table, plugin_columns


def _manifest_keys(store: Store) -> dict[str, tuple[int, int]]:
    """Every trace folder's manifest as (mtime_ns, size); (-1, -1) where it has none."""
    keys, root = {}, os.fspath(store.path)
    for trace_id in store:
        try:  # plain strings: pathlib's joins cost more than the stat on 10 000 traces
            stat = os.stat(os.path.join(root, trace_id, MANIFEST))
            keys[trace_id] = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            keys[trace_id] = (-1, -1)
    return keys


def _read_index(store: Store, built_with: dict) -> tuple[pa.Table | None, list[str]]:
    """The index and its plugin columns, or (None, []) if there is none usable for ``built_with``."""
    try:
        table = pq.read_table(index_path(store))
        meta = json.loads((table.schema.metadata or {})[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None, []
    if not isinstance(meta, dict) or {k: meta.get(k) for k in built_with} != built_with:
        return None, []
    names = set(table.column_names)
    ids = table["id"].to_pylist() if "id" in names else []
    if not (set(CORE_COLUMNS) | set(_KEY_COLUMNS)) <= names or len(set(ids)) != len(ids) or None in ids:
        return None, []
    expected = {**CORE_TYPES, **dict.fromkeys(_KEY_COLUMNS, _INT)}
    if any(table.schema.field(c).type not in (kind, pa.null()) for c, kind in expected.items()):
        return None, []  # not what this version writes: made again
    plugin_columns = meta.get("plugin_columns")
    return table, [c for c in plugin_columns if c in names] if isinstance(plugin_columns, list) else []


def _write_index(store: Store, table: pa.Table, meta: dict) -> None:
    """Publish ``table`` as the index; a store that cannot take it (read-only, full) keeps none."""
    path = index_path(store)
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    try:
        with staged(path, is_dir=False) as stage:
            pq.write_table(table, stage)
    except (OSError, pa.ArrowException):
        return
    _remove_stale_stages(path.parent)


def _remove_stale_stages(folder: Path) -> None:
    # a process killed while writing leaves its stage (.index.<hex>.part.parquet) behind
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".index.") and entry.name.endswith(".part.parquet"):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > _STALE_STAGE_SECONDS:
                        os.unlink(entry.path)


def _arrow(rows: list[dict]) -> pa.Table:
    """Rows as a table: the core's columns typed, others as pyarrow infers them (text where their
    values mix types)."""
    columns = [*CORE_COLUMNS, *_KEY_COLUMNS, *(c for c in dict.fromkeys(k for row in rows for k in row)
                                               if c not in CORE_TYPES and c not in _KEY_COLUMNS)]
    arrays = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        known = CORE_TYPES.get(column) or METRIC_TYPES.get(column) or (_INT if column in _KEY_COLUMNS else None)
        try:
            arrays[column] = pa.array(values, type=known, from_pandas=True)
        except (pa.ArrowException, OverflowError, TypeError):
            arrays[column] = pa.array([None if v is None else str(v) for v in values], type=_STRING)
    return pa.table(arrays)


def _merged(kept: pa.Table, new: pa.Table) -> pa.Table:
    try:
        return pa.concat_tables([kept, new], promote_options="permissive")
    except (pa.ArrowException, TypeError):  # a column whose type differs: through Python, made text
        return _arrow(kept.to_pylist() + new.to_pylist())


def _ordered(table: pa.Table, plugin_columns: list[str]) -> pa.Table:
    """Newest first; the core's columns, then the metrics (known ones first), then plugin columns."""
    names = table.column_names
    metrics = sorted((c for c in names if c not in CORE_TYPES and c not in plugin_columns and c not in _KEY_COLUMNS),
                     key=lambda c: (list(METRIC_TYPES).index(c) if c in METRIC_TYPES else len(METRIC_TYPES), c))
    order = [*CORE_COLUMNS, *metrics, *(c for c in plugin_columns if c in names), *_KEY_COLUMNS]
    return table.select(order).sort_by([("created", "descending"), ("id", "descending")])


# --- filtering -------------------------------------------------------------------------------------

def _filtered(frame, where: str | None):
    if where is None or not where.strip():
        return frame
    try:
        picked = frame.query(where, engine="python")
        if not hasattr(picked, "columns") or list(picked.columns) != list(frame.columns):
            raise ValueError("it is not a condition on the rows")
    except Exception as exc:  # noqa: BLE001 - whatever pandas makes of the user's expression
        raise OptionError(f"cannot filter the summary by {where!r}: {_reason(exc, frame)}; write a condition on "
                          "its columns such as \"wer > 0.3 and language == 'zh'\" (a column with dots in "
                          "backticks: `my_plugin.score` > 1)") from None
    return picked.reset_index(drop=True)


def _reason(exc: Exception, frame) -> str:
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    missing = re.search(r"name '([^']+)' is not defined", str(exc))
    if missing:
        close = difflib.get_close_matches(missing.group(1), [str(c) for c in frame.columns], n=3)
        reason = f"there is no column {missing.group(1)!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
    return reason


# --- values ----------------------------------------------------------------------------------------

def _section(manifest: dict, key: str) -> dict:
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _first_number(*values: Any) -> float | None:
    """The first of ``values`` that is a finite number; a function among them is called only if reached."""
    for value in values:
        number = _number(value() if callable(value) else value)
        if number is not None:
            return number
    return None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63 else None


def _scalar(value: Any) -> Any:
    """A metrics value as a cell: scalars as they are (numbers not finite as empty), anything else
    (a manifest is untrusted) as its JSON text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return _whole(value) if _whole(value) is not None else float(value)
    if isinstance(value, float):
        return _number(value)
    return json.dumps(value, default=str)


def _text_ratio(transcript: str) -> float:
    """openai-whisper's compression ratio of the transcript (what ``metrics`` holds; traces before it)."""
    from probe.signals import text_compression_ratio

    return round(text_compression_ratio(transcript), 4)


def _kept_tokens(windows: list) -> int | None:
    """The transcript's tokens, each window's ``kept`` added up (what ``metrics`` holds; traces before it)."""
    kept = [_whole(window.get("kept")) if isinstance(window, dict) else None for window in windows]
    return sum(kept) if kept and None not in kept else None


def _plain(value: Any, plugin: str) -> Any:
    """``value`` as plain JSON data (numpy scalars as numbers, NaN as None); a plugin's result that is
    not JSON-able is a one-line error naming it."""
    if isinstance(value, dict):
        return {str(k): _plain(v, plugin) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, plugin) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    raise PluginError(f"plugin {plugin!r} returned a {type(value).__name__} in its probe_summary_reduce result; "
                      "return numbers, strings, lists and dicts")


def records(frame) -> list[dict]:
    """``frame``'s rows as plain JSON data (missing values as None): ``probe summary --json``'s rows."""
    columns = [str(c) for c in frame.columns]
    return [{c: _cell(v) for c, v in zip(columns, values)} for values in frame.itertuples(index=False, name=None)]


def _cell(value: Any) -> Any:
    """A table's value as plain Python: numpy scalars as numbers, missing (NaN, NA) as None."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def _pandas_int():
    import pandas as pd

    return pd.Int64Dtype()


def _pandas_bool():
    import pandas as pd

    return pd.BooleanDtype()
