"""Legibility rules every figure keeps, on a 1920 × 1080 projector and in print: the smallest
font, text colour chosen from the colour under it, bounded figure sizes, token axes thinned until
their labels do not overlap, word labels staggered or dropped instead of piled up, and the
time-range zoom of figures drawn over a time axis.

Sizes follow from how figures are shown.  The dashboard draws PNGs at :data:`SCREEN_DPI` and
stretches them to its wide column (about 1400 px beside the sidebar on a 1920 px screen); the
export prints at :data:`PRINT_DPI`.  The widest figure (:data:`MAX_WIDTH_IN`, 1782 px at screen
dpi) is therefore shown at about 0.8 of its pixels, so :data:`MIN_FONT_PT` (9 pt, 13.75 px at
110 dpi) stays at least ~11 px on the projector, and 9 pt on paper.

Labels that can collide (token ticks, word labels) are registered while a figure is built
(:func:`thin_ticks`, :func:`stagger_labels`) and resolved by :func:`settle` once the layout is
known, which :func:`probe.figures.base.draws` calls for every figure.  Nothing here imports torch.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Callable, Iterable

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure
from matplotlib.text import Text

from probe.constants import PRINT_DPI, SCREEN_DPI  # noqa: F401  (named here too: the dashboard's PNGs, the export's files)

MIN_FONT_PT = 9.0  # no text smaller: ≥ 11 px on a 1920 × 1080 projector, 9 pt in print
CELL_FONT_PT = MIN_FONT_PT  # text written inside heatmap cells
MAX_WIDTH_IN, MAX_HEIGHT_IN = 16.0, 9.6  # saved with SAVE_PAD_IN around: ≤ 1782 × 1078 px at screen dpi
SAVE_PAD_IN = 0.1  # matplotlib's pad around a bbox_inches="tight" save
ZOOM_FROM_SECONDS = 10.0  # the dashboard offers a time-range slider for spans longer than this
CHAR_WIDTH_EM = 0.62  # a generous average glyph width (DejaVu Sans bold) in em, for fitting text
LINE_HEIGHT_EM = 1.35  # a label's height, gaps included, in em
MIN_CONTRAST = 4.5  # WCAG AA for normal text

TICKS = "_probe_thinned_ticks"  # axis attribute: {"x"|"y": (positions, labels)}
_STAGGERED = "_probe_staggered"  # axes attribute: [(text, [y in axes fraction per row])]
SOLVED = "_probe_layout_solved"  # figure attribute: settle() drew it with its final labels


def max_pixels(dpi: float) -> tuple[int, int]:
    """The largest (width, height) in pixels a figure may have when saved at ``dpi`` (its padding
    included): at :data:`SCREEN_DPI` it fits a 1920 × 1080 screen at 100 %."""
    return (math.ceil((MAX_WIDTH_IN + 2 * SAVE_PAD_IN) * dpi),
            math.ceil((MAX_HEIGHT_IN + 2 * SAVE_PAD_IN) * dpi))


def bounded_size(width: float, height: float) -> tuple[float, float]:
    """(width, height) in inches, each at most :data:`MAX_WIDTH_IN` / :data:`MAX_HEIGHT_IN`."""
    return min(float(width), MAX_WIDTH_IN), min(float(height), MAX_HEIGHT_IN)


# --------------------------------------------------------------------------- colour and contrast


def relative_luminance(colour) -> float:
    """WCAG 2 relative luminance of a matplotlib colour (alpha ignored): 0 black … 1 white."""
    channels = np.asarray(colors.to_rgb(colour), dtype=np.float64)
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(first, second) -> float:
    """WCAG 2 contrast ratio of two colours: 1 (same) … 21 (black on white)."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def text_color_on(background) -> str:
    """``"black"`` or ``"white"``, whichever contrasts more with ``background`` (an RGBA tuple or
    any matplotlib colour); the better of the two is always at least 4.58:1."""
    return "black" if contrast_ratio("black", background) >= contrast_ratio("white", background) else "white"


def composite(colour, under="white") -> tuple[float, float, float]:
    """``colour`` with its alpha laid over ``under``: the colour the eye sees."""
    red, green, blue, alpha = colors.to_rgba(colour)
    base = np.asarray(colors.to_rgb(under))
    return tuple(alpha * np.array([red, green, blue]) + (1 - alpha) * base)


LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.7, "linewidth": 0}
"""A dark box behind white text drawn over an image of any colour (≥ 7:1 on any colour under it)."""


# --------------------------------------------------------------------------- fitting text


def _char_em(char: str) -> float:
    return 1.0 if unicodedata.east_asian_width(char) in "WF" else CHAR_WIDTH_EM  # CJK glyphs are square


def text_width_pt(text: str, fontsize: float = MIN_FONT_PT) -> float:
    """A generous estimate of ``text``'s width at ``fontsize``, in points."""
    return sum(_char_em(char) for char in text) * fontsize


def chars_that_fit(width_pt: float, fontsize: float = CELL_FONT_PT, padding_pt: float = 3.0) -> int:
    """How many (Latin) characters of text at ``fontsize`` fit in ``width_pt`` points."""
    return max(0, int((width_pt - padding_pt) // (CHAR_WIDTH_EM * fontsize)))


def fit_text(text: str, width_pt: float, fontsize: float = CELL_FONT_PT, padding_pt: float = 3.0) -> str:
    """``text`` cut (an ellipsis marking the cut) so that it fits in ``width_pt`` points."""
    room = width_pt - padding_pt
    if text_width_pt(text, fontsize) <= room:
        return text
    room -= text_width_pt("…", fontsize)
    kept, used = "", 0.0
    for char in text:
        used += _char_em(char) * fontsize
        if used > room:
            break
        kept += char
    return kept + "…" if kept else ""


def cell_text(ax, x: float, y: float, text: str, background, fontsize: float = CELL_FONT_PT, **kwargs) -> Text:
    """Text centred in a heatmap cell, black or white by the cell's colour ``background``.  It
    lies inside the axes, so the layout does not measure it (a grid of cells has hundreds)."""
    text = ax.text(x, y, text, ha="center", va="center", fontsize=max(fontsize, MIN_FONT_PT),
                   color=text_color_on(background), **kwargs)
    text.set_in_layout(False)
    return text


# --------------------------------------------------------------------------- labels that can collide


def thin_ticks(ax, positions: Iterable[float], labels: list[str], axis: str, rotation: float | None = None,
               fontsize: float = MIN_FONT_PT, max_labels: int | None = None) -> None:
    """Label ``axis`` (``"x"`` or ``"y"``) at ``positions`` with ``labels``, every n-th one so
    that no two overlap (and at most ``max_labels``): a first guess from the figure's size now,
    made exact by :func:`settle` once the layout is drawn.  ``rotation=None``: x labels lie flat
    when every one fits its slot, else upright."""
    positions = list(positions)
    fontsize = max(fontsize, MIN_FONT_PT)
    fig = ax.figure
    width_in, height_in = fig.get_size_inches()
    box = ax.get_position()
    length_pt = (box.width * width_in if axis == "x" else box.height * height_in) * 72
    if rotation is None:
        widest = max((text_width_pt(label, fontsize) for label in labels), default=0.0)
        rotation = 0 if axis == "y" or widest + fontsize <= 0.8 * length_pt / max(len(positions), 1) else 90
    across = axis == "y" or abs(rotation) >= 45  # labels stacked along the axis by their line height
    per_label = LINE_HEIGHT_EM * fontsize if across else \
        max((text_width_pt(label, fontsize) for label in labels), default=fontsize) + fontsize
    step = max(1, math.ceil(len(positions) * per_label / max(length_pt, 1.0)),
               math.ceil(len(positions) / max_labels) if max_labels else 1)
    target = ax.xaxis if axis == "x" else ax.yaxis
    setattr(target, TICKS, (positions, list(labels), rotation, fontsize))
    _set_ticks(ax, axis, step)


def _set_ticks(ax, axis: str, step: int) -> None:
    target = ax.xaxis if axis == "x" else ax.yaxis
    positions, labels, rotation, fontsize = getattr(target, TICKS)
    shown = list(range(0, len(positions), step))
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    setter([positions[i] for i in shown], [labels[i] for i in shown], rotation=rotation, fontsize=fontsize)
    target._probe_step = step


def stagger_labels(ax, items: Iterable[tuple[float, str]], rows: int = 3, top: float = 0.97,
                   fontsize: float = MIN_FONT_PT, **style) -> list[Text]:
    """Labels at data x positions near the top of ``ax`` (white on a dark box, readable over any
    image); :func:`settle` puts each in the first of ``rows`` rows where it overlaps no label
    before it, and leaves it hidden if none has room."""
    fontsize = max(fontsize, MIN_FONT_PT)
    texts = []
    for x, label in items:
        text = ax.text(x, top, label, transform=ax.get_xaxis_transform(), ha="center", va="top",
                       fontsize=fontsize, color="white", bbox=dict(LABEL_BOX), clip_on=True, **style)
        text.set_in_layout(False)
        text.set_visible(False)  # until settle() finds it room: hidden labels cost no layout
        texts.append(text)
    placed = getattr(ax, _STAGGERED, [])
    placed.extend((text, rows, top) for text in texts)
    setattr(ax, _STAGGERED, placed)
    return texts


def _place_staggered(ax, renderer) -> None:
    """Greedy, left to right: each label into the first row whose last label ends left of it."""
    box = ax.get_window_extent(renderer)
    px_per_pt = ax.figure.dpi / 72
    gap = 3 * px_per_pt
    ends: dict[int, float] = {}
    for text, rows, top in sorted(getattr(ax, _STAGGERED), key=lambda item: item[0].get_position()[0]):
        centre = ax.transData.transform((text.get_position()[0], 0))[0]
        if not box.x0 <= centre <= box.x1:
            continue
        lower_bound = 0.3 * text_width_pt(text.get_text(), text.get_fontsize()) * px_per_pt
        if all(ends.get(row, -math.inf) + gap > centre - lower_bound for row in range(rows)):
            continue  # no row can have room: not worth measuring
        text.set_visible(True)  # an invisible text measures as an empty box
        width = text.get_window_extent(renderer).width  # exact; the layout does not depend on position
        text.set_visible(False)
        line = LINE_HEIGHT_EM * 1.2 * text.get_fontsize() * px_per_pt / max(box.height, 1.0)
        left = centre - width / 2
        if left < box.x0 or centre + width / 2 > box.x1:
            continue  # a label cut by the axes' edge is not readable
        for row in range(rows):
            if ends.get(row, -math.inf) + gap <= left and top - row * line - line > 0:
                text.set_position((text.get_position()[0], top - row * line))
                text.set_visible(True)
                ends[row] = centre + width / 2
                break


def _overlapping(extents, pad: float = 1.0) -> bool:
    ordered = list(extents)
    for first, second in zip(ordered, ordered[1:]):
        if first.x1 + pad > second.x0 and second.x1 + pad > first.x0 and \
                first.y1 + pad > second.y0 and second.y1 + pad > first.y0:
            return True
    return False


def _tick_extents(target, renderer) -> list:
    """Window extents of the visible, non-empty tick labels of an axis, in axis order, where the
    axis now places them (``get_tightbbox`` moves its ticks to the axes' current position)."""
    target.get_tightbbox(renderer)
    labels = [label for label in target.get_ticklabels() if label.get_visible() and label.get_text()]
    extents = [label.get_window_extent(renderer) for label in labels]
    horizontal = target.axis_name == "x"
    return sorted(extents, key=lambda box: box.x0 if horizontal else box.y0)


def _lay_out(fig: Figure) -> None:
    """Place ``fig``'s axes as drawing it would (its layout engine, if any), without drawing it:
    labels are measured from the layout alone, and no image is colour-mapped for it."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)


def settle(fig: Figure, max_rounds: int = 8) -> Figure:
    """Resolve the labels registered with :func:`thin_ticks` and :func:`stagger_labels` against
    the laid-out figure: thin each token axis until no two labels overlap, then place word labels.
    The layout it ends with is the figure's final one (:data:`SOLVED`)."""
    thinned = [(ax, name, target) for ax in fig.axes for name, target in (("x", ax.xaxis), ("y", ax.yaxis))
               if hasattr(target, TICKS)]
    staggered = [ax for ax in fig.axes if getattr(ax, _STAGGERED, None)]
    if not thinned and not staggered:
        return fig
    _lay_out(fig)
    renderer = fig.canvas.get_renderer()
    for _ in range(max_rounds):
        measured = [(ax, name, target, _tick_extents(target, renderer)) for ax, name, target in thinned]
        crowded = [entry for entry in measured if _overlapping(entry[3])]
        if not crowded:
            break
        for ax, name, target, extents in crowded:
            positions = getattr(target, TICKS)[0]
            step = target._probe_step
            along = [(box.x1 - box.x0) if name == "x" else (box.y1 - box.y0) for box in extents]
            span = ax.get_window_extent(renderer)
            length = span.width if name == "x" else span.height
            needed = (max(along, default=1.0) + 2.0) * len(positions)
            _set_ticks(ax, name, max(step + 1, math.ceil(needed / max(length, 1.0))))
        _lay_out(fig)
    for ax in staggered:
        _place_staggered(ax, renderer)
    setattr(fig, SOLVED, True)  # word labels take no part in the layout: it stands as last laid out
    return fig


# --------------------------------------------------------------------------- time-range zoom


def over_time(span: Callable) -> Callable[[Callable], Callable]:
    """Mark a figure as drawn over time: ``span(trace, **options) -> (start, end)`` seconds of the
    clip it shows with those options, the range its ``time_range`` can narrow (the dashboard's
    slider reads it through :func:`time_span`)."""

    def mark(function: Callable) -> Callable:
        function.time_span = span
        return function

    return mark


def time_span(function: Callable, trace, options: dict) -> tuple[float, float] | None:
    """(start, end) seconds figure ``function`` shows of ``trace`` with ``options``, if it is
    drawn over time and can be zoomed (``time_range``)."""
    span = getattr(function, "time_span", None)
    if span is None:
        return None
    known = {key: value for key, value in options.items() if key != "time_range"}
    return span(trace, **known)


def clip_range(time_range: tuple[float, float] | None, start: float, end: float, what: str = "the figure") \
        -> tuple[float, float]:
    """``time_range`` (seconds of the clip) within ``start``–``end``; the whole span if None.
    A range that is empty or misses the span is a one-line :class:`~probe.errors.OptionError`."""
    from probe.errors import OptionError

    if time_range is None:
        return float(start), float(end)
    try:
        low, high = (float(value) for value in time_range)
    except (TypeError, ValueError):
        raise OptionError(f"time range {time_range!r} is not two numbers of seconds; give START:END") from None
    if not high > low:
        raise OptionError(f"time range {low:g}–{high:g} s is empty; give START:END with START < END")
    clipped = max(low, float(start)), min(high, float(end))
    if not clipped[1] > clipped[0]:
        raise OptionError(f"time range {low:g}–{high:g} s lies outside {what} ({start:g}–{end:g} s)")
    return clipped


def range_note(time_range: tuple[float, float] | None, shown: tuple[float, float]) -> str:
    """`` (12.0–18.5 s)`` for a title when the figure is zoomed, else ``""``."""
    return "" if time_range is None else f" ({shown[0]:.1f}–{shown[1]:.1f} s)"
