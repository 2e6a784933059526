"""Audio in: everything that turns user audio into the 16 kHz mono float32 samples Whisper hears.

Audio files (any format FFmpeg reads, through torchcodec), encoded bytes, numpy/torch arrays and
rows of Hugging Face ``datasets`` datasets become :class:`AudioClip` objects; a clip is split into
the 30 s :class:`Window` s that Whisper processes one at a time; the trace store keeps a FLAC copy.
Everything a user can get wrong (missing, empty, corrupt or non-audio input, NaN samples, a dataset
without audio) raises :class:`~probe.errors.AudioError`, :class:`~probe.errors.DatasetError` or
:class:`~probe.errors.OptionError` with a one-line message.  The parts:

- :mod:`probe.audio.clips` — :class:`AudioClip`, :class:`Window`, :func:`split_windows`; units.
- :mod:`probe.audio.files` — :func:`load_audio`, :func:`decode_bytes`, :func:`encode_flac`.
- :mod:`probe.audio.arrays` — :func:`audio_from_array`: samples in memory, resampled to 16 kHz.
- :mod:`probe.audio.dataset` — :func:`iter_dataset`, :func:`dataset_size`: one clip per row;
  :class:`DatasetSpec`, :func:`iter_rows`: rows undecoded, for dataset runs (:mod:`probe.dataset_runs`).
- :mod:`probe.audio.decode` — torchcodec decoding shared by files, bytes and rows.
- :mod:`probe.audio.checks` — the checks and one-line messages for bad input.
"""

from probe.audio.arrays import audio_from_array
from probe.audio.checks import existing_file
from probe.audio.clips import WINDOW_SAMPLES, AudioClip, Window, split_windows
from probe.audio.dataset import DatasetRow, DatasetSpec, OpenedDataset, dataset_size, iter_dataset, iter_rows
from probe.audio.files import decode_bytes, encode_flac, load_audio
from probe.constants import SAMPLE_RATE, WINDOW_SECONDS

__all__ = ["SAMPLE_RATE", "WINDOW_SAMPLES", "WINDOW_SECONDS", "AudioClip", "DatasetRow", "DatasetSpec", "OpenedDataset",
           "Window", "audio_from_array", "iter_rows",
           "dataset_size", "decode_bytes", "encode_flac", "existing_file", "iter_dataset", "load_audio",
           "split_windows"]
