"""Audio in: everything that turns user audio into the 16 kHz mono float32 samples Whisper hears.

This module owns decoding audio files (any format FFmpeg reads, through torchcodec), numpy/torch
arrays and rows of Hugging Face ``datasets`` datasets into :class:`AudioClip` objects, splitting a
clip into the 30 s :class:`Window` s that Whisper processes one at a time, and the FLAC copy of a
clip that the trace store keeps.  Units: samples are float32 in [-1, 1] (roughly; nothing is
clipped) at :data:`SAMPLE_RATE` Hz, shaped ``[n_samples]``; times are seconds from the clip start.
Everything a user can get wrong (missing, empty, corrupt or non-audio input, NaN samples, a dataset
without audio) raises :class:`~probe.errors.AudioError`, :class:`~probe.errors.DatasetError` or
:class:`~probe.errors.OptionError` with a one-line message; torchcodec, FFmpeg and ``datasets``
tracebacks never reach the user for these.  Memory: a decoded clip is held once, as float32 mono
(a 2-hour file is 460 MB); windows are views into it, not copies.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import torch

from probe.constants import SAMPLE_RATE, WINDOW_SECONDS  # noqa: F401  (re-exported: probe.audio.SAMPLE_RATE)
from probe.errors import AudioError, DatasetError, OptionError

WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS  # 480000

# FFmpeg's default stereo -> mono downmix is (L + R) / sqrt(2); scaling by this gives the mean.
_STEREO_DOWNMIX_TO_MEAN = 1.0 / math.sqrt(2.0)
_CHANNEL_NAMES = {"left": 0, "right": 1}
# A file whose header promises more audio than decodes by more than this is truncated/corrupt.
_TRUNCATION_SLACK_SECONDS = 0.25
_TRUNCATION_SLACK_FRACTION = 0.02
_HEAD_BYTES = 64 * 1024
_WAV_UNKNOWN_SIZE = 0x7FFF0000  # writers that stream put placeholders (0xFFFFFFFF, 0x7FFFF000) here
_INT_SCALES = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


@dataclass(eq=False)
class AudioClip:
    """One piece of audio, decoded to what Whisper hears."""

    samples: np.ndarray = field(repr=False)  # float32 [n_samples], mono, 16 kHz, finite
    source: str  # absolute path, "array", or "dataset:<name>[<split>]#<row>"
    sha256: str  # of the original file bytes (files) or of the float32 samples (arrays, rows)
    original_sample_rate: int
    original_channels: int
    row: dict[str, Any] | None = None  # a dataset row's other scalar columns (text, language, ...)
    channel: str | int = "mix"  # what became the mono signal: "mix", "left", "right" or a channel number

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE


@dataclass(eq=False)
class Window:
    """A <= 30 s stretch of a clip, as Whisper processes it."""

    index: int
    start: float  # seconds within the clip
    end: float  # seconds within the clip
    samples: np.ndarray = field(repr=False)  # float32 [<= WINDOW_SAMPLES], a view into the clip


# --------------------------------------------------------------------------------------------
# Files and encoded bytes
# --------------------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, channel: str | int = "mix") -> AudioClip:
    """Decode an audio file to a 16 kHz mono clip.

    ``channel``: "mix" (mean of all channels), "left"/"right", or a channel number (0-based).
    """
    file = existing_file(path)
    label = str(file)
    with open(file, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    samples, rate, channels = _decode(_file_opener(label), label, channel, head)
    return AudioClip(samples, label, _file_sha256(file), rate, channels, channel=channel)


def decode_bytes(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode encoded audio bytes (FLAC, wav, mp3, ...) to float32 [n_samples] 16 kHz mono."""
    data = bytes(data)
    if not data:
        raise AudioError("audio bytes are empty (0 bytes); pass the encoded contents of an audio file")
    samples, _, _ = _decode(_bytes_opener(data), "audio bytes", "mix", data[:_HEAD_BYTES])
    return samples


def encode_flac(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Compress float32 [n_samples] mono audio to FLAC bytes (values beyond [-1, 1] are clipped)."""
    mono = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
    if mono.ndim != 1 or mono.size == 0:
        raise AudioError(f"encode_flac needs 1-D mono samples, got shape {mono.shape}; pass clip.samples")
    _check_finite(mono, "samples to encode")
    encoder = _torchcodec().AudioEncoder(torch.from_numpy(mono)[None], sample_rate=int(sample_rate))
    return encoder.to_tensor("flac").numpy().tobytes()


def existing_file(path: str | os.PathLike) -> Path:
    """The absolute path of a non-empty regular file, or an AudioError saying what is wrong."""
    file = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not file.exists():
        raise AudioError(f"audio file {file} does not exist; check the path")
    if file.is_dir():
        raise AudioError(
            f"{file} is a directory, not an audio file; pass one file, or the folder as a dataset"
        )
    if file.stat().st_size == 0:
        raise AudioError(f"audio file {file} is empty (0 bytes); re-export or re-download it")
    if not os.access(file, os.R_OK):
        raise AudioError(f"audio file {file} is not readable; check its permissions")
    return file


def _file_sha256(file: Path) -> str:
    """sha256 of a file's bytes, read in blocks so large files are never held twice."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _samples_sha256(samples: np.ndarray) -> str:
    """sha256 of float32 samples without copying them."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(samples, dtype="<f4"))).hexdigest()


# --------------------------------------------------------------------------------------------
# Decoding (shared by files, bytes and dataset rows)
# --------------------------------------------------------------------------------------------

# An opener makes a torchcodec AudioDecoder at 16 kHz with the given channel count (None: native).
Opener = Callable[[int | None], Any]


def _file_opener(path: str) -> Opener:
    decoder = _torchcodec().AudioDecoder
    return lambda channels: decoder(path, sample_rate=SAMPLE_RATE, num_channels=channels)


def _bytes_opener(data: bytes) -> Opener:
    decoder = _torchcodec().AudioDecoder
    return lambda channels: decoder(data, sample_rate=SAMPLE_RATE, num_channels=channels)


def _decode(open_: Opener, label: str, channel: str | int, head: bytes | None):
    """Decode to (float32 [n] 16 kHz mono samples, original sample rate, original channels)."""
    decoder = _open(open_, None, label)
    meta = decoder.metadata
    channels = int(meta.num_channels or 0)
    index = _channel_index(channel, channels, label)
    if channels == 1:
        samples = _all_samples(decoder, label)[0].numpy()
    elif index is None and channels == 2:
        # Let FFmpeg downmix while decoding, so only mono samples are ever materialised.
        samples = _all_samples(_open(open_, 1, label), label)[0].numpy()
        samples *= _STEREO_DOWNMIX_TO_MEAN
    else:
        data = _all_samples(decoder, label)  # [channels, n]
        samples = (data.mean(dim=0) if index is None else data[index].clone()).numpy()
        channels = channels or int(data.shape[0])
        del data
    _check_decoded(samples, label, meta, head)
    return samples, int(meta.sample_rate or SAMPLE_RATE), channels


def _open(open_: Opener, channels: int | None, label: str):
    try:
        return open_(channels)
    except ValueError as error:  # torchcodec: "The best audio stream is unknown ..."
        if "stream" in str(error):
            raise AudioError(_not_audio(label, "it contains no audio stream")) from None
        raise AudioError(_not_audio(label, _reason(error, label))) from None
    except (RuntimeError, OSError) as error:
        raise AudioError(_not_audio(label, _reason(error, label))) from None


def _all_samples(decoder, label: str) -> torch.Tensor:
    """All samples as float32 [channels, n]; zero-length or undecodable audio is an AudioError."""
    try:
        return decoder.get_all_samples().data
    except (RuntimeError, ValueError) as error:
        if "No audio frames were decoded" in str(error):
            raise AudioError(_zero_samples(label)) from None
        raise AudioError(
            f"{label} is truncated or corrupt: decoding failed ({_reason(error, label)}); "
            "re-export or re-download it"
        ) from None


def _check_decoded(samples: np.ndarray, label: str, meta, head: bytes | None) -> None:
    if samples.size == 0:
        raise AudioError(_zero_samples(label))
    _check_finite(samples, label)
    declared = _declared_seconds(meta, head)
    decoded = samples.size / SAMPLE_RATE
    slack = max(_TRUNCATION_SLACK_SECONDS, _TRUNCATION_SLACK_FRACTION * (declared or 0.0))
    if declared is not None and decoded < declared - slack:
        raise AudioError(
            f"{label} is truncated or corrupt: its header declares {declared:.2f} s of audio but "
            f"only {decoded:.2f} s decode; re-export or re-download it"
        )


def _declared_seconds(meta, head: bytes | None) -> float | None:
    """Duration the container header promises, where headers are trustworthy; else None."""
    if head is None:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav_header_seconds(head)
    if meta.codec == "mp3" and not any(tag in head for tag in (b"Xing", b"Info", b"VBRI")):
        return None  # without a frame-count tag FFmpeg only estimates an mp3's length
    return meta.duration_seconds_from_header


def _wav_header_seconds(head: bytes) -> float | None:
    """Length a RIFF/WAVE header declares (FFmpeg trims it to the file size, so read it here).

    Walks the RIFF chunks to ``fmt `` (sample rate, bytes per frame) and ``data`` (byte count).
    Returns None when the header is incomplete or its size is a streaming placeholder."""
    rate = frame_bytes = 0
    position = 12
    while position + 8 <= len(head):
        kind, size = head[position : position + 4], struct.unpack_from("<I", head, position + 4)[0]
        if kind == b"fmt " and position + 8 + 14 <= len(head):
            _, _, rate, _, frame_bytes = struct.unpack_from("<HHIIH", head, position + 8)
        elif kind == b"data":
            if not rate or not frame_bytes or size == 0 or size >= _WAV_UNKNOWN_SIZE:
                return None
            return size // frame_bytes / rate
        position += 8 + size + (size & 1)
    return None


def _check_finite(samples: np.ndarray, label: str) -> None:
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        raise AudioError(
            f"{label} contains {bad} NaN or infinite samples out of {samples.size}; "
            "replace them (e.g. numpy.nan_to_num) or fix the source audio"
        )


def _channel_index(channel: str | int, channels: int, label: str) -> int | None:
    """None for "mix", else the 0-based channel to keep (checked against the file)."""
    if isinstance(channel, str) and channel.strip().lower() == "mix":
        return None
    if isinstance(channel, str) and channel.strip().lower() in _CHANNEL_NAMES:
        index = _CHANNEL_NAMES[channel.strip().lower()]
    elif isinstance(channel, str) and channel.strip().isdigit():
        index = int(channel.strip())
    elif isinstance(channel, (int, np.integer)) and not isinstance(channel, bool) and channel >= 0:
        index = int(channel)
    else:
        raise OptionError(f"unknown channel {channel!r}; use mix, left, right or a channel number")
    if channels and index >= channels:
        raise OptionError(
            f"{label} has {channels} channel(s), so channel {channel!r} does not exist; "
            "use channel mix or one that exists"
        )
    return index


def _not_audio(label: str, reason: str) -> str:
    return (
        f"{label} is not an audio file torchcodec/FFmpeg can decode: {reason}; "
        "check that it is a complete audio file (wav, flac, mp3, ogg, m4a, ...)"
    )


def _zero_samples(label: str) -> str:
    return f"{label} decodes to zero audio samples; pass a file that contains sound"


def _reason(error: BaseException, label: str) -> str:
    """The useful part of a torchcodec/FFmpeg error, on one short line."""
    text = " ".join(str(error).strip().splitlines()[0].split()) if str(error).strip() else ""
    text = re.sub(r"^\w+, \S+:\d+, ", "", text)  # "SingleStreamDecoder, /path/x.cpp:52, "
    text = text.replace(f"Could not open input file: {label}", "").strip()
    return text or type(error).__name__


@functools.cache
def _torchcodec() -> SimpleNamespace:
    """torchcodec's AudioDecoder and AudioEncoder, imported on first use (it loads FFmpeg)."""
    try:
        from torchcodec.decoders import AudioDecoder
        from torchcodec.encoders import AudioEncoder
    except (ImportError, OSError, RuntimeError) as error:
        raise AudioError(
            f"torchcodec cannot be loaded ({_reason(error, '')}); install FFmpeg "
            "(e.g. apt-get install ffmpeg) and a torchcodec that matches your torch"
        ) from None
    return SimpleNamespace(AudioDecoder=AudioDecoder, AudioEncoder=AudioEncoder)


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def audio_from_array(array, sample_rate: int = SAMPLE_RATE, source: str = "array") -> AudioClip:
    """Make a clip from numpy/torch samples: 1-D, or 2-D ``[channels, n]`` (``[n, channels]``
    with at most 8 channels is recognised too); float in [-1, 1] or int8/16/32 PCM.  Channels are
    averaged and other sample rates are resampled to 16 kHz with FFmpeg (through torchcodec).
    The clip's samples may share memory with ``array`` when no conversion is needed."""
    rate = _sample_rate(sample_rate)
    data = _float_samples(array, source)
    channels = 1
    if data.ndim == 2:
        if data.shape[0] > data.shape[1] and data.shape[1] <= 8:
            data = data.T  # [n, channels] -> [channels, n]
        channels = data.shape[0]
        data = data.mean(axis=0, dtype=np.float32) if channels > 1 else data[0]
    elif data.ndim != 1:
        raise AudioError(f"{source} has shape {data.shape}; pass 1-D samples or [channels, n_samples]")
    if data.size == 0:
        raise AudioError(f"{source} has no samples; pass a non-empty array")
    _check_finite(data, source)
    samples = _resample(np.ascontiguousarray(data), rate, source)
    if samples.size == 0:
        raise AudioError(f"{source} is too short to resample to {SAMPLE_RATE} Hz; pass more samples")
    return AudioClip(samples, source, _samples_sha256(samples), rate, channels)


def _sample_rate(sample_rate) -> int:
    try:
        whole = not isinstance(sample_rate, bool) and float(sample_rate).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole or int(sample_rate) <= 0:
        raise OptionError(f"sample rate {sample_rate!r} is not a positive whole number of Hz")
    return int(sample_rate)


def _float_samples(array, source: str) -> np.ndarray:
    """numpy float32 view/copy of a numpy array, torch tensor or sequence; ints are rescaled."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    data = np.asarray(array)
    if data.dtype in _INT_SCALES:
        return (data / _INT_SCALES[data.dtype]).astype(np.float32)
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if not np.issubdtype(data.dtype, np.floating):
        raise AudioError(
            f"{source} has samples of type {data.dtype}; pass float samples in [-1, 1] "
            "or int16/int32 PCM"
        )
    return data.astype(np.float32, copy=False)


def _resample(samples: np.ndarray, rate: int, source: str) -> np.ndarray:
    """float32 [n] at ``rate`` -> float32 [m] at 16 kHz, through FFmpeg's resampler (raw f32le)."""
    if rate == SAMPLE_RATE:
        return samples
    encoder = _torchcodec().AudioEncoder(torch.from_numpy(samples)[None], sample_rate=rate)
    try:
        raw = encoder.to_tensor("f32le", sample_rate=SAMPLE_RATE)
    except (RuntimeError, ValueError) as error:
        raise AudioError(
            f"cannot resample {source} from {rate} Hz to {SAMPLE_RATE} Hz ({_reason(error, '')}); "
            "check the sample rate"
        ) from None
    return raw.numpy().view("<f4")


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def split_windows(clip: AudioClip) -> list[Window]:
    """30 s windows covering the whole clip in order; the last may be shorter.  A clip of at
    most 30 s is one window.  Window samples are views into ``clip.samples``."""
    total = len(clip.samples)
    starts = range(0, max(total, 1), WINDOW_SAMPLES)
    return [
        Window(
            index=i,
            start=begin / SAMPLE_RATE,
            end=min(begin + WINDOW_SAMPLES, total) / SAMPLE_RATE,
            samples=clip.samples[begin : begin + WINDOW_SAMPLES],
        )
        for i, begin in enumerate(starts)
    ]


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def iter_dataset(
    name_or_dir: str,
    config: str | None = None,
    split: str = "train",
    audio_column: str | None = None,
    limit: int | None = None,
) -> Iterator[AudioClip]:
    """Clips, one per row (up to ``limit``), of a local ``audiofolder`` directory, a parquet file
    or directory, a ``save_to_disk`` directory, or a Hugging Face Hub dataset (streamed).  The
    audio column is the first ``datasets.Audio`` column unless ``audio_column`` names one (a
    column of file paths works too).  The dataset is opened and checked when this is called, and
    rows are decoded as they are iterated.  Each clip's ``row`` holds the other scalar columns."""
    _check_limit(limit)
    label = _dataset_label(name_or_dir, config)
    ds = _open_split(name_or_dir, config, split)  # opened now, so a bad dataset fails here
    column = _audio_column(ds, audio_column, label)
    return _clips(_as_undecoded_audio(ds, column, label), column, f"dataset:{label}[{split}]", limit)


def _clips(ds, column: str, prefix: str, limit: int | None) -> Iterator[AudioClip]:
    for index, row in enumerate(_rows(ds, prefix)):
        if limit is not None and index >= limit:
            return
        yield _clip_from_row(row, column, f"{prefix}#{index}")


def dataset_size(
    name_or_dir: str,
    config: str | None = None,
    split: str = "train",
    audio_column: str | None = None,
    limit: int | None = None,
) -> int | None:
    """How many clips :func:`iter_dataset` will yield (a progress-bar hint); None if unknown."""
    _check_limit(limit)
    ds = _open_split(name_or_dir, config, split)
    try:
        size = len(ds)
    except TypeError:  # a streamed dataset: use the Hub's split info when it has one
        splits = getattr(ds.info, "splits", None) or {}
        size = getattr(splits.get(split), "num_examples", None) or None
    if size is None:
        return limit
    return size if limit is None else min(size, limit)


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


def _open_split(name_or_dir: str, config: str | None, split: str):
    """The requested split of a local or Hub dataset, or a DatasetError."""
    path = Path(os.path.expanduser(os.fspath(name_or_dir)))
    if path.exists():
        splits = _quietly(lambda: _load_local(path.absolute()))
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


def _load_local(path: Path) -> dict:
    datasets = _datasets()
    try:
        if path.is_file():
            if path.suffix.lower() != ".parquet":
                raise DatasetError(
                    f"{path} is a file, not a dataset; pass a parquet file or a directory "
                    "(for a single audio file, load it as audio)"
                )
            return dict(datasets.load_dataset("parquet", data_files={"train": str(path)}))
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        builder = "parquet" if any(path.rglob("*.parquet")) else "audiofolder"
        return dict(datasets.load_dataset(builder, data_dir=str(path)))
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


def _clip_from_row(row: dict, column: str, source: str) -> AudioClip:
    value = row[column]
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
    others = {k: v for k, v in row.items() if k != column and isinstance(v, (str, int, float, bool))}
    return AudioClip(samples, source, _samples_sha256(samples), rate, channels, row=others)


def _datasets_opener(value: dict) -> Opener:
    def open_(channels):
        return _datasets().Audio(sampling_rate=SAMPLE_RATE, num_channels=channels).decode_example(value)

    return open_
