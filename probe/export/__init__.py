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
the trace lacks (``-p no:NAME``) is left out, with nothing empty or broken in its place.  Output
files are written to a temporary name and renamed, so an interrupted export never leaves a half
file.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from probe.errors import OptionError

if TYPE_CHECKING:
    from probe.store import Trace

# the public names, each from the module that owns it: imported when first used, so a plugin's
# export section that needs only probe.export.markup does not load the writers, the bundle code
# and the store with it
_HOME = {"import_bundle": "bundle", "PAGE_DPI": "page", "render_html": "page", "ALL_WINDOWS_UP_TO": "plan",
         "FIRST_WINDOWS": "plan", "MAX_DEFAULT_WINDOWS": "plan", "FigurePlan": "plan", "chosen_windows": "plan",
         "figure_names": "plan", "PRINT_DPI": "handout", "EXPORTERS": "writers", "export_tables": "writers"}
__all__ = ["ALL_WINDOWS_UP_TO", "FIGURE_FORMATS", "FIRST_WINDOWS", "FORMATS", "MAX_DEFAULT_WINDOWS", "PAGE_DPI",
           "PRINT_DPI", "chosen_windows", "export_tables", "export_trace", "figure_names", "import_bundle",
           "render_html"]

FIGURE_FORMATS = ("html", "png", "svg", "pdf")
FORMATS = FIGURE_FORMATS + ("json", "csv", "zip")


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"probe.export.{_HOME[name]}"), name)
    raise AttributeError(f"module 'probe.export' has no attribute {name!r}")


def export_trace(trace: Trace, fmt: str, out: str | os.PathLike | None = None,
                 views: list[str] | None = None,
                 windows: str | Iterable[int] | None = None) -> list[Path]:
    """Export ``trace`` as ``fmt`` (one of :data:`FORMATS`); returns the files written.

    ``out`` is the file for single-file formats (html, pdf, json, zip; an existing folder gets
    ``<trace id>.<ext>`` inside it) and the folder for the others (png, svg, csv); by default
    ``./<trace id>.<ext>`` or ``./<trace id>-export/``.  ``views`` picks figures by name
    (:func:`figure_names`; default: every one the trace has records for).  ``windows`` picks the
    30 s windows of a long trace that per-window figures are drawn for, numbered from 1 as the
    dashboard shows them: ``"all"``, ``"1,3-5"`` or ``[1, 3, 4, 5]`` (default: see
    :func:`chosen_windows`).
    """
    from probe.export.plan import FigurePlan
    from probe.export.writers import EXPORTERS

    if fmt not in EXPORTERS:
        raise OptionError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    for option, value in (("--views", views), ("--windows", windows)):
        if value and fmt not in FIGURE_FORMATS:
            raise OptionError(f"{option} applies to {', '.join(FIGURE_FORMATS)} exports, not {fmt}; "
                              "leave it out")
    if fmt not in FIGURE_FORMATS:
        return EXPORTERS[fmt](trace, out, None)
    return EXPORTERS[fmt](trace, out, FigurePlan.of(trace, views, windows))
