"""Export for lectures: a trace as a page, figures, tables or a bundle, and bundles back in.

This module owns ``probe export`` and ``probe import`` (the README's *Export* section):

- ``html``: one self-contained page (audio embedded as a data URI, transcript coloured by token
  probability with clickable word timings, prompt, language and no-speech probabilities, the
  figures as inline PNG, the token table) that opens with no network;
- ``png`` / ``svg``: one file per figure, ``<trace>-<view>.<ext>``, PNG at print resolution;
- ``pdf``: one multi-page handout, a title page then one figure per page;
- ``json`` / ``csv``: the tokens (probabilities, top-k), words (timings) and language
  probabilities, as one JSON file or three CSV files;
- ``zip``: the trace folder as a bundle that :func:`import_bundle` puts into another store as it
  was.  Bundles are untrusted: every member name, type, size and the manifest are checked before
  anything is extracted, and extraction goes through :meth:`probe.store.Store.import_dir`.

Long audio is decoded in 30 s windows.  A figure that shows one window (its function takes
``window=``) is drawn for each chosen window (:func:`chosen_windows`; numbered from 1, as the
dashboard labels them): one page section per window, one ``<trace>-<view>-window-<n>.<ext>``
file or handout page each.  Figures that do not depend on the window are drawn once.

Every figure comes from :mod:`probe.figures` (the dashboard draws the same ones); this module only
lays them out and writes them.  Output files are written to a temporary name and renamed, so an
interrupted export never leaves a half file.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime
import html
import inspect
import io
import itertools
import json
import os
import secrets
import shutil
import stat
import struct
import tempfile
import textwrap
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import probe
from probe.errors import OptionError, ProbeError, StoreError
from probe.store import MANIFEST, MAX_MANIFEST_BYTES, SCHEMA_VERSION, Store, Trace

FIGURE_FORMATS = ("html", "png", "svg", "pdf")
FORMATS = FIGURE_FORMATS + ("json", "csv", "zip")
PRINT_DPI = 200  # png/svg/pdf figures
PAGE_DPI = 110  # figures inlined in the html page: sharp on screen, small page

TOKENS_RECORD = "token_probs.tokens"
MULTITASK_RECORD = "token_probs.multitask"
TABLES = ("tokens", "words", "languages")

# Which windows get per-window figures by default: all of a trace of up to ALL_WINDOWS_UP_TO;
# of a longer one, the first FIRST_WINDOWS and then those decoded again, looping or skipped as no
# speech, up to MAX_DEFAULT_WINDOWS in all (a page per window of an hour would be ~120 sections).
ALL_WINDOWS_UP_TO = 8
FIRST_WINDOWS = 4
MAX_DEFAULT_WINDOWS = 12

# Bundle limits: far above any real trace, far below what would fill a disk.
MAX_BUNDLE_MEMBERS = 20_000
MAX_BUNDLE_BYTES = 64 * 2**30
BUNDLE_SUFFIXES = (".json", ".safetensors", ".parquet", ".flac")

# What each figure shows, for captions; a view without an entry is captioned by its name.
CAPTIONS = {
    "waveform": "Waveform: the 16 kHz samples Whisper hears.",
    "log_mel": "Log-Mel spectrogram: the encoder's input (mel bins × 10 ms frames).",
    "conv_stem": "Conv stem: feature maps after the two convolutions (the second halves time).",
    "encoder_attention": "Encoder self-attention heads.",
    "decoder_attention": "Decoder self-attention heads over the prompt and generated tokens.",
    "attention_summary": "Attention heads at a glance: entropy and mean distance per layer and head.",
    "cross_attention": "Cross-attention alignment: which audio frames each token attends to.",
    "token_probs": "Token probabilities with the top alternatives at each step.",
    "logit_lens": "Logit lens: what each decoder layer would predict at each position.",
    "language_probs": "Language detection: the most probable languages.",
}

_PAGE_STYLE = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;
background:#f6f6f8}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px}
header h1{margin:0 0 4px;font-size:28px;word-break:break-word}
.meta{color:#555;margin:0 0 16px}
section{background:#fff;border-radius:10px;padding:16px 20px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;margin:0 0 10px}
audio{width:100%;margin:4px 0 12px}
.transcript{font-size:22px;line-height:1.9;word-break:break-word}
.hint{color:#666;font-size:13px;margin:6px 0}
.words{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.words button{font:inherit;font-size:14px;border:1px solid #ccd;border-radius:6px;
background:#fafaff;padding:2px 8px;cursor:pointer}
.words button small{color:#777;margin-left:4px}
[data-start]{cursor:pointer}
.playing{outline:2px solid #1565c0;outline-offset:1px;border-radius:4px}
code.tok{background:#eef;border-radius:4px;padding:1px 6px;margin-right:4px;font-size:14px}
table{border-collapse:collapse;font-size:14px}
th,td{text-align:left;padding:3px 12px 3px 0;border-bottom:1px solid #eee;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td code{white-space:pre;background:#f1f1f4;border-radius:3px;padding:0 2px}
.cols{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}
figure{margin:18px 0 26px}
.scroll{overflow-x:auto}
figure img{height:auto;display:block}
figcaption{color:#444;font-size:14px;margin-top:4px}
.note{color:#8a6d00}
footer{color:#777;font-size:12px;text-align:center}
"""

# Clicking anything with data-start/data-end plays that span; playback highlights the word.
_PAGE_SCRIPT = """
(function(){
var audio=document.getElementById('audio');
if(!audio)return;
var stopAt=null,current=null,spans=[].slice.call(document.querySelectorAll('[data-start]'));
function mark(el){if(current)current.classList.remove('playing');current=el;
if(el)el.classList.add('playing');}
function watch(){if(stopAt!==null&&audio.currentTime>=stopAt){audio.pause();return;}
if(!audio.paused)requestAnimationFrame(watch);}
function play(el){stopAt=parseFloat(el.dataset.end);audio.currentTime=parseFloat(el.dataset.start);
mark(el);audio.play();}
spans.forEach(function(el){el.addEventListener('click',function(){play(el);});
el.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();play(el);}});});
audio.addEventListener('play',function(){requestAnimationFrame(watch);});
audio.addEventListener('pause',function(){stopAt=null;mark(null);});
audio.addEventListener('timeupdate',function(){if(stopAt!==null)return;var t=audio.currentTime;
mark(spans.filter(function(el){return el.dataset.start<=t&&t<el.dataset.end;})[0]||null);});
})();
"""


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------


def export_trace(trace: Trace, fmt: str, out: str | os.PathLike | None = None,
                 views: list[str] | None = None,
                 windows: str | Iterable[int] | None = None) -> list[Path]:
    """Export ``trace`` as ``fmt`` (one of :data:`FORMATS`); returns the files written.

    ``out`` is the file for single-file formats (html, pdf, json, zip; an existing folder gets
    ``<trace id>.<ext>`` inside it) and the folder for the others (png, svg, csv); by default
    ``./<trace id>.<ext>`` or ``./<trace id>-export/``.  ``views`` picks figures by their
    :data:`probe.figures.FIGURES` name (default: all).  ``windows`` picks the 30 s windows of a
    long trace that per-window figures are drawn for, numbered from 1 as the dashboard shows
    them: ``"all"``, ``"1,3-5"`` or ``[1, 3, 4, 5]`` (default: see :func:`chosen_windows`).
    """
    if fmt not in _EXPORTERS:
        raise OptionError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    for option, value in (("--views", views), ("--windows", windows)):
        if value and fmt not in FIGURE_FORMATS:
            raise OptionError(f"{option} applies to {', '.join(FIGURE_FORMATS)} exports, not {fmt}; "
                              "leave it out")
    if fmt not in FIGURE_FORMATS:
        return _EXPORTERS[fmt](trace, out, None)
    return _EXPORTERS[fmt](trace, out, _FigurePlan.of(trace, views, windows))


def import_bundle(bundle: str | os.PathLike, store: Store) -> Trace:
    """Import a ``.zip`` bundle written by ``export_trace(trace, "zip")`` into ``store``.

    The bundle is checked before anything is written: one trace folder, no absolute or climbing
    paths, no links, only the files its manifest names (no pickles), a bounded member count and
    uncompressed size, a schema this version reads.  A bad bundle raises a one-line
    :class:`~probe.errors.StoreError` and leaves the store as it was.
    """
    bundle = Path(bundle).expanduser()
    with _open_bundle(bundle) as archive:
        members = _checked_members(archive, bundle)
        root = _single_root(members, bundle)
        manifest = _bundle_manifest(archive, members, root, bundle)
        _check_listed(members, root, manifest, bundle)
        _check_space(members, store, bundle)
        with _staging(store) as staging:
            _extract(archive, members, staging, bundle)
            return store.import_dir(staging / root)


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------


def figure_names() -> list[str]:
    """Every figure an export can hold, in the order pages and handouts show them."""
    return list(_figures().FIGURES)


def _figures():
    from probe import figures  # matplotlib loads only for exports that draw

    return figures


def _selected_views(views: list[str] | None) -> tuple[list[str], bool]:
    """(figure names, whether the user picked them); names may also come comma-separated."""
    names = figure_names()
    picked = [name.strip() for view in views or [] for name in view.split(",") if name.strip()]
    unknown = [name for name in picked if name not in names]
    if unknown:
        raise OptionError(f"unknown view {', '.join(map(repr, unknown))}; "
                          f"valid views: {', '.join(names)}")
    return (list(dict.fromkeys(picked)), True) if picked else (names, False)


def chosen_windows(trace: Trace, windows: str | Iterable[int] | None = None) -> tuple[list[int], bool]:
    """(the 0-based windows an export draws per-window figures for, whether that is all of them).

    ``windows`` numbers windows from 1, as the dashboard labels them: ``"all"``, a list such as
    ``"1,3-5"``, or numbers.  By default a trace of up to :data:`ALL_WINDOWS_UP_TO` windows gets
    every window; a longer one its first :data:`FIRST_WINDOWS`, then the windows that were
    decoded again, loop or were skipped as no speech, up to :data:`MAX_DEFAULT_WINDOWS` in all.
    A number outside the trace or a list that does not parse raises a one-line
    :class:`~probe.errors.OptionError`.
    """
    entries = trace.manifest.get("windows") or []
    total = max(1, len(entries))
    if windows is None:
        if total <= ALL_WINDOWS_UP_TO:
            return list(range(total)), True
        flagged = [w["index"] for w in entries[FIRST_WINDOWS:] if _flags(w)]
        chosen = list(range(FIRST_WINDOWS)) + flagged[:MAX_DEFAULT_WINDOWS - FIRST_WINDOWS]
        return chosen, len(chosen) == total
    numbers = _window_numbers(windows, total)
    if not numbers:
        raise OptionError("--windows names no window; give all, or numbers such as 1,3-5")
    bad = [n for n in numbers if not 1 <= n <= total]
    if bad:
        has = "1 window" if total == 1 else f"windows 1–{total}"
        raise OptionError(f"--windows {bad[0]}: trace {trace.id} has {has} (numbered from 1, as "
                          "the dashboard shows them)")
    chosen = sorted({n - 1 for n in numbers})
    return chosen, len(chosen) == total


def _window_numbers(windows: str | Iterable[int], total: int) -> list[int]:
    """The 1-based window numbers ``windows`` names (``all``, ``1,3-5`` or numbers)."""
    if not isinstance(windows, str):
        return [int(n) for n in windows]
    text = windows.strip().lower()
    if text == "all":
        return list(range(1, total + 1))
    numbers = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.strip().isdigit() or (dash and not last.strip().isdigit()):
            raise OptionError(f"--windows {windows!r} is not a list of windows; give all, or window "
                              "numbers and ranges counted from 1 such as 1,3-5")
        first_n, last_n = int(first), int(last) if dash else int(first)
        if last_n < first_n:
            raise OptionError(f"--windows {part.strip()} runs backwards; write "
                              f"{last_n}-{first_n}")
        numbers += range(first_n, last_n + 1)
    return numbers


def _flags(window: dict) -> list[str]:
    """Why a window deserves a look: decoded again, a repetition loop, skipped as no speech."""
    attempts = len(window.get("attempts") or [])
    return [flag for flag, on in ((f"decoded {attempts} times", attempts > 1),
                                  ("repetition loop", (window.get("signals") or {}).get("looping")),
                                  ("skipped: no speech", window.get("skipped"))) if on]


def _window_list(windows: list[int]) -> str:
    """0-based windows as the 1-based list a user would type: ``1-4, 9, 17``."""
    runs: list[list[int]] = []
    for n in (w + 1 for w in windows):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _takes_window(name: str) -> bool:
    """Whether figure ``name`` shows one window (its function has a ``window`` parameter)."""
    return "window" in inspect.signature(_figures().FIGURES[name]).parameters


class _FigurePlan:
    """What a figure export draws: (view, window) pairs in the order pages show them, and why.

    A trace of one window draws every view once, as before.  A longer one draws the views that
    do not depend on the window once, then each chosen window's own views (window ``None``: the
    figure's default)."""

    def __init__(self, trace: Trace, names: list[str], picked: bool, windows: list[int],
                 complete: bool, requested: bool):
        self.trace, self.picked = trace, picked
        self.windows, self.complete, self.requested = windows, complete, requested
        self.total = len(trace.manifest.get("windows") or [])
        if self.total <= 1:
            self.pairs: list[tuple[str, int | None]] = [(name, None) for name in names]
        else:
            once = [name for name in names if not _takes_window(name)]
            each = [name for name in names if _takes_window(name)]
            self.pairs = [(name, None) for name in once] + [(name, w) for w in windows for name in each]

    @classmethod
    def of(cls, trace: Trace, views: list[str] | None, windows: str | Iterable[int] | None) \
            -> "_FigurePlan":
        names, picked = _selected_views(views)
        chosen, complete = chosen_windows(trace, windows)
        return cls(trace, names, picked, chosen, complete, windows is not None)

    @property
    def per_window(self) -> bool:
        return self.total > 1

    def note(self) -> str | None:
        """What a default selection left out, and how to get it (None when nothing was)."""
        if self.complete or self.requested or not self.per_window:
            return None
        return (f"Per-window figures are drawn for windows {_window_list(self.windows)} of "
                f"{self.total}: the first {FIRST_WINDOWS} and those decoded again, looping or skipped "
                f"as no speech. Export every window with `probe export {self.trace.id} --windows all`, "
                "or pick some with e.g. `--windows 5-8`.")

    def drawn(self, skipped: list[tuple[str, int | None, str]] | None = None) \
            -> Iterator[tuple[str, int | None, Any]]:
        """(name, window, figure) for each pair, drawn one at a time as they are written.

        A view that cannot be drawn (the trace lacks its records) is an error when the user
        named it; among all views it is left out and noted in ``skipped`` as (name, window,
        reason)."""
        figures = _figures()
        for name, window in self.pairs:
            try:
                fig = (figures.FIGURES[name](self.trace) if window is None
                       else figures.FIGURES[name](self.trace, window=window))
            except ProbeError as err:
                if self.picked:
                    raise
                if skipped is not None:
                    skipped.append((name, window, str(err)))
                continue
            yield name, window, fig

    def file_stem(self, name: str, window: int | None) -> str:
        """``<trace>-<view>``, with ``-window-<n>`` (zero-padded to sort) for a window's figure."""
        if window is None:
            return f"{self.trace.id}-{name}"
        return f"{self.trace.id}-{name}-window-{window + 1:0{len(str(self.total))}d}"

    def no_figures(self) -> StoreError:
        names = list(dict.fromkeys(name for name, _ in self.pairs))
        return StoreError(f"trace {self.trace.id} has no records for "
                          f"{', '.join(names) if self.picked else 'any figure'}; "
                          "re-run it with the built-in plugins enabled")


def _label(name: str, window: int | None) -> str:
    """A figure's caption, led by its window (numbered from 1) when it shows one."""
    return _caption(name) if window is None else f"Window {window + 1} · {_caption(name)}"


# ------------------------------------------------------------------------------------------
# Exporters
# ------------------------------------------------------------------------------------------


def _export_html(trace: Trace, out, plan: _FigurePlan) -> list[Path]:
    page = _page(trace, plan)
    path = _out_file(trace, out, "html")
    _write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return [path]


def _export_figure_files(trace: Trace, out, plan: _FigurePlan, suffix: str) -> list[Path]:
    folder = _out_dir(trace, out)
    written = []
    for name, window, fig in plan.drawn():
        path = folder / f"{plan.file_stem(name, window)}{suffix}"
        _write_atomic(path, lambda tmp, fig=fig: _figures().save(fig, tmp, dpi=PRINT_DPI))
        written.append(path)
    if not written:
        raise plan.no_figures()
    return written


def _export_pdf(trace: Trace, out, plan: _FigurePlan) -> list[Path]:
    path = _out_file(trace, out, "pdf")
    _write_atomic(path, lambda tmp: _write_handout(trace, plan, tmp))
    return [path]


def _write_handout(trace: Trace, plan: _FigurePlan, path: Path) -> None:
    from matplotlib.backends.backend_pdf import PdfPages

    skipped: list[tuple[str, int | None, str]] = []
    drawn = list(plan.drawn(skipped))  # first: the title page lists them
    if not drawn:
        raise plan.no_figures()
    missing = list(dict.fromkeys(name for name, _, _ in skipped))
    title = _title_page(trace, [(name, window) for name, window, _ in drawn], missing, plan.note())
    with PdfPages(path, metadata=_pdf_metadata(trace)) as pdf, _figures()._quiet_missing_glyphs():
        pdf.savefig(title)
        for _, _, fig in drawn:
            pdf.savefig(fig, dpi=PRINT_DPI)


def _export_json(trace: Trace, out, views) -> list[Path]:
    tables = export_tables(trace)
    document = {"trace": _summary(trace), **tables}
    text = json.dumps(document, ensure_ascii=False, indent=1, default=_json_default)
    path = _out_file(trace, out, "json")
    _write_atomic(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return [path]


def _export_csv(trace: Trace, out, views) -> list[Path]:
    tables = {name: rows for name, rows in export_tables(trace).items() if rows}
    folder = _out_dir(trace, out)
    written = []
    for name, rows in tables.items():
        path = folder / f"{trace.id}-{name}.csv"
        _write_atomic(path, lambda tmp, rows=rows: _write_csv(rows, tmp))
        written.append(path)
    return written


def _export_zip(trace: Trace, out, views) -> list[Path]:
    path = _out_file(trace, out, "zip")
    _write_atomic(path, lambda tmp: _write_bundle(trace, tmp))
    return [path]


_EXPORTERS: dict[str, Callable[[Trace, Any, Any], list[Path]]] = {
    "html": _export_html,
    "png": lambda trace, out, plan: _export_figure_files(trace, out, plan, ".png"),
    "svg": lambda trace, out, plan: _export_figure_files(trace, out, plan, ".svg"),
    "pdf": _export_pdf,
    "json": _export_json,
    "csv": _export_csv,
    "zip": _export_zip,
}


# ------------------------------------------------------------------------------------------
# Tables (json / csv, and the html page's token table)
# ------------------------------------------------------------------------------------------


def export_tables(trace: Trace) -> dict[str, list[dict]]:
    """The tables json/csv exports hold: ``tokens`` (probability, entropy, top-k per generated
    token), ``words`` (word timings) and ``languages`` (language probabilities per window)."""
    tables = {"tokens": _optional_record(trace, TOKENS_RECORD, []),
              "words": trace.words(),
              "languages": language_rows(trace)}
    if not any(tables.values()):
        raise StoreError(f"trace {trace.id} has no token, word or language records; re-run it "
                         "with the token_probs and cross_attention plugins")
    return tables


def language_rows(trace: Trace) -> list[dict]:
    """One row per (window, language), most probable first within each window."""
    multitask = _optional_record(trace, MULTITASK_RECORD, {})
    windows = multitask.get("windows", []) if isinstance(multitask, dict) else []
    return [{"window": window.get("window", index), "language": code, "probability": prob}
            for index, window in enumerate(windows)
            for code, prob in sorted(window.get("language_probs", {}).items(),
                                     key=lambda item: -item[1])]


def _optional_record(trace: Trace, name: str, default: Any) -> Any:
    return trace.record(name) if name in trace.records else default


def _summary(trace: Trace) -> dict:
    """What a reader of the JSON export needs to know about the trace."""
    manifest = trace.manifest
    return {"id": trace.id, "name": trace.name, "created": trace.created,
            "model": trace.model_id, "audio_source": trace.audio_source,
            "duration": _audio_field(trace, "duration"), "transcript": trace.transcript,
            "language": trace.language,
            "language_probability": manifest.get("language_probability"),
            "no_speech_probability": manifest.get("no_speech_probability"),
            "task": (manifest.get("decode") or {}).get("task"),
            "prompt": [token.get("token") for token in _prompt(trace)]}


def _write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV; list and dict cells are written as JSON text so nothing is lost."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_cell(value) for key, value in row.items()})


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ------------------------------------------------------------------------------------------
# The html page
# ------------------------------------------------------------------------------------------


def render_html(trace: Trace, views: list[str] | None = None,
                windows: str | Iterable[int] | None = None) -> str:
    """The self-contained page for ``trace``: nothing in it loads from the network.  ``views`` and
    ``windows`` choose figures and windows as in :func:`export_trace`."""
    return _page(trace, _FigurePlan.of(trace, views, windows))


def _page(trace: Trace, plan: _FigurePlan) -> str:
    title = trace.name or trace.id
    sections = [_listen_section(trace), _task_section(trace), _windows_section(trace, plan),
                *_figure_sections(plan), _tokens_section(trace)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{_esc(title)} · whisper-probe</title><style>{_PAGE_STYLE}</style></head>"
            f"<body><main><header><h1>{_esc(title)}</h1>"
            f"<p class=\"meta\">{_esc(_meta_line(trace))}</p></header>"
            + "".join(sections)
            + f"<footer>Exported by whisper-probe {_esc(probe.__version__)} on "
              f"{_esc(_today())} from trace {_esc(trace.id)}.</footer>"
            f"</main><script>{_PAGE_SCRIPT}</script></body></html>\n")


def _meta_line(trace: Trace) -> str:
    duration = _audio_field(trace, "duration")
    parts = [f"model {trace.model_id or 'unknown'}",
             f"{duration:.1f} s of audio" if isinstance(duration, (int, float)) else None,
             f"source {Path(trace.audio_source).name}" if trace.audio_source else None,
             f"traced {trace.created[:19].replace('T', ' ')}" if trace.created else None]
    return " · ".join(part for part in parts if part)


def _listen_section(trace: Trace) -> str:
    audio = trace.audio_bytes()
    player = ('<audio id="audio" controls preload="auto" '
              f'src="data:audio/flac;base64,{base64.b64encode(audio).decode("ascii")}"></audio>'
              if audio else '<p class="note">This trace kept no audio.</p>')
    return (f'<section id="listen"><h2>Listen and read</h2>{player}'
            f'{_transcript(trace)}{_word_buttons(trace.words())}</section>')


def _transcript(trace: Trace) -> str:
    """Coloured by token probability where the trace has them, else plain text."""
    if TOKENS_RECORD not in trace.records:
        return f'<div class="transcript">{_esc(trace.transcript)}</div>'
    return (f'<div class="transcript">{_figures().transcript_html(trace)}</div>'
            '<p class="hint">Colour shows how sure the model was of each token (red: unsure, '
            'green: sure); hover a token for its alternatives.</p>')


def _word_buttons(words: list[dict]) -> str:
    if not words:
        return ""
    buttons = "".join(
        f'<button type="button" data-start="{float(w["start"]):.3f}" '
        f'data-end="{float(w["end"]):.3f}">{_esc(str(w["word"]).strip())}'
        f'<small>{float(w["start"]):.2f}–{float(w["end"]):.2f} s</small></button>'
        for w in words)
    return ('<h3 class="hint">Word timings: click a word to hear it</h3>'
            f'<div class="words">{buttons}</div>')


def _task_section(trace: Trace) -> str:
    manifest = trace.manifest
    windows = manifest.get("windows") or []
    if len(windows) > 1:
        return _task_by_window(trace, windows)
    prompt = "".join(f'<code class="tok">{_esc(str(t.get("token")))}</code>'
                     for t in _prompt(trace))
    task = (manifest.get("decode") or {}).get("task") or "transcribe"
    facts = [("language", f"{trace.language or '?'} "
                          f"(p = {_number(manifest.get('language_probability'))})"),
             ("no-speech probability", _number(manifest.get("no_speech_probability"))),
             ("task", task)]
    fact_rows = "".join(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>"
                        for key, value in facts)
    return ('<section id="task"><h2>Prompt, language and no-speech</h2>'
            f'<p>The decoder starts from these special tokens: {prompt or "(none recorded)"}</p>'
            f'<div class="cols"><table>{fact_rows}</table>{_language_table(trace)}</div>'
            '</section>')


def _task_by_window(trace: Trace, windows: list[dict], top: int = 3) -> str:
    """Long audio: every window's own prompt, language token, top languages and no-speech."""
    task = (trace.manifest.get("decode") or {}).get("task") or "transcribe"
    languages: dict[int, list[dict]] = {}
    for row in language_rows(trace):
        languages.setdefault(row["window"], []).append(row)
    rows = "".join(
        f'<tr id="prompt-window-{w["index"] + 1}"><td class="num">{w["index"] + 1}</td>'
        f'<td class="num">{w["start"]:.2f}–{w["end"]:.2f}</td><td>{_window_prompt(w)}</td>'
        f'<td>{_esc(w["language"])} (p = {_number(w.get("language_probability"))})</td>'
        f'<td>{_top_languages(languages.get(w["index"], []), top)}</td>'
        f'<td class="num">{_number(w.get("no_speech_probability"))}</td></tr>' for w in windows)
    return ('<section id="task"><h2>Prompt, language and no-speech, window by window</h2>'
            f'<p>Task: {_esc(task)}. Each 30 s window is decoded from its own prompt: the language '
            'token (detected, or given), the task and, when conditioning on previous text, the '
            'text decoded so far after <code class="tok">&lt;|startofprev|&gt;</code>.</p>'
            '<table><tr><th>window</th><th>seconds</th><th>prompt</th><th>language</th>'
            f'<th>top languages</th><th>no-speech p</th></tr>{rows}</table></section>')


def _top_languages(rows: list[dict], top: int) -> str:
    return ", ".join(f"{_esc(row['language'])} {_number(row['probability'])}" for row in rows[:top])


def _window_prompt(window: dict, max_previous: int = 80) -> str:
    """A window's prompt as tokens, the previous text before ``<|startoftranscript|>`` quoted
    (shortened from the front: its end is what the decoder reads last)."""
    tokens = [str(token) for token in window.get("prompt_tokens") or []]
    sot = int(window.get("sot_index") or 0)
    previous = "".join(tokens[1:sot]) if sot > 0 else ""
    if len(previous) > max_previous:
        previous = "…" + previous[-max_previous:]
    chips = [f'<code class="tok">{_esc(token)}</code>' for token in tokens[sot:]]
    if sot > 0:
        chips.insert(0, f'<code class="tok">{_esc(tokens[0])}</code><q>{_esc(previous.strip())}</q> ')
    return "".join(chips) or "(none recorded)"


def _windows_section(trace: Trace, plan: _FigurePlan) -> str:
    """Each window generate() decoded: where, in which language, its signals and its attempts;
    numbered from 1 as in the dashboard, linked to the window's figures where the page has them."""
    windows = trace.manifest.get("windows") or []
    if not windows:
        return ""
    drawn = set(plan.windows) if plan.per_window and any(w is not None for _, w in plan.pairs) \
        else set()
    rows = []
    for window in windows:
        signals = window.get("signals") or {}
        flags = ", ".join(flag for flag, on in (("skipped: no speech", window.get("skipped")),
                                                ("repetition loop", signals.get("looping"))) if on)
        number = window["index"] + 1
        label = f'<a href="#window-{number}">{number}</a>' if window["index"] in drawn else str(number)
        attempts = "".join(
            f'<li><b>attempt {a["attempt"]}</b> (T = {a["temperature"]:.1f}, {a["num_beams"]} beam(s)): '
            f'{_esc(a["verdict"])} — {_esc(a["reason"])}<br><q>{_esc(a["text"][:200])}</q></li>'
            for a in window.get("attempts") or [])
        rows.append(f'<tr><td class="num">{label}</td>'
                    f'<td class="num">{window["start"]:.2f}–{window.get("next_seek", 0) / 100:.2f}</td>'
                    f'<td>{_esc(window["language"])}</td><td class="num">{_number(window["no_speech_probability"])}</td>'
                    f'<td class="num">{_number(signals.get("avg_logprob"))}</td>'
                    f'<td class="num">{_number(signals.get("compression_ratio"))}</td>'
                    f'<td>{_esc(flags)}<ol start="0">{attempts}</ol></td></tr>')
    return ('<section id="windows"><h2>Windows and retries</h2>'
            '<p class="hint">Whisper decodes 30 s at a time; each window starts where the text of the one '
            'before ended. A window is decoded again at a higher temperature when its text looks repetitive '
            'or unsure, and dropped when it holds no speech.</p>'
            '<table><tr><th>window</th><th>seconds used</th><th>language</th><th>no-speech p</th>'
            '<th>avg log-prob</th><th>compression</th><th>attempts</th></tr>' + "".join(rows) + "</table>"
            + (f'<p class="note">{_esc(plan.note())}</p>' if plan.note() else "") + "</section>")


def _language_table(trace: Trace, top: int = 5) -> str:
    rows = [row for row in language_rows(trace) if row["window"] == 0][:top]
    if not rows:
        return ""
    body = "".join(f'<tr><td>{_esc(row["language"])}</td>'
                   f'<td class="num">{_number(row["probability"])}</td></tr>' for row in rows)
    return f"<table><tr><th>top languages</th><th>p</th></tr>{body}</table>"


def _figure_sections(plan: _FigurePlan) -> list[str]:
    """"Inside the model" with the figures drawn once, then one section per chosen window with
    that window's figures (long traces only)."""
    figures: dict[int | None, list[str]] = {None: []}
    figures.update((window, []) for window in plan.windows if plan.per_window)
    skipped: list[tuple[str, int | None, str]] = []
    for name, window, fig in plan.drawn(skipped):
        png = _figures().png_bytes(fig, dpi=PAGE_DPI)
        caption = _label(name, window)
        anchor = name if window is None else f"{name}-window-{window + 1}"
        figures[window].append(f'<figure id="figure-{_esc(anchor)}"><div class="scroll">'
                               f'<img alt="{_esc(caption)}" style="{_image_width(png)}" '
                               f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                               f'</div><figcaption>{_esc(caption)}</figcaption></figure>')
    for name, window, reason in skipped:
        figures[window].append(f'<p class="note">Not drawn: {_esc(_caption(name))} ({_esc(reason)})</p>')
    sections = [f'<section id="figures"><h2>Inside the model</h2>{"".join(figures[None])}</section>']
    windows = plan.trace.manifest.get("windows") or []
    for window, parts in figures.items():
        if window is not None and parts:
            sections.append(f'<section id="window-{window + 1}"><h2>{_esc(_window_heading(windows[window], len(windows)))}'
                            f'</h2>{"".join(parts)}</section>')
    return sections


def _window_heading(window: dict, total: int) -> str:
    flags = _flags(window)
    return (f"Window {window['index'] + 1} of {total}: {window['start']:.2f}–{window['end']:.2f} s, "
            f"<|{window['language']}|>, no-speech p = {_number(window.get('no_speech_probability'))}"
            + (f" ({', '.join(flags)})" if flags else ""))


def _image_width(png: bytes, min_scale: float = 0.75) -> str:
    """CSS for a figure: its natural width, shrunk to the column but never below ``min_scale``
    of it, so a wide token-by-token figure scrolls sideways instead of becoming unreadable."""
    width = struct.unpack(">I", png[16:20])[0]  # the IHDR chunk's width field
    return f"width:{width}px;max-width:max(100%,{round(width * min_scale)}px)"


def _caption(name: str) -> str:
    return CAPTIONS.get(name, name.replace("_", " "))


def _tokens_section(trace: Trace) -> str:
    rows = _optional_record(trace, TOKENS_RECORD, [])
    if not rows:
        return ""
    by_window = len(trace.manifest.get("windows") or []) > 1  # steps count from 0 in each window
    body = "".join(
        (f'<tr><td class="num">{row.get("window", 0) + 1}</td>' if by_window else '<tr>')
        + f'<td class="num">{_esc(str(row.get("step")))}</td>'
        f'<td><code>{_esc(repr(row.get("token"))[1:-1])}</code></td>'
        f'<td class="num">{_number(row.get("prob"))}</td>'
        f'<td class="num">{_number(row.get("entropy"), 2)}</td>'
        f'<td>{_alternatives(row)}</td></tr>' for row in rows)
    return ('<section id="tokens"><h2>Tokens, step by step</h2><table><tr>'
            + ('<th>window</th>' if by_window else '') + '<th>step</th>'
            '<th>token</th><th>p</th><th>entropy</th><th>top alternatives</th></tr>'
            f'{body}</table></section>')


def _alternatives(row: dict) -> str:
    pairs = zip(row.get("top_k_tokens") or [], row.get("top_k_probs") or [])
    return ", ".join(f"<code>{_esc(repr(token)[1:-1])}</code> {_number(prob, 2)}"
                     for token, prob in pairs)


def _prompt(trace: Trace) -> list[dict]:
    prompt = trace.manifest.get("prompt")
    return [token for token in prompt if isinstance(token, dict)] if isinstance(prompt, list) else []


def _audio_field(trace: Trace, key: str) -> Any:
    audio = trace.manifest.get("audio")
    return audio.get(key) if isinstance(audio, dict) else None


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "?"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _today() -> str:
    return datetime.date.today().isoformat()


# ------------------------------------------------------------------------------------------
# The pdf handout's title page
# ------------------------------------------------------------------------------------------


def _title_page(trace: Trace, contents: list[tuple[str, int | None]], missing: list[str],
                note: str | None = None) -> Any:
    """An A4-landscape page of text: title, transcript, model, language, prompt, the pages that
    follow ((view, window) pairs; a window's pages on one line), the figures the trace could not
    give and what a default choice of windows left out; set in the fonts :mod:`probe.figures`
    uses, so any script it covers shows."""
    return _figures()._draws(_title_text)(trace, contents, missing, note)


def _contents_lines(contents: list[tuple[str, int | None]]) -> list[str]:
    """``page 2: <caption>`` for figures drawn once; ``pages 9–11: window 2 (log_mel, ...)``."""
    lines, number = [], 2
    for window, pages in itertools.groupby(contents, key=lambda pair: pair[1]):
        names = [name for name, _ in pages]
        if window is None:
            lines += [f"page {number + i}: {_caption(name)}" for i, name in enumerate(names)]
        else:
            span = f"page {number}" if len(names) == 1 else f"pages {number}–{number + len(names) - 1}"
            lines.append(f"{span}: window {window + 1} ({', '.join(names)})")
        number += len(names)
    return lines


def _title_text(trace: Trace, contents: list[tuple[str, int | None]], missing: list[str],
                note: str | None = None, max_transcript_lines: int = 10) -> Any:
    from matplotlib.figure import Figure

    manifest = trace.manifest
    transcript = textwrap.wrap(trace.transcript or "(no speech)", 80)
    if len(transcript) > max_transcript_lines:
        transcript = transcript[:max_transcript_lines - 1] + [
            "… (the full transcript is in the html and json exports)"]
    facts = [f"model: {trace.model_id or 'unknown'}",
             f"language: {trace.language or '?'} (p = "
             f"{_number(manifest.get('language_probability'))})   no-speech p = "
             f"{_number(manifest.get('no_speech_probability'))}",
             "prompt: " + " ".join(str(t.get("token")) for t in _prompt(trace)),
             f"audio: {trace.audio_source or 'array'}",
             f"trace {trace.id}, exported by whisper-probe {probe.__version__} on {_today()}"]
    pages = _contents_lines(contents)
    pages += [f"not in this trace (its plugin did not run): {', '.join(missing)}"] if missing else []
    pages += textwrap.wrap(note, 150) if note else []
    lines = ([(trace.name or trace.id, 26, "bold"), ("whisper-probe handout", 13, "normal"),
              ("", 8, "normal")]
             + [(line, 16, "normal") for line in transcript] + [("", 8, "normal")]
             + [(line, 11, "normal") for fact in facts for line in textwrap.wrap(fact, 120)]
             + [("", 8, "normal"), ("Contents", 12, "bold")]
             + [(line, 10, "normal") for line in pages])
    fig = Figure(figsize=(11.69, 8.27))
    y = 0.92
    for text, size, weight in lines:
        fig.text(0.07, y, text, fontsize=size, fontweight=weight, va="top", parse_math=False)
        y -= size * 1.55 / (8.27 * 72)  # line height as a fraction of the page
    return fig


def _pdf_metadata(trace: Trace) -> dict:
    return {"Title": f"{trace.name or trace.id} (whisper-probe)", "Subject": trace.transcript,
            "Creator": f"whisper-probe {probe.__version__}"}


# ------------------------------------------------------------------------------------------
# Output paths and atomic writes
# ------------------------------------------------------------------------------------------


def _out_file(trace: Trace, out, ext: str) -> Path:
    """The file a single-file export writes: ``out``, ``out/<id>.<ext>`` for a folder, or
    ``./<id>.<ext>``."""
    if out is None:
        return Path.cwd() / f"{trace.id}.{ext}"
    path = Path(out).expanduser()
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        return path.absolute() / f"{trace.id}.{ext}"
    return path.absolute()


def _out_dir(trace: Trace, out) -> Path:
    """The folder a multi-file export writes into (made if missing)."""
    folder = (Path(out).expanduser() if out is not None
              else Path.cwd() / f"{trace.id}-export").absolute()
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--out {folder} is a file; this format writes several files, "
                          "so give a folder")
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` via a temporary file beside it, renamed into place only when complete."""
    if path.is_dir():
        raise OptionError(f"{path} is a folder; remove it or pass another --out")
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}")
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise OptionError(f"could not write {path}: {reason}; pass --out somewhere writable") \
            from err


# ------------------------------------------------------------------------------------------
# Zip bundles
# ------------------------------------------------------------------------------------------


def _write_bundle(trace: Trace, path: Path) -> None:
    """Every file the manifest names, under ``<trace id>/``; FLAC is stored, the rest deflated."""
    with zipfile.ZipFile(path, "w") as archive:
        for rel in trace._member_files():
            source = trace._member_path(rel, "listed")
            method = zipfile.ZIP_STORED if rel.endswith(".flac") else zipfile.ZIP_DEFLATED
            archive.write(source, f"{trace.id}/{rel}", compress_type=method)


def _open_bundle(bundle: Path) -> zipfile.ZipFile:
    if not bundle.is_file():
        raise StoreError(f"no bundle at {bundle}; pass a .zip written by `probe export -f zip`")
    try:
        return zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise _bad_bundle(bundle, f"it is not a readable zip file ({err})") from err
    except OSError as err:
        raise StoreError(f"could not read bundle {bundle}: {err.strerror or err}; "
                         "check the file") from err


def _checked_members(archive: zipfile.ZipFile, bundle: Path) -> dict[str, zipfile.ZipInfo]:
    """Files of the bundle by name, after refusing anything that is not a plain trace file."""
    infos = archive.infolist()
    if len(infos) > MAX_BUNDLE_MEMBERS:
        raise _bad_bundle(bundle, f"it has {len(infos)} members, more than "
                                  f"{MAX_BUNDLE_MEMBERS} a trace can have")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        _check_member_name(name, bundle)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise _bad_bundle(bundle, f"member {name!r} is a link or special file")
        if info.is_dir():
            continue
        if not name.endswith(BUNDLE_SUFFIXES):
            raise _bad_bundle(bundle, f"member {name!r} is not a trace file (only "
                                      f"{', '.join(BUNDLE_SUFFIXES)}; pickles are never loaded)")
        if name in members:
            raise _bad_bundle(bundle, f"member {name!r} appears twice")
        members[name] = info
    total = sum(info.file_size for info in members.values())
    if total > MAX_BUNDLE_BYTES:
        raise _bad_bundle(bundle, f"it unpacks to {total / 2**30:.1f} GiB, more than the "
                                  f"{MAX_BUNDLE_BYTES / 2**30:.0f} GiB limit (a zip bomb?)")
    return members


def _check_member_name(name: str, bundle: Path) -> None:
    path = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or ":" in name or path.is_absolute()
            or any(part in ("..", ".") for part in name.rstrip("/").split("/"))
            or "" in name.rstrip("/").split("/")):
        raise _bad_bundle(bundle, f"member {name!r} has an unsafe path (absolute, '..', or "
                                  "not a plain relative path)")


def _single_root(members: dict[str, zipfile.ZipInfo], bundle: Path) -> str:
    roots = sorted({name.split("/", 1)[0] for name in members})
    if len(roots) != 1 or any("/" not in name for name in members):
        found = ", ".join(roots[:5]) or "nothing"
        raise _bad_bundle(bundle, f"it must hold exactly one trace folder, found {found}")
    return roots[0]


def _bundle_manifest(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], root: str,
                     bundle: Path) -> dict:
    info = members.get(f"{root}/{MANIFEST}")
    if info is None:
        raise _bad_bundle(bundle, f"its folder {root} has no {MANIFEST}")
    if info.file_size > MAX_MANIFEST_BYTES:
        raise _bad_bundle(bundle, f"its {MANIFEST} is larger than 16 MB")
    try:
        manifest = json.loads(archive.read(info))
    except (ValueError, RecursionError) as err:
        raise _bad_bundle(bundle, f"its {MANIFEST} is not valid JSON") from err
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if type(version) is not int or version < 1:
        raise _bad_bundle(bundle, f"its {MANIFEST} has no valid schema_version")
    if version > SCHEMA_VERSION:
        raise StoreError(f"bundle {bundle} was written by a newer whisper-probe (schema "
                         f"{version} > {SCHEMA_VERSION}); upgrade whisper-probe to import it")
    return manifest


def _check_listed(members: dict[str, zipfile.ZipInfo], root: str, manifest: dict,
                  bundle: Path) -> None:
    """Refuse members the manifest does not name (the store would not copy them anyway)."""
    records = manifest.get("records")
    audio = manifest.get("audio")
    listed = {MANIFEST}
    listed |= {entry.get("file") for entry in records.values() if isinstance(entry, dict)} \
        if isinstance(records, dict) else set()
    listed |= {audio.get("file")} if isinstance(audio, dict) else set()
    extra = sorted(name for name in members if name[len(root) + 1:] not in listed)
    if extra:
        raise _bad_bundle(bundle, f"member {extra[0]!r} is not a file its manifest names")


def _check_space(members: dict[str, zipfile.ZipInfo], store: Store, bundle: Path) -> None:
    needed = sum(info.file_size for info in members.values())
    free = shutil.disk_usage(store.path).free
    if needed > free:
        raise StoreError(f"bundle {bundle} unpacks to {needed / 2**20:.0f} MB but the store at "
                         f"{store.path} has {free / 2**20:.0f} MB free; free space first")


@contextlib.contextmanager
def _staging(store: Store) -> Iterator[Path]:
    """A fresh folder in the store's temp area, removed (with the temp area if then empty)."""
    from probe.store import _remove_if_empty

    tmp = store._tmp_dir()
    staging = Path(tempfile.mkdtemp(prefix="bundle-", dir=tmp))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(tmp)


def _extract(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], staging: Path,
             bundle: Path) -> None:
    """Unpack checked members as new regular files, never writing more than each declares."""
    for name, info in members.items():
        target = staging.joinpath(*name.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "xb") as sink:
                _copy_bounded(source, sink, info.file_size, name, bundle)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as err:
            raise _bad_bundle(bundle, f"member {name!r} cannot be unpacked ({err})") from err
        except OSError as err:
            raise StoreError(f"could not unpack bundle {bundle} into {staging.parent}: "
                             f"{err.strerror or err}; free space or use --store elsewhere") from err


def _copy_bounded(source: io.BufferedIOBase, sink: io.BufferedIOBase, limit: int, name: str,
                  bundle: Path) -> None:
    written = 0
    while chunk := source.read(2**20):
        written += len(chunk)
        if written > limit:
            raise _bad_bundle(bundle, f"member {name!r} unpacks to more than it declares")
        sink.write(chunk)


def _bad_bundle(bundle: Path, reason: str) -> StoreError:
    return StoreError(f"bundle {bundle} is not a valid trace bundle: {reason}; "
                      "export it again with `probe export -f zip`")
