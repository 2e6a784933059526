"""Saving an export's figures as files' bytes: each figure of a :class:`~.plan.FigurePlan` is drawn
once (:meth:`~.plan.FigurePlan.figure`) and every format an export asks for is saved from that one
drawing; the bytes are kept in a small process-wide cache keyed by trace, figure (and the function
that draws it), options, format and resolution, so a later export of the same trace in a long-lived
process (the dashboard, a notebook, a script exporting several formats) draws nothing again.

Saving is cheaper than the dashboard's :func:`probe.figures.png_bytes`: figures are laid out by
their own constrained layout, so no ``bbox_inches="tight"`` pass (a second full draw) is needed, and
once a figure has been laid out for its first format its layout is kept for the others instead of
being solved again for each save.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probe.export.plan import FigurePlan

PRINT_DPI = 200  # png/svg/pdf figures
CACHE_BYTES = 96 * 2**20  # the most saved figure bytes kept between exports in one process
_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_LOCK = threading.Lock()


def figure_bytes(plan: FigurePlan, name: str, window: int | None, fmt: str, dpi: int) -> bytes:
    """Figure ``name`` of ``window`` as a ``fmt`` file (png, svg or pdf) at ``dpi``, from the cache
    when this trace's figure was saved so before, else from the plan's one drawing of it."""
    key = cache_key(plan, name, window, fmt, dpi)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = savefig_bytes(plan.figure(name, window), fmt, dpi)
    with _LOCK:
        _CACHE[key] = data
        while sum(len(value) for value in _CACHE.values()) > CACHE_BYTES and len(_CACHE) > 1:
            _CACHE.popitem(last=False)
    return data


def cache_key(plan: FigurePlan, name: str, window: int | None, fmt: str, dpi: int) -> tuple:
    """What a saved figure depends on: the trace (its folder and manifest, which changes if the
    trace is replaced), the figure's function, its options, the format and the resolution."""
    trace = plan.trace
    try:
        stamp = (trace.path / "manifest.json").stat().st_mtime_ns
    except (OSError, AttributeError, TypeError):
        stamp = None
    options = tuple(sorted(plan.options(name, window).items()))
    return (str(getattr(trace, "path", trace.id)), trace.id, stamp, plan.figures[name].function, name,
            options, fmt, dpi)


def savefig_bytes(fig: Any, fmt: str, dpi: int) -> bytes:
    """``fig`` saved as ``fmt`` at ``dpi``; its layout is kept for the next save (:func:`keep_layout`)."""
    from probe.figures import quiet_missing_glyphs  # matplotlib loads only for exports that draw

    buffer = io.BytesIO()
    with quiet_missing_glyphs():
        fig.savefig(buffer, format=fmt, dpi=dpi)
    keep_layout(fig)
    return buffer.getvalue()


def keep_layout(fig: Any) -> None:
    """After a figure's first save: keep the positions its layout engine found, so saving it again
    (another format, another resolution) only draws.  Constrained layout works in figure
    fractions and points, so the positions hold at any dpi."""
    engine = fig.get_layout_engine()
    if engine is not None and type(engine).__name__ != "PlaceHolderLayoutEngine":
        fig.set_layout_engine("none")


def clear_cache() -> None:
    """Forget every saved figure (tests; a long-lived process that wants its memory back)."""
    with _LOCK:
        _CACHE.clear()
