"""Saving an export's figures as files' bytes: each figure of a :class:`~.plan.FigurePlan` is drawn
once (:meth:`~.plan.FigurePlan.figure`) and every format an export asks for is saved from that one
drawing; the bytes are kept in a small process-wide cache keyed by trace, figure (and the function
that draws it), options, format and resolution, so a later export of the same trace in a long-lived
process (the dashboard, a notebook, a script exporting several formats) draws nothing again.

:func:`prerender` draws an export's figures in worker processes, one per core, before the writers
ask for them: matplotlib draws on one core, and an export's figures are independent.  Workers are
forked, so they start at once with the trace and plugins the export already has; a process that
runs threads (the dashboard, a notebook kernel) cannot fork safely and draws them itself.

Each figure's constrained layout is solved once, when it is drawn, and kept
(:func:`probe.figures.base.fix_layout`): every save after that is one drawing.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable

from probe.constants import PRINT_DPI  # png/svg/pdf figures
from probe.errors import ProbeError

if TYPE_CHECKING:
    from probe.export.plan import FigurePlan

CACHE_BYTES = 96 * 2**20  # the most saved figure bytes kept between exports in one process
_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_LOCK = threading.Lock()
MAX_WORKERS = 8
WORKERS_ENV = "PROBE_EXPORT_WORKERS"  # how many processes draw an export's figures (1: this one alone)


def figure_bytes(plan: FigurePlan, name: str, window: int | None, fmt: str, dpi: int) -> bytes:
    """Figure ``name`` of ``window`` as a ``fmt`` file (png, svg or pdf) at ``dpi``, from the cache
    when this trace's figure was saved so before, else from the plan's one drawing of it."""
    key = cache_key(plan, name, window, fmt, dpi)
    prerendered = plan.prerendered.pop((name, window, fmt, dpi), None)
    if prerendered is not None:
        _remember(key, prerendered)
        return prerendered
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = savefig_bytes(plan.figure(name, window), fmt, dpi)
    _remember(key, data)
    return data


def _remember(key: tuple, data: bytes) -> None:
    with _LOCK:
        _CACHE[key] = data
        _CACHE.move_to_end(key)
        while sum(len(value) for value in _CACHE.values()) > CACHE_BYTES and len(_CACHE) > 1:
            _CACHE.popitem(last=False)


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
    """``fig`` saved as ``fmt`` at ``dpi`` (:func:`probe.figures.base.figure_file`)."""
    from probe.figures.base import figure_file  # matplotlib loads only for exports that draw

    return figure_file(fig, fmt, dpi)


def workers(jobs: int) -> int:
    """How many processes should draw ``jobs`` figures: one per core this process may use (at most
    :data:`MAX_WORKERS`, or ``$PROBE_EXPORT_WORKERS``), and 1 (draw here) where forking is not safe:
    no ``fork`` start method, other threads running, or this process is itself a worker."""
    try:
        wanted = int(os.environ.get(WORKERS_ENV) or 0)
    except ValueError:
        wanted = 0
    if wanted <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        wanted = min(cores, MAX_WORKERS)
    if ("fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1
            or multiprocessing.current_process().daemon):
        return 1
    return max(1, min(wanted, jobs))


def targets(formats: Iterable[str], html_drawn_elsewhere: bool = False) -> list[tuple[str, int]]:
    """The (file format, dpi) each figure is saved in for an export in ``formats``: the html page's
    inline PNGs (unless the caller has them drawn already), print-resolution PNG, SVG and PDF pages."""
    from probe.export.page import PAGE_DPI

    wanted = {"html": [] if html_drawn_elsewhere else [("png", PAGE_DPI)], "png": [("png", PRINT_DPI)],
              "svg": [("svg", PRINT_DPI)], "pdf": [("pdf", PRINT_DPI)]}
    return [target for fmt in formats for target in wanted.get(fmt, [])]


_JOB: tuple[Any, list[tuple[str, int]]] | None = None  # (plan, targets) a forked worker draws from


def prerender(plan: FigurePlan, targets: Iterable[tuple[str, int]], meanwhile: Callable[[], Any] | None = None) -> None:
    """Draw the plan's figures in :func:`workers` processes and keep each one's bytes in every
    (format, dpi) of ``targets`` for :func:`figure_bytes`; a figure that cannot be drawn keeps its
    error for :meth:`~.plan.FigurePlan.attempt` to report as it would have in this process.  With
    one worker, or every figure saved before, nothing happens here: the writers draw as they go.

    ``meanwhile()`` runs here while the workers draw (a writer's work that needs no figure, such as
    the handout's title page), where there are workers; otherwise the writer does it itself."""
    global _JOB
    targets = list(dict.fromkeys(targets))
    with _LOCK:
        todo = [(name, window) for name, window in plan.pairs
                if any(cache_key(plan, name, window, fmt, dpi) not in _CACHE for fmt, dpi in targets)]
    count = workers(len(todo))
    if count < 2 or len(todo) < 2:
        return
    _JOB = (plan, targets)
    # What this process has imported and read is the workers' too: frozen, their collections skip
    # it (and leave its pages shared), as the gc docs advise before a fork.
    gc.freeze()
    try:
        with multiprocessing.get_context("fork").Pool(count) as pool:
            # Pages lead with the light overview figures (waveform, log-Mel) and end with the token
            # and head figures that cost several times more: drawn from the end, the light ones
            # fill the gaps at the finish instead of leaving one worker alone with a heavy one.
            drawn = pool.imap_unordered(_draw_in_worker, todo[::-1])
            if meanwhile is not None:
                meanwhile()
            for pair, saved, error in drawn:
                if error is not None:
                    plan.failed(pair, error)
                else:
                    plan.prerendered.update({(*pair, fmt, dpi): data for (fmt, dpi), data in saved.items()})
    finally:
        _JOB = None
        gc.unfreeze()


def _draw_in_worker(pair: tuple[str, int | None]):
    """In a forked worker: figure ``pair`` saved in every target, or the error drawing it raised
    (a :class:`ProbeError` as it is; another exception as its type's name and message)."""
    plan, targets = _JOB
    try:
        fig = plan.figure(*pair)
        return pair, {(fmt, dpi): savefig_bytes(fig, fmt, dpi) for fmt, dpi in targets}, None
    except ProbeError as err:
        return pair, None, err
    except Exception as exc:  # a plugin's bug: the parent reports it by name, as attempt() does
        return pair, None, (type(exc).__name__, str(exc))


def clear_cache() -> None:
    """Forget every saved figure (tests; a long-lived process that wants its memory back)."""
    with _LOCK:
        _CACHE.clear()
