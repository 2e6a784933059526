"""The HTML export: one self-contained page (audio embedded as a data URI, figures as inline PNG,
nothing loaded from the network) assembled from the sections the core and the plugins register
(``probe_export_sections``), in their ``order``, with the figures at ``order`` 60.

A section whose records the trace lacks is left out; so is one that renders nothing.  A section
registered with ``replaces=("transcript",)`` takes the plain transcript's place under the player.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Callable, Iterable

import probe
from probe import contributions
from probe.constants import SCREEN_DPI
from probe.errors import PluginError, ProbeError
from probe.export.markup import PAGE_SCRIPT, PAGE_STYLE, audio_field, esc, image_width, number, today
from probe.export.plan import FigurePlan, label, window_flags
from probe.export.sections import TRANSCRIPT, plain_transcript
from probe.store import Trace

PAGE_DPI = SCREEN_DPI  # figures inlined in the html page: sharp on screen, small page
FIGURES_ORDER = 60


# PNG bytes of figure ``name`` drawn with ``options`` at PAGE_DPI, from elsewhere (the dashboard's
# already-drawn figures); None: drawn here
PngSource = Callable[[str, dict], bytes]


def render_html(trace: Trace, views: list[str] | None = None,
                windows: str | Iterable[int] | None = None,
                time_range: str | tuple[float, float] | None = None) -> str:
    """The self-contained page for ``trace``: nothing in it loads from the network.  ``views``,
    ``windows`` and ``time_range`` choose figures and windows as in
    :func:`probe.export.export_trace`."""
    return page(trace, FigurePlan.of(trace, views, windows, time_range))


def page(trace: Trace, plan: FigurePlan, png: PngSource | None = None) -> str:
    title = trace.name or trace.id
    drawn = list(plan.windows)  # the windows this export covers (every one, unless --windows picks)
    available = [s for s in contributions.current().sections if s.render is not None and s.available(trace)]
    transcript = "".join(_render(s, trace, drawn) or "" for s in available if "transcript" in s.replaces) \
        or plain_transcript(trace)
    parts: list[tuple[float, str]] = [(FIGURES_ORDER, "".join(figure_sections(plan, png)))]
    for section in available:
        if "transcript" in section.replaces:
            continue
        body = _render(section, trace, drawn)
        if body:
            parts.append((section.order, f'<section id="{esc(section.anchor)}"><h2>{esc(section.title)}</h2>'
                                         f'{body.replace(TRANSCRIPT, transcript)}</section>'))
    parts.sort(key=lambda part: part[0])
    body = _without_dangling_links("".join(html for _, html in parts))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)} · whisper-probe</title><style>{PAGE_STYLE}</style></head>"
            f"<body><main><header><h1>{esc(title)}</h1>"
            f"<p class=\"meta\">{esc(_meta_line(trace))}</p></header>"
            + body
            + f"<footer>Exported by whisper-probe {esc(probe.__version__)} on "
              f"{esc(today())} from trace {esc(trace.id)}.</footer>"
            f"</main><script>{PAGE_SCRIPT}</script></body></html>\n")


def _without_dangling_links(html: str) -> str:
    """Links to anchors the page does not have (a window whose figures it does not draw) as text."""
    anchors = set(re.findall(r'\bid="([^"]+)"', html))
    return re.sub(r'<a href="#([^"]+)">(.*?)</a>',
                  lambda m: m.group(0) if m.group(1) in anchors else m.group(2), html)


def _render(section: contributions.ExportSection, trace: Trace, drawn: list[int]) -> str | None:
    """A section's HTML; a plugin's bug is a one-line error naming it (a user error passes)."""
    try:
        return section.render(trace, drawn)
    except ProbeError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {section.plugin!r} raised in its export section {section.title!r}: "
                          f"{type(exc).__name__}: {exc} (export without it: -p no:{section.plugin})") from exc


def _meta_line(trace: Trace) -> str:
    duration = audio_field(trace, "duration")
    parts = [f"model {trace.model_id or 'unknown'}",
             f"{duration:.1f} s of audio" if isinstance(duration, (int, float)) else None,
             f"source {Path(trace.audio_source).name}" if trace.audio_source else None,
             f"traced {trace.created[:19].replace('T', ' ')}" if trace.created else None]
    return " · ".join(part for part in parts if part)


def figure_sections(plan: FigurePlan, source: PngSource | None = None) -> list[str]:
    """"Inside the model" with the figures drawn once, then one section per chosen window with
    that window's figures (long traces only); the note of what a default choice left out.
    ``source`` gives a figure's PNG when someone has drawn it already (the dashboard)."""
    from probe.export.render import figure_bytes

    def image(name: str, window: int | None) -> bytes:
        if source is not None:
            return source(name, plan.options(name, window))
        return figure_bytes(plan, name, window, "png", PAGE_DPI)

    figures: dict[int | None, list[str]] = {None: []}
    figures.update((window, []) for window in plan.windows if plan.per_window)
    skipped: list[tuple[str, int | None, str]] = []
    for name, window in plan.pairs:
        png = plan.attempt(name, window, lambda: image(name, window), skipped)
        if png is None:
            continue
        text = label(name, window)
        anchor = name if window is None else f"{name}-window-{window + 1}"
        figures[window].append(f'<figure id="figure-{esc(anchor)}"><div class="scroll">'
                               f'<img alt="{esc(text)}" style="{image_width(png)}" '
                               f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                               f'</div><figcaption>{esc(text)}</figcaption></figure>')
    for name, window, reason in skipped:
        figures[window].append(f'<p class="note">Not drawn: {esc(label(name, None))} ({esc(reason)})</p>')
    note = f'<p class="note">{esc(plan.note())}</p>' if plan.note() else ""
    sections = [f'<section id="figures"><h2>Inside the model</h2>{note}{"".join(figures[None])}</section>'] \
        if figures[None] or note else []
    windows = plan.trace.manifest.get("windows") or []
    for window, parts in figures.items():
        if window is not None and parts:
            sections.append(f'<section id="window-{window + 1}"><h2>{esc(window_heading(windows[window], len(windows)))}'
                            f'</h2>{"".join(parts)}</section>')
    return sections


def window_heading(window: dict, total: int) -> str:
    flags = window_flags(window)
    return (f"Window {window['index'] + 1} of {total}: {window['start']:.2f}–{window['end']:.2f} s, "
            f"<|{window['language']}|>, no-speech p = {number(window.get('no_speech_probability'))}"
            + (f" ({', '.join(flags)})" if flags else ""))
