"""Export for lectures: a trace as a page, figures, tables or a bundle, and bundles back in.

This package owns ``probe export`` and ``probe import`` (the README's *Export* section):

- ``html``: one self-contained page (:mod:`.page`): the core's sections (:mod:`.sections`: the
  player and transcript, the prompt, the windows), the figures as inline PNG, and every section a
  plugin registers (``probe_export_sections``: the built-ins' coloured transcript, word timings,
  language detection and token table); it opens with no network;
- ``png`` / ``svg``: one file per figure, ``<trace>-<view>.<ext>``, PNG at print resolution;
- ``pdf``: one multi-page handout (:mod:`.handout`), a title page then one figure per page;
- ``json`` / ``csv``: the tables plugins contribute (the built-ins' ``tokens``, ``words`` and
  ``languages``) as one JSON file or one CSV file each (:mod:`.writers`);
- ``zip``: the trace folder as a bundle that :func:`import_bundle` puts into another store as it
  was (:mod:`.bundle`; bundles are untrusted and checked before anything is extracted).

Which figures and windows are drawn is :mod:`.plan`'s business: a figure or section whose records
the trace lacks (``-p no:NAME``) is left out, with nothing empty or broken in its place; a time
range (``--time-range START:END``) narrows the figures that can show a span and the windows drawn.
One export can write several formats (``-f html,pdf,png``): each figure is drawn once and saved in
each of them (:mod:`.render`, which also keeps saved figures for later exports in the process).
Output files are written to a temporary name and renamed, so an interrupted export never leaves a
half file.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from probe.errors import OptionError

if TYPE_CHECKING:
    from probe.store import Trace

# the public names, each from the module that owns it: imported when first used, so a plugin's
# export section that needs only probe.export.markup does not load the writers, the bundle code
# and the store with it
_HOME = {"import_bundle": "bundle", "PAGE_DPI": "page", "render_html": "page", "ALL_WINDOWS_UP_TO": "plan",
         "FIRST_WINDOWS": "plan", "MAX_DEFAULT_WINDOWS": "plan", "FigurePlan": "plan", "chosen_windows": "plan",
         "figure_names": "plan", "PRINT_DPI": "render", "EXPORTERS": "writers", "export_tables": "writers"}
__all__ = ["ALL_WINDOWS_UP_TO", "FIGURE_FORMATS", "FIRST_WINDOWS", "FORMATS", "MAX_DEFAULT_WINDOWS", "PAGE_DPI",
           "PRINT_DPI", "chosen_windows", "export_tables", "export_trace", "figure_names", "import_bundle",
           "render_html"]

FIGURE_FORMATS = ("html", "png", "svg", "pdf")
FORMATS = FIGURE_FORMATS + ("json", "csv", "zip")


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"probe.export.{_HOME[name]}"), name)
    raise AttributeError(f"module 'probe.export' has no attribute {name!r}")


def export_trace(trace: Trace, fmt: str | Iterable[str], out: str | os.PathLike | None = None,
                 views: list[str] | None = None,
                 windows: str | Iterable[int] | None = None,
                 time_range: str | tuple[float, float] | None = None,
                 png: Callable[[str, dict], bytes] | None = None) -> list[Path]:
    """Export ``trace`` as ``fmt`` (one of :data:`FORMATS`, or several: ``"html,pdf"`` or a list);
    returns the files written.

    ``out`` is the file for single-file formats (html, pdf, json, zip; an existing folder gets
    ``<trace id>.<ext>`` inside it) and the folder for the others (png, svg, csv); by default
    ``./<trace id>.<ext>`` or ``./<trace id>-export/``.  Several formats go into one folder,
    ``out`` (made if missing) or ``./``: ``<trace id>.<ext>`` for each single-file format, the
    figure and table files beside them; every figure is drawn once for all of them.  ``views`` picks figures by name (:func:`figure_names`; default:
    every one the trace has records for).  ``windows`` picks the 30 s windows of a long trace that
    per-window figures are drawn for, numbered from 1 as the dashboard shows them: ``"all"``,
    ``"1,3-5"`` or ``[1, 3, 4, 5]`` (default: see :func:`chosen_windows`).  ``time_range``
    (``"START:END"`` in seconds, or a pair) restricts the figures to that span of the clip: it
    goes to every figure that takes a ``time_range`` keyword, and only windows overlapping it
    are drawn.  ``png(name, options)``, if given, supplies the html page's figures already drawn
    elsewhere (the dashboard's, at :data:`PAGE_DPI`).
    """
    formats = _formats(fmt)
    from probe.export.plan import FigurePlan
    from probe.export.writers import EXPORTERS

    drawing = [f for f in formats if f in FIGURE_FORMATS]
    for option, value in (("--views", views), ("--windows", windows), ("--time-range", time_range)):
        if value and not drawing:
            raise OptionError(f"{option} applies to {', '.join(FIGURE_FORMATS)} exports, not "
                              f"{', '.join(formats)}; leave it out")
    plan = FigurePlan.of(trace, views, windows, time_range) if drawing else None
    if plan is not None:
        plan.keep = len(drawing) > 1  # every figure drawn once, saved for each format
        from probe.export.render import prerender, targets

        meanwhile = None
        if "pdf" in drawing:
            from probe.export.handout import prepare_title

            meanwhile = lambda: prepare_title(trace, plan)  # noqa: E731
        prerender(plan, targets(drawing, html_drawn_elsewhere=png is not None), meanwhile)  # on every core
        plan.check()
    if len(formats) > 1:
        folder = Path(out if out is not None else Path.cwd()).expanduser().absolute()
        if folder.exists() and not folder.is_dir():
            raise OptionError(f"--out {folder} is a file; several formats are written into one folder, "
                              "so give a folder")
        out = f"{folder}{os.sep}"
    written: list[Path] = []
    for name in formats:
        if name == "html":
            written += EXPORTERS[name](trace, out, plan, png)
        else:
            written += EXPORTERS[name](trace, out, plan if name in FIGURE_FORMATS else None)
    return written


def _formats(fmt: str | Iterable[str]) -> list[str]:
    """The formats asked for, in order, once each; an unknown one is a one-line error."""
    names = fmt.split(",") if isinstance(fmt, str) else list(fmt)
    names = list(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise OptionError(f"unknown export format {(unknown or [fmt])[0]!r}; use one of {', '.join(FORMATS)} "
                          "(or several, comma-separated)")
    return names
