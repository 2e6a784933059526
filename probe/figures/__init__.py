"""Every picture whisper-probe draws, for the dashboard and the lecture export alike.

A figure is a function that takes a :class:`probe.store.Trace` (plus a few choices such as a
layer or a head, each with a default) and returns a matplotlib :class:`~matplotlib.figure.Figure`
with a title, axis labels with units and a colour bar wherever colour carries a value.  Figures are
built on the Agg canvas without pyplot (:func:`new_figure`), so drawing needs no GUI and keeps no
global state, and nothing here imports torch.

The core draws the sound (:mod:`.audio`: ``waveform``, ``log_mel``), the windows
(:mod:`.windows`) and any record (:mod:`.records`: ``record_heatmap``); every other figure belongs
to the plugin whose records it draws and is registered through the ``probe_figures`` hook
(:mod:`probe.contributions`).  :data:`FIGURES` maps the name of every figure that can be drawn
from the trace alone to its function, in the order pages show them; ``probe.figures.<name>`` is
that function too.  A figure whose record is missing raises :class:`~probe.errors.StoreError`
naming the record and the plugin that makes it.

Units used throughout: audio samples at 16 kHz, log-Mel frames of 10 ms (100 per second), encoder
frames of 20 ms (50 per second), probabilities in [0, 1], entropies in nats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator

from probe.constants import (ENCODER_FRAMES_PER_SECOND, HOP_LENGTH, MEL_FRAMES_PER_SECOND,
                             N_FFT, N_TIMESTAMP_TOKENS, SAMPLE_RATE, TIMESTAMP_SECONDS, WINDOW_SECONDS)
from probe.figures.audio import (audio_samples, duration, first_spoken_window, log_mel, log_mel_array,
                                 waveform, window_entry, window_sequence, window_span)
from probe.figures.base import (ATTENTION_CMAP, MAX_COLUMNS, PROBABILITY_CMAP, TOKENS_PER_PAGE,
                                config_value, draws, grid_shape, head_grid, heads_of, imshow, layer_index,
                                layer_slice, middle_layer, new_figure, page, page_note, png_bytes,
                                pool_columns, quiet_missing_glyphs, require, save, tick_tokens, token_bytes,
                                token_groups, token_label, token_labels, vocabulary)
from probe.figures.records import record_heatmap
from probe.figures.windows import windows_timeline

__all__ = ['ATTENTION_CMAP', 'ENCODER_FRAMES_PER_SECOND', 'HOP_LENGTH', 'MAX_COLUMNS',
           'MEL_FRAMES_PER_SECOND', 'N_FFT', 'N_TIMESTAMP_TOKENS', 'PROBABILITY_CMAP', 'SAMPLE_RATE',
           'TIMESTAMP_SECONDS', 'TOKENS_PER_PAGE', 'WINDOW_SECONDS', 'audio_samples', 'config_value', 'draws',
           'duration', 'first_spoken_window', 'grid_shape', 'head_grid', 'heads_of', 'imshow', 'layer_index',
           'layer_slice', 'log_mel', 'log_mel_array', 'middle_layer', 'new_figure', 'page', 'page_note',
           'png_bytes', 'pool_columns', 'quiet_missing_glyphs', 'record_heatmap', 'require', 'save',
           'tick_tokens', 'token_bytes', 'token_groups', 'token_label', 'token_labels', 'vocabulary', 'waveform',
           'window_entry', 'window_sequence',
           'window_span', 'windows_timeline', 'FIGURES', 'figure']


def figure(name: str) -> Callable:
    """The function of figure ``name`` (the core's or a plugin's); a one-line error if none."""
    from probe.contributions import current

    return current().figure(name).function


class _Figures(Mapping):
    """Name → function of every figure drawable from the trace alone, read from the plugins
    presented now (:func:`probe.contributions.current`)."""

    def _all(self) -> dict[str, Callable]:
        from probe.contributions import current

        return {name: f.function for name, f in current().figures.items() if f.by_default}

    def __getitem__(self, name: str) -> Callable:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


FIGURES: Mapping[str, Callable] = _Figures()


def __getattr__(name: str):
    """``probe.figures.cross_attention`` and the like: a figure a plugin registered."""
    from probe.contributions import current

    found = current().figures.get(name)
    if found is None:
        raise AttributeError(f"module 'probe.figures' has no attribute {name!r}")
    return found.function
