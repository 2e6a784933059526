"""Hugging Face ``datasets`` as audio: one clip per row, decoded through this package's checks.

Local ``audiofolder`` directories, parquet files or directories, ``save_to_disk`` directories and
Hub datasets (streamed) are opened and checked when :func:`iter_dataset` is called; rows are
decoded as they are iterated, with the audio column cast to undecoded bytes/paths so that
decoding goes through :mod:`probe.audio.decode`.  Whatever is wrong with a dataset (no such split
or column, unreadable rows, offline Hub) raises a one-line :class:`~probe.errors.DatasetError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from probe.audio.checks import _reason, existing_file
from probe.audio.clips import AudioClip, _samples_sha256
from probe.audio.decode import _HEAD_BYTES, Opener, _bytes_opener, _decode, _file_opener
from probe.constants import SAMPLE_RATE
from probe.errors import AudioError, DatasetError, OptionError


@dataclass(frozen=True)
class DatasetSpec:
    """Which rows of which dataset: what ``probe run --dataset`` and the Ray engine read.

    ``text_column`` holds each row's reference transcript (e.g. minds14's ``transcription``);
    ``key_column`` a stable row id (default: the row's position); ``streaming`` reads a local
    dataset as an ``IterableDataset`` too (Hub datasets always stream)."""

    name: str
    config: str | None = None
    split: str = "train"
    audio_column: str | None = None
    text_column: str | None = None
    key_column: str | None = None
    limit: int | None = None
    streaming: bool = False

    @property
    def label(self) -> str:
        """The dataset as the manifest and the row ids name it (absolute path or Hub name, config)."""
        return _dataset_label(self.name, self.config)

    def source(self, index: int) -> str:
        return f"dataset:{self.label}[{self.split}]#{index}"


@dataclass(eq=False)
class DatasetRow:
    """One row, not yet decoded: its position, key, undecoded audio ({"bytes", "path"}) and other
    scalar columns.  :meth:`decode` makes the clip (an :class:`AudioError` for a corrupt row)."""

    spec: DatasetSpec
    index: int
    key: str
    audio: dict | None = field(repr=False)
    columns: dict[str, Any]

    @property
    def source(self) -> str:
        return self.spec.source(self.index)

    def decode(self) -> AudioClip:
        clip = _clip_from_value(self.audio, self.spec.audio_column or "audio", self.source)
        text = self.columns.get(self.spec.text_column) if self.spec.text_column else None
        origin = {"name": self.spec.label, "config": self.spec.config, "split": self.spec.split, "row": self.index,
                  "key": self.key if self.spec.key_column else None, "key_column": self.spec.key_column,
                  "text_column": self.spec.text_column}
        return dataclasses.replace(clip, row=dict(self.columns), dataset=origin,
                                   reference=None if text is None else str(text))


class OpenedDataset:
    """A dataset split opened and checked (columns exist), with its audio column undecoded."""

    def __init__(self, spec: DatasetSpec):
        _check_limit(spec.limit)
        label = spec.label
        ds = _open_split(spec.name, spec.config, spec.split, spec.streaming)  # opened now: a bad dataset fails here
        column = _audio_column(ds, spec.audio_column, label)
        for option, wanted in (("--text-column", spec.text_column), ("--key-column", spec.key_column)):
            if wanted is not None:
                _check_column(ds, wanted, label, option)
        self.spec = dataclasses.replace(spec, audio_column=column)
        self.ds = _as_undecoded_audio(ds, column, label)

    @property
    def random_access(self) -> bool:
        """Whether rows can be read by position (a map-style dataset), so readers can share it out."""
        return hasattr(self.ds, "select") and hasattr(self.ds, "__len__")

    def size(self) -> int | None:
        """How many rows :meth:`rows` yields; None when a streamed dataset does not say."""
        try:
            size = len(self.ds)
        except TypeError:  # a streamed dataset: use the Hub's split info when it has one
            splits = getattr(self.ds.info, "splits", None) or {}
            size = getattr(splits.get(self.spec.split), "num_examples", None) or None
        if size is None:
            return self.spec.limit
        return size if self.spec.limit is None else min(size, self.spec.limit)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[DatasetRow]:
        """Rows ``start`` to ``stop`` (within the limit), undecoded."""
        limit = self.spec.limit
        stop = limit if stop is None else (stop if limit is None else min(stop, limit))
        ds = self.ds
        if start or stop is not None:
            if self.random_access:
                ds = ds.select(range(start, min(stop, len(ds)) if stop is not None else len(ds)))
            else:
                ds = ds.skip(start) if start else ds
                ds = ds.take(stop - start) if stop is not None else ds
        column, key_column = self.spec.audio_column, self.spec.key_column
        for offset, row in enumerate(_rows(ds, f"dataset:{self.spec.label}[{self.spec.split}]")):
            index = start + offset
            columns = {k: v for k, v in row.items() if k != column and isinstance(v, (str, int, float, bool))}
            key = str(row.get(key_column)) if key_column else str(index)
            yield DatasetRow(self.spec, index, key, row[column], columns)


def iter_rows(spec: DatasetSpec) -> tuple[OpenedDataset, Iterator[DatasetRow]]:
    """The opened dataset and its rows, undecoded (see :class:`OpenedDataset`)."""
    opened = OpenedDataset(spec)
    return opened, opened.rows()


def iter_dataset(
    name_or_dir: str,
    config: str | None = None,
    split: str = "train",
    audio_column: str | None = None,
    limit: int | None = None,
    text_column: str | None = None,
) -> Iterator[AudioClip]:
    """Clips, one per row (up to ``limit``), of a local ``audiofolder`` directory, a parquet file
    or directory, a ``save_to_disk`` directory, or a Hugging Face Hub dataset (streamed).  The
    audio column is the first ``datasets.Audio`` column unless ``audio_column`` names one (a
    column of file paths works too).  The dataset is opened and checked when this is called, and
    rows are decoded as they are iterated.  Each clip's ``row`` holds the other scalar columns,
    its ``reference`` the ``text_column``'s text."""
    opened = OpenedDataset(DatasetSpec(name_or_dir, config, split, audio_column, text_column, limit=limit))
    return (row.decode() for row in opened.rows())


def dataset_size(
    name_or_dir: str,
    config: str | None = None,
    split: str = "train",
    audio_column: str | None = None,
    limit: int | None = None,
) -> int | None:
    """How many clips :func:`iter_dataset` will yield (a progress-bar hint); None if unknown."""
    return OpenedDataset(DatasetSpec(name_or_dir, config, split, audio_column, limit=limit)).size()


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise OptionError(f"limit {limit!r} is not a whole number >= 0")


def _datasets():
    import datasets

    return datasets


def _dataset_label(name_or_dir: str, config: str | None) -> str:
    local = Path(os.path.expanduser(os.fspath(name_or_dir)))
    name = os.path.abspath(local) if local.exists() else os.fspath(name_or_dir)
    return f"{name}:{config}" if config else name


def _open_split(name_or_dir: str, config: str | None, split: str, streaming: bool = False):
    """The requested split of a local or Hub dataset, or a DatasetError."""
    path = Path(os.path.expanduser(os.fspath(name_or_dir)))
    if path.exists():
        splits = _quietly(lambda: _load_local(path.absolute(), streaming))
        label = str(path.absolute())
    elif _looks_like_hub_name(os.fspath(name_or_dir)):
        splits = _quietly(lambda: _load_hub(os.fspath(name_or_dir), config))
        label = os.fspath(name_or_dir)
    else:
        raise DatasetError(
            f"dataset directory {path.absolute()} does not exist; pass an audiofolder directory, "
            "a parquet file or a Hugging Face Hub dataset name"
        )
    if split not in splits:
        raise DatasetError(
            f"dataset {label} has no split {split!r}; its splits are: {', '.join(splits)}; "
            "pick one with --split"
        )
    return splits[split]


def _looks_like_hub_name(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".")


def _load_local(path: Path, streaming: bool = False) -> dict:
    splits = _load_local_splits(path, streaming)
    if streaming:  # a save_to_disk folder or cached builder: read it row by row, as the Hub streams
        splits = {name: ds if isinstance(ds, _datasets().IterableDataset) else ds.to_iterable_dataset()
                  for name, ds in splits.items()}
    return splits


def _load_local_splits(path: Path, streaming: bool) -> dict:
    datasets = _datasets()
    try:
        if path.is_file():
            if path.suffix.lower() != ".parquet":
                raise DatasetError(
                    f"{path} is a file, not a dataset; pass a parquet file or a directory "
                    "(for a single audio file, load it as audio)"
                )
            return dict(datasets.load_dataset("parquet", data_files={"train": str(path)}, streaming=streaming))
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        builder = "parquet" if any(path.rglob("*.parquet")) else "audiofolder"
        return dict(datasets.load_dataset(builder, data_dir=str(path), streaming=streaming))
    except DatasetError:
        raise
    except Exception as error:  # datasets raises many types; all mean "cannot use this folder"
        raise DatasetError(
            f"cannot load dataset {path}: {_reason(error, '')}; pass a directory of audio files "
            "(optionally with metadata.csv), a parquet file, or a save_to_disk directory"
        ) from None


def _load_hub(name: str, config: str | None) -> dict:
    try:
        return dict(_datasets().load_dataset(name, config, streaming=True))
    except Exception as error:  # offline, unknown name or config, network trouble, ...
        raise DatasetError(
            f"{name} is not a local path and could not be loaded from the Hugging Face Hub "
            f"({_reason(error, '')}); check the name, config and network, or pass a local "
            "audiofolder directory or parquet file"
        ) from None


def _quietly(load: Callable[[], dict]) -> dict:
    """Run a datasets call without its progress bars (the caller shows its own)."""
    datasets = _datasets()
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return load()
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _audio_column(ds, wanted: str | None, label: str) -> str:
    """The column that holds audio: ``wanted`` if given, else the first ``datasets.Audio`` column."""
    features = ds.features or {}
    columns = list(features) or list(ds.column_names or [])
    listed = ", ".join(columns) or "none known"
    if wanted is not None:
        if columns and wanted not in columns:
            raise DatasetError(
                f"dataset {label} has no column {wanted!r}; its columns are: {listed}; "
                "pass one of them with --audio-column"
            )
        return wanted
    audio = [name for name, feature in features.items() if isinstance(feature, _datasets().Audio)]
    if not audio:
        raise DatasetError(
            f"dataset {label} has no audio column (its columns are: {listed}); "
            "pass the column that holds audio or file paths with --audio-column"
        )
    return audio[0]


def _check_column(ds, wanted: str, label: str, option: str) -> None:
    columns = list(ds.features or {}) or list(ds.column_names or [])
    if columns and wanted not in columns:
        raise DatasetError(f"dataset {label} has no column {wanted!r}; its columns are: {', '.join(columns)}; "
                           f"pass one of them with {option}")


def _as_undecoded_audio(ds, column: str, label: str):
    """Make ``column`` yield {"bytes", "path"} so decoding goes through this module's checks."""
    try:
        return ds.cast_column(column, _datasets().Audio(decode=False))
    except Exception as error:
        raise DatasetError(
            f"column {column!r} of dataset {label} cannot be read as audio ({_reason(error, '')}); "
            "pass a column of audio or file paths with --audio-column"
        ) from None


def _rows(ds, label: str) -> Iterator[dict]:
    """Rows of a dataset; a failure to read them (not to decode audio) is a DatasetError."""
    iterator = iter(ds)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            raise DatasetError(f"cannot read rows of dataset {label}: {_reason(error, '')}") from None
        yield row


def _clip_from_value(value: dict | None, column: str, source: str) -> AudioClip:
    if not value or not (value.get("bytes") or value.get("path")):
        raise AudioError(f"{source} has no audio in column {column!r}; fix or drop that row")
    data, path = value.get("bytes"), value.get("path")
    if data:
        samples, rate, channels = _decode(_bytes_opener(data), source, "mix", data[:_HEAD_BYTES])
    elif os.path.exists(path):
        with open(existing_file(path), "rb") as handle:
            head = handle.read(_HEAD_BYTES)
        samples, rate, channels = _decode(_file_opener(path), source, "mix", head)
    elif "://" not in path and "::" not in path:
        raise AudioError(
            f"{source}: audio file {path} does not exist; check the dataset's paths "
            "and that --audio-column names the audio column"
        )
    else:  # remote or archived file: let datasets open it
        samples, rate, channels = _decode(_datasets_opener(value), source, "mix", None)
    return AudioClip(samples, source, _samples_sha256(samples), rate, channels)


def _datasets_opener(value: dict) -> Opener:
    def open_(channels):
        return _datasets().Audio(sampling_rate=SAMPLE_RATE, num_channels=channels).decode_example(value)

    return open_
