"""The PDF handout: a title page (title, transcript, model, language, prompt, contents) and then
one figure per page, the same figures the HTML page inlines; each page is saved on its own (so
pages can be drawn in parallel and shared with the other formats) and pypdf joins them."""

from __future__ import annotations

import importlib
import io
import itertools
import textwrap
from pathlib import Path
from typing import Any

import probe
from probe.export.markup import number, prompt_tokens, today
from probe.export.plan import FigurePlan, caption
from probe.export.render import PRINT_DPI, figure_bytes
from probe.figures.base import draws, quiet_missing_glyphs
from probe.store import Trace



def write_handout(trace: Trace, plan: FigurePlan, path: Path) -> None:
    """The title page, then each figure's page as :func:`~.render.figure_bytes` saved it (drawn
    once for every format of the export, in worker processes where it can be), joined by pypdf."""
    from pypdf import PdfReader, PdfWriter

    skipped: list[tuple[str, int | None, str]] = []
    pages = []  # (name, window, one-page PDF)
    for name, window in plan.pairs:  # first: the title page lists them
        data = plan.attempt(name, window, lambda: figure_bytes(plan, name, window, "pdf", PRINT_DPI), skipped)
        if data is not None:
            pages.append((name, window, data))
    if not pages:
        raise plan.no_figures()
    missing = list(dict.fromkeys(name for name, _, _ in skipped))
    contents = [(name, window) for name, window, _ in pages]
    prepared = plan.prepared.get("title")
    title = prepared[1] if prepared and prepared[0] == (contents, missing) else _title_pdf(trace, plan, contents, missing)
    writer = PdfWriter()
    for data in [title] + [data for _, _, data in pages]:
        writer.append(PdfReader(io.BytesIO(data)))
    writer.add_metadata({f"/{key}": value for key, value in _pdf_metadata(trace).items()})
    with open(path, "wb") as handle:
        writer.write(handle)


def prepare_title(trace: Trace, plan: FigurePlan) -> None:
    """While worker processes draw the figures (:func:`~.render.prerender`): the title page for
    every planned figure, kept for :func:`write_handout` (which draws it again if any is missing),
    and pypdf loaded."""
    importlib.import_module("pypdf")  # a tenth of a second the writer then need not wait for

    contents = list(plan.pairs)
    plan.prepared["title"] = ((contents, []), _title_pdf(trace, plan, contents, []))


def _title_pdf(trace: Trace, plan: FigurePlan, contents: list[tuple[str, int | None]], missing: list[str]) -> bytes:
    buffer = io.BytesIO()
    with quiet_missing_glyphs():
        _title_page(trace, contents, missing, plan.note()).savefig(buffer, format="pdf")  # the whole A4 page
    return buffer.getvalue()


def _title_page(trace: Trace, contents: list[tuple[str, int | None]], missing: list[str],
                note: str | None = None) -> Any:
    """An A4-landscape page of text: title, transcript, model, language, prompt, the pages that
    follow ((view, window) pairs; a window's pages on one line), the figures the trace could not
    give and what a default choice of windows left out; set in the fonts :mod:`probe.figures`
    uses, so any script it covers shows."""
    return draws(_title_text)(trace, contents, missing, note)


def _contents_lines(contents: list[tuple[str, int | None]]) -> list[str]:
    """``page 2: <caption>`` for figures drawn once; ``pages 9–11: window 2 (log_mel, ...)``."""
    lines, first = [], 2
    for window, pages in itertools.groupby(contents, key=lambda pair: pair[1]):
        names = [name for name, _ in pages]
        if window is None:
            lines += [f"page {first + i}: {caption(name)}" for i, name in enumerate(names)]
        else:
            span = f"page {first}" if len(names) == 1 else f"pages {first}–{first + len(names) - 1}"
            lines.append(f"{span}: window {window + 1} ({', '.join(names)})")
        first += len(names)
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
             f"{number(manifest.get('language_probability'))})   no-speech p = "
             f"{number(manifest.get('no_speech_probability'))}",
             "prompt: " + " ".join(str(t.get("token")) for t in prompt_tokens(trace)),
             f"audio: {trace.audio_source or 'array'}",
             f"trace {trace.id}, exported by whisper-probe {probe.__version__} on {today()}"]
    pages = _contents_lines(contents)
    pages += [f"could not be drawn from this trace's records: {', '.join(missing)}"] if missing else []
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
