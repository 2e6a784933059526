"""The windows timeline: every 30 s window generate() decoded, its retries and its signals."""

from __future__ import annotations

import matplotlib
from matplotlib import colors
from matplotlib.figure import Figure

from probe.errors import StoreError
from probe.figures.audio import clip_span, duration
from probe.figures.base import draws, new_figure
from probe.figures.legible import MIN_FONT_PT, clip_range, over_time, range_note, text_color_on, text_width_pt


def _window_concern(window: dict) -> float:
    """0 (nothing suspicious) … 1 (skipped, looping or retried): the timeline's colour."""
    signals = window.get("signals") or {}
    if window.get("skipped") or signals.get("looping"):
        return 1.0
    concern = 0.5 if len(window.get("attempts") or []) > 1 else 0.0
    logprob = signals.get("avg_logprob")
    if logprob is not None:
        concern = max(concern, min(1.0, max(0.0, -logprob - 0.3)))
    return max(concern, min(1.0, float(window.get("no_speech_probability") or 0.0)))


@over_time(clip_span)
@draws
def windows_timeline(trace, time_range: tuple[float, float] | None = None) -> Figure:
    """Every window generate() decoded, on the clip's time axis: the span its transcript used
    (seek to the next seek), coloured from calm to suspect by its hallucination signals, with its
    fallback attempts marked (× rejected, ○ kept, ■ skipped as no speech), numbered from 1 as the
    window pickers label them (where the bar has room for the number), and the no-speech
    probability and average log-probability below; ``time_range`` (seconds of the clip) shows
    only that span."""
    windows = trace.manifest.get("windows") or []
    if not windows:
        raise StoreError(f"trace {trace.id} has no windows; re-run the trace")
    total = max(duration(trace), max(float(w["end"]) for w in windows))
    shown = clip_range(time_range, 0.0, total, "the clip")
    fig = new_figure(10, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, 1]})
    cmap = matplotlib.colormaps["RdYlGn_r"]
    axis_pt = (fig.get_size_inches()[0] - 2.6) * 72  # the time axis, less labels and colour bar
    for window in windows:
        start = float(window["start"])
        used = max(float(window.get("next_seek", 0)) / 100, start + 0.05)
        end = min(used, total)
        concern = _window_concern(window)
        colour = cmap(0.1 + 0.8 * concern)
        top.barh(0, end - start, left=start, height=0.6, color=colour, edgecolor="0.2",
                 hatch="//" if window.get("skipped") else None)
        bar_pt = (min(end, shown[1]) - max(start, shown[0])) / (shown[1] - shown[0]) * axis_pt
        if shown[0] <= (start + end) / 2 <= shown[1] and text_width_pt(str(window["index"] + 1)) + 4 <= bar_pt:
            top.text((start + end) / 2, 0, str(window["index"] + 1), ha="center", va="center",
                     fontsize=max(9, MIN_FONT_PT), color=text_color_on(colour), clip_on=True)
        for attempt in window.get("attempts") or []:
            marker = {"rejected": "x", "kept": "o", "skipped": "s"}.get(attempt.get("verdict"), ".")
            top.plot(start + 0.3 + 0.5 * attempt["attempt"], 0.55, marker=marker, color="0.15", markersize=5,
                     fillstyle="none" if marker == "o" else "full")
    top.set_ylim(-0.6, 0.9)
    top.set_yticks([])
    top.set_ylabel("window")
    scale = matplotlib.cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(scale, ax=[top, bottom], label="concern (0 calm … 1 skipped or looping)", fraction=0.03, pad=0.08)
    top.set_title(f"Windows: {len(windows)} decoded, "
                  f"{sum(len(w.get('attempts') or []) > 1 for w in windows)} retried, "
                  f"{sum(bool(w.get('skipped')) for w in windows)} skipped as no speech"
                  f"{range_note(time_range, shown)}")
    centres = [(float(w["start"]) + min(max(float(w.get("next_seek", 0)) / 100, float(w["start"])), total)) / 2
               for w in windows]
    bottom.plot(centres, [float(w.get("no_speech_probability") or 0) for w in windows], "o-", color="tab:purple",
                label="no-speech probability")
    logprobs = [(c, (w.get("signals") or {}).get("avg_logprob")) for c, w in zip(centres, windows)]
    logprobs = [(c, v) for c, v in logprobs if v is not None]
    if logprobs:
        twin = bottom.twinx()
        twin.plot(*zip(*logprobs), "s--", color="tab:orange", label="average log-probability")
        twin.set_ylabel("avg log-prob", color="tab:orange")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("no-speech p", color="tab:purple")
    bottom.set_xlim(*shown)
    bottom.set_xlabel("time in the clip (s)")
    return fig
