"""activations' picture of the encoder's output: the ``[1500, d_model]`` matrix the decoder
cross-attends to, for one window, over seconds of the clip (one encoder frame per 20 ms), with
where the audio ends and the zero padding begins; plus :func:`speech_and_padding`, the numbers the
Lesson quotes under it.  Reads ``activations.encoder.hook_ln_final`` (the lecture set keeps it for
every window); nothing here imports torch."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.constants import ENCODER_FRAMES_PER_SECOND, ENCODER_FRAMES_PER_WINDOW, WINDOW_SECONDS
from probe.errors import StoreError
from probe.figures import draws, imshow, new_figure, require, window_span

ENCODER_OUTPUT = "activations.encoder.hook_ln_final"  # [window, frame, d_model]


def encoder_output_array(trace, window: int = 0) -> np.ndarray:
    """The encoder's output for ``window``: float32 [1500, d_model] (after the final layer norm)."""
    require(trace, ENCODER_OUTPUT, hint="re-run the trace without --points (the lecture set keeps it) "
                                        "or with --points encoder.hook_ln_final")
    kept = trace.records[ENCODER_OUTPUT]["shape"][0]
    if not 0 <= window < kept:
        raise StoreError(f"trace {trace.id} kept the encoder output of {kept} window(s), not of window {window + 1}")
    return np.asarray(trace.tensor(ENCODER_OUTPUT, lazy=True)[window], dtype=np.float32)


def audio_frames(trace, window: int = 0) -> int:
    """How many of the window's 1500 encoder frames hold audio (the rest encode zero padding)."""
    start, end = window_span(trace, window)
    return min(ENCODER_FRAMES_PER_WINDOW, math.ceil(round((end - start) * ENCODER_FRAMES_PER_SECOND, 6)))


def speech_and_padding(trace, window: int = 0) -> tuple[float, float | None]:
    """Mean length (L2 norm) of the output vectors over the frames holding audio, and over the
    padding frames (None when the audio fills the window)."""
    norms = np.linalg.norm(encoder_output_array(trace, window), axis=1)  # [frame]
    frames = audio_frames(trace, window)
    return float(norms[:frames].mean()), (float(norms[frames:].mean()) if frames < len(norms) else None)


@draws
def encoder_output(trace, window: int = 0) -> Figure:
    """The encoder output of ``window``: its [1500, d_model] matrix as a heatmap (time in seconds of
    the clip across, the d_model channels up), and below it each 20 ms frame's vector length.  A
    dashed line marks the end of the audio; the shaded part encodes the zero padding up to 30 s."""
    output = encoder_output_array(trace, window)  # [frame, d_model]
    frames, d_model = output.shape
    start, end = window_span(trace, window)
    stop = start + frames / ENCODER_FRAMES_PER_SECOND  # the window always spans 30 s of model input
    audio_end = start + audio_frames(trace, window) / ENCODER_FRAMES_PER_SECOND
    limit = float(np.percentile(np.abs(output), 99)) or 1.0  # a few outlier channels must not wash it out
    fig = new_figure(11, 6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    image = imshow(top, output.T, (start, stop, 0, d_model), "RdBu_r", colors.Normalize(-limit, limit))
    norms = np.linalg.norm(output, axis=1)  # [frame]
    times = start + (np.arange(frames) + 0.5) / ENCODER_FRAMES_PER_SECOND
    bottom.plot(times, norms, color="#333", linewidth=0.8)
    bottom.set_ylim(0, float(np.percentile(norms, 99.5)) * 1.15 or 1.0)  # a few spikes must not flatten the rest
    for ax in (top, bottom):
        if audio_end < stop - 1e-6:
            ax.axvline(audio_end, color="black", linestyle="--", linewidth=1.2)
            ax.axvspan(audio_end, stop, color="#999", alpha=0.25 if ax is bottom else 0.15, linewidth=0)
    if audio_end < stop - 1e-6:
        top.text((audio_end + stop) / 2, d_model * 0.97, "zero padding", ha="center", va="top", fontsize=9,
                 bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        top.text((start + audio_end) / 2, d_model * 0.97, "audio", ha="center", va="top", fontsize=9,
                 bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    top.set_ylabel(f"channel (of {d_model})")
    top.set_title(f"model.model.encoder(input_features).last_hidden_state[0]: [{frames}, {d_model}]", fontsize=10)
    fig.colorbar(image, ax=[top, bottom], label="value (after the final layer norm)", pad=0.01, shrink=0.9)
    bottom.set_ylabel("vector length")
    bottom.set_xlabel(f"time in the clip (s); one encoder frame = {1000 // ENCODER_FRAMES_PER_SECOND} ms")
    bottom.set_xlim(start, stop)
    n_windows = len(trace.manifest.get("windows") or [])
    fig.suptitle(f"The encoder's output: one {d_model}-number vector per 20 ms, {frames} for "
                 f"{WINDOW_SECONDS} s" + (f" (window {window + 1} of {n_windows})" if n_windows > 1 else "")
                 + ("; dashed line: end of the audio" if audio_end < stop - 1e-6 else ""))
    return fig
