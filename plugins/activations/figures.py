"""activations' picture: the conv stem, how 3000 log-Mel frames become 1500 encoder frames."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.figures import draws, imshow, new_figure, pool_columns, require, window_span
from probe.figures.audio import first_window_span
from probe.figures.legible import clip_range, over_time, range_note

CONV1, CONV2 = "activations.encoder.hook_conv1", "activations.encoder.hook_conv2"
CONV_ZOOM_SECONDS = 1.0  # the close-up, where single frames are visible


@over_time(first_window_span)
@draws
def conv_stem(trace, channels: int = 16, time_range: tuple[float, float] | None = None) -> Figure:
    """The conv stem: conv1 keeps 3000 frames (10 ms), conv2 (stride 2) halves them to 1500 (20 ms).

    Left: the first ``channels`` channels over the whole 30 s window (or ``time_range``, seconds
    of the clip); right: its first second, where single frames are visible and conv2's columns
    are twice as wide as conv1's.
    """
    for name in (CONV1, CONV2):  # whole activations exist only for the points asked for
        require(trace, name, hint=f"re-run the trace with --points {name.removeprefix('activations.')} "
                                  "(or without --points for the lecture set)")
    conv1_shape = trace.records["activations.encoder.hook_conv1"]["shape"]  # [window, d_model, 3000]
    conv2_shape = trace.records["activations.encoder.hook_conv2"]["shape"]  # [window, d_model, 1500]
    channels = max(1, min(channels, conv1_shape[1]))
    maps = [np.asarray(trace.tensor(name, lazy=True)[0:1, :channels], dtype=np.float32)[0]
            for name in ("activations.encoder.hook_conv1", "activations.encoder.hook_conv2")]
    low, high = np.percentile(np.concatenate([m.ravel() for m in maps]), [1, 99])
    norm = colors.Normalize(float(low), float(max(high, low + 1e-6)))  # a few outliers must not wash it out
    start, end = window_span(trace, 0)
    shown = clip_range(time_range, *first_window_span(trace), "the first window")
    fig = new_figure(11, 5)
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 1.2])
    image = None
    for row, (fmap, shape, frame_ms, label) in enumerate(zip(
            maps, (conv1_shape, conv2_shape), (10, 20), ("conv1 (stride 1)", "conv2 (stride 2)"))):
        frames = fmap.shape[-1]
        full, _ = pool_columns(fmap)
        ax = fig.add_subplot(grid[row, 0])
        image = imshow(ax, full, (start, start + frames * frame_ms / 1000, 0, channels), "viridis", norm)
        if shown[0] < end < shown[1]:
            ax.axvline(end, color="white", linestyle="--", linewidth=0.8)
        ax.set_xlim(*shown)
        ax.set_title(f"{label}: [{shape[1]}, {shape[2]}] — {frames} frames of {frame_ms} ms"
                     f"{range_note(time_range, shown)}", fontsize=10)
        ax.set_ylabel("channel")
        ax.set_xlabel("time (s)")
        first_frame = int(round((shown[0] - start) * 1000 / frame_ms))
        zoomed = fmap[:, first_frame: first_frame + int(CONV_ZOOM_SECONDS * 1000 / frame_ms)]
        ax_zoom = fig.add_subplot(grid[row, 1])
        imshow(ax_zoom, zoomed, (first_frame, first_frame + zoomed.shape[-1], 0, channels), "viridis", norm)
        ax_zoom.set_title(f"{'first' if time_range is None else f'from {shown[0]:.1f} s,'} "
                          f"{CONV_ZOOM_SECONDS:.0f} s: {zoomed.shape[-1]} frames", fontsize=10)
        ax_zoom.set_xlabel(f"frame ({frame_ms} ms each)")
        ax_zoom.set_ylabel("channel")
    fig.suptitle(f"Conv stem: {conv1_shape[2]} → {conv2_shape[2]} frames (first {channels} of "
                 f"{conv1_shape[1]} channels, after GELU; dashed line: end of audio)")
    fig.colorbar(image, ax=fig.axes, label="activation (after GELU)", shrink=0.8)
    return fig
