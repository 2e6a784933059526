"""whisper-probe in Jupyter and Colab: a trace that shows itself, its figures on demand, and the
dashboard started beside the notebook.

- :func:`trace_html` is ``Trace._repr_html_``: a summary (model, language and its probability,
  task, duration, windows, no-speech probability), the decoder's prompt as chips, the player and
  the transcript (coloured by confidence when a plugin registers such a transcript for the export)
  and a few figures as inline PNG.  It is built from the HTML export's parts
  (:mod:`probe.export.markup`, :mod:`probe.export.sections`) and the registered figures
  (:mod:`probe.contributions`), everything escaped, and it stays quick: at most
  :data:`REPR_FIGURES` small figures, and a long clip's audio cut to its first
  :data:`AUDIO_PREVIEW_SECONDS` seconds.
- :func:`figure` / :func:`show` are ``Trace.figure`` / ``Trace.show``: a registered figure (the
  same functions the dashboard and the export draw) as a matplotlib Figure, or displayed.
- :func:`dashboard` is ``probe.dashboard``: Streamlit in a background process (started by
  :func:`probe.dashboards.launch`, as ``probe dashboard`` starts it), returned once it answers, as
  a :class:`Dashboard` whose ``str`` is its URL and whose HTML is an ``<iframe>`` of it; it stops
  with ``.stop()`` or when Python exits.

Nothing here imports torch.
"""

from __future__ import annotations

import atexit
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.errors import OptionError, ProbeError
from probe.export.markup import audio_field, esc, number, prompt_code

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from probe.store import Trace

# The figures a trace's HTML shows, the first REPR_FIGURES of these that it has records for: where
# each token listened, then the sound (the cheapest to draw; token confidence is already the
# transcript's colour).  Each costs about a second on a laptop CPU, so a repr shows two.
REPR_PREFERENCE = ("cross_attention", "waveform", "log_mel", "windows")
REPR_FIGURES = 2
REPR_DPI = 72  # small inline PNGs: a repr is redrawn whenever the cell is shown
MAX_INLINE_AUDIO_BYTES = 2_000_000  # about 2 minutes of FLAC speech; longer clips get a preview
AUDIO_PREVIEW_SECONDS = 30.0

_STYLE = """
.probe-trace{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
.probe-trace table{border-collapse:collapse;margin:4px 0 8px}
.probe-trace th,.probe-trace td{text-align:left;padding:2px 14px 2px 0;border-bottom:1px solid #eee}
.probe-trace code.tok{background:#eef;border-radius:4px;padding:1px 6px;margin-right:4px}
.probe-trace .transcript{font-size:16px;line-height:1.8;margin:6px 0}
.probe-trace .note,.probe-trace .hint{color:#8a6d00;font-size:12px}
.probe-trace figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}
.probe-trace figcaption{color:#444;font-size:12px;max-width:520px}
.probe-trace img{max-width:100%;height:auto}
"""


# --- a trace in a notebook -----------------------------------------------------------------------

def trace_html(trace: Trace) -> str:
    """The HTML a notebook shows for ``trace`` (``Trace._repr_html_``); every text from the trace
    is escaped, and nothing loads from the network."""
    from probe import contributions

    key = (str(trace.path), _mtime(trace), id(contributions.current()))  # a published trace does not change
    if key not in _HTML:
        if len(_HTML) >= 8:
            _HTML.pop(next(iter(_HTML)))
        _HTML[key] = _trace_html(trace)
    return _HTML[key]


_HTML: dict[tuple, str] = {}


def _mtime(trace: Trace) -> int:
    try:
        return (trace.path / "manifest.json").stat().st_mtime_ns
    except OSError:
        return 0


def _trace_html(trace: Trace) -> str:
    title = trace.name or trace.id
    return (f'<div class="probe-trace"><style>{_STYLE}</style>'
            f'<strong>{esc(title)}</strong> <span class="hint">trace {esc(trace.id)}</span>'
            f'{summary_table(trace)}{prompt_chips(trace)}{audio_tag(trace)}{transcript_html(trace)}'
            f'{figures_html(trace)}</div>')


def summary_table(trace: Trace) -> str:
    manifest = trace.manifest
    windows = manifest.get("windows") or []
    duration = audio_field(trace, "duration")
    task = (manifest.get("decode") or {}).get("task") or "transcribe"
    skipped = sum(1 for window in windows if isinstance(window, dict) and window.get("skipped"))
    rows = [("model", trace.model_id or "unknown"),
            ("language", f"{trace.language or '?'} (p = {number(manifest.get('language_probability'))})"),
            ("task", task),
            ("duration", f"{duration:.2f} s" if isinstance(duration, (int, float)) else "?"),
            ("windows", f"{max(1, len(windows))}" + (f" ({skipped} skipped as no speech)" if skipped else "")),
            ("no-speech probability", number(manifest.get("no_speech_probability"))),
            ("records", str(len(trace.records)))]
    body = "".join(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in rows)
    return f"<table>{body}</table>"


def prompt_chips(trace: Trace) -> str:
    chips = prompt_code(trace)
    return f'<p>prompt: {chips or "(none recorded)"}</p>'


def audio_tag(trace: Trace) -> str:
    """An ``<audio>`` player with the clip as a data URI; a long clip's first
    :data:`AUDIO_PREVIEW_SECONDS` only, so the notebook file stays small."""
    data = trace.audio_bytes()
    if data is None:
        return '<p class="note">This trace kept no audio.</p>'
    note = ""
    if len(data) > MAX_INLINE_AUDIO_BYTES:
        import soundfile

        samples, rate = trace.audio(0.0, AUDIO_PREVIEW_SECONDS)
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, rate, format="FLAC")
        data = buffer.getvalue()
        note = (f'<p class="note">The first {AUDIO_PREVIEW_SECONDS:.0f} s of the audio; all of it is '
                "<code>trace.audio()</code>, or in the dashboard (<code>probe.dashboard()</code>).</p>")
    return ('<audio controls preload="none" '
            f'src="data:audio/flac;base64,{base64.b64encode(data).decode("ascii")}"></audio>{note}')


def transcript_html(trace: Trace) -> str:
    """The transcript a plugin's export section draws in place of the plain one (the built-in
    token_probs colours it by confidence), else the plain transcript."""
    from probe import contributions
    from probe.export.sections import plain_transcript

    for section in contributions.current().sections:
        if "transcript" in section.replaces and section.render is not None and section.available(trace):
            try:
                return section.render(trace, [0])
            except ProbeError:
                break
    return plain_transcript(trace)


def figures_html(trace: Trace) -> str:
    """The first :data:`REPR_FIGURES` figures of :data:`REPR_PREFERENCE` the trace can be drawn
    with, as inline PNG with their captions.  One the trace cannot draw (no audio kept, a damaged
    record) gives way to the next: ``trace.show(name)`` says why; a plugin's bug is a note."""
    from probe import contributions

    found = contributions.current().figures
    candidates = [found[name] for name in REPR_PREFERENCE if name in found and found[name].available(trace)]
    parts, shown = [], []
    for entry in candidates:
        if len(shown) == REPR_FIGURES:
            break
        try:
            png = _png(entry.function(trace))
        except ProbeError:
            continue
        except Exception as exc:  # a plugin's bug must not hide the rest of the trace
            parts.append(f'<p class="note">Not drawn: plugin {esc(entry.plugin)} raised drawing {esc(entry.name)}: '
                         f'{esc(type(exc).__name__)}: {esc(exc)}</p>')
            continue
        shown.append(entry)
        parts.append(f'<figure><img alt="{esc(entry.name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                     f'<figcaption>{esc(entry.caption or entry.name)} '
                     f'(<code>trace.show("{esc(entry.name)}")</code>)</figcaption></figure>')
    others = [name for name, entry in found.items()
              if entry.by_default and entry.available(trace) and entry not in shown]
    more = (f'<p class="hint">More figures: {esc(", ".join(others))} — <code>trace.show(name)</code></p>'
            if others else "")
    return "<div>" + "".join(parts) + "</div>" + more


def _png(fig: Figure, dpi: int = REPR_DPI) -> bytes:
    from probe.figures import png_bytes

    return png_bytes(fig, dpi=dpi)


# --- figures on demand ---------------------------------------------------------------------------

def figure(trace: Trace, name: str, **options: Any) -> Figure:
    """Figure ``name`` of ``trace`` as a matplotlib Figure, drawn by the function the dashboard and
    the export use; an unknown name or option is a one-line error listing the valid ones, and a
    trace without the figure's records raises the figure's :class:`~probe.errors.StoreError`."""
    from probe import contributions

    entry = contributions.current().figure(name)
    parameters = entry.parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    unknown = [option for option in options if option not in parameters and not takes_any]
    if unknown:
        raise OptionError(f"figure {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(parameters) or 'none'}")
    missing = [key for key, p in parameters.items()
               if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and key not in options]
    if missing:
        raise OptionError(f"figure {name!r} needs {', '.join(f'{key}=' for key in missing)}; "
                          f"e.g. trace.figure({name!r}, {missing[0]}=...)")
    return entry.function(trace, **options)


def show(trace: Trace, name: str, **options: Any) -> Figure | None:
    """Display figure ``name`` in IPython (as a PNG, whatever matplotlib backend is active) and
    return ``None``; outside IPython, return the Figure."""
    fig = figure(trace, name, **options)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return fig
    if get_ipython() is None:
        return fig
    display(Image(data=_png(fig, dpi=100), format="png"))
    return None


# --- the dashboard from a notebook ---------------------------------------------------------------

FIRST_PORT = 8501
PORTS_TRIED = 100
START_TIMEOUT_S = 90.0


class Dashboard:
    """A dashboard served in the background.  ``str(dashboard)`` and ``.url`` are its URL; in a
    notebook it shows itself as an ``<iframe>``; ``.stop()`` ends it (so does Python's exit)."""

    def __init__(self, process: subprocess.Popen, url: str, store: Path, log: Path, height: int = 720):
        self.process, self.url, self.store, self.log, self.height = process, url, store, log, height
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the Streamlit process (and wait for it); stopping twice does nothing."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"<Dashboard {self.url} of {self.store} ({'running' if self.running else 'stopped'})>"

    def _repr_html_(self) -> str:
        if not self.running:
            return f"<p>The dashboard at {esc(self.url)} is stopped; start it again with <code>probe.dashboard()</code>.</p>"
        return (f'<iframe src="{esc(self.url)}" width="100%" height="{int(self.height)}" '
                'style="border:1px solid #ddd;border-radius:6px"></iframe>'
                f'<p><a href="{esc(self.url)}" target="_blank">{esc(self.url)}</a> · '
                "<code>.stop()</code> ends it</p>")


def dashboard(store: Any = None, port: int | None = None, host: str = "127.0.0.1", plugins: list[str] = (),
              timeout: float = START_TIMEOUT_S, height: int = 720) -> Dashboard:
    """Serve the dashboard for ``store`` (a :class:`~probe.store.Store` or folder; default: the user
    store) in the background and return it once it answers.  ``port=None``: the first free port
    from 8501; a given port that is in use is a one-line error."""
    from probe.dashboards import launch, port_free

    if store is not None and hasattr(store, "path") and not isinstance(store, (str, os.PathLike)):
        store = store.path
    if port is None:
        port = next((p for p in range(FIRST_PORT, FIRST_PORT + PORTS_TRIED) if port_free(host, p)), None)
        if port is None:
            raise ProbeError(f"ports {FIRST_PORT}-{FIRST_PORT + PORTS_TRIED - 1} on {host} are all in use; "
                             "stop some dashboards or pass port=")
    fd, name = tempfile.mkstemp(prefix="whisper-probe-dashboard-", suffix=".log")  # Streamlit's output
    log = Path(name)
    try:
        with os.fdopen(fd, "wb") as output:
            process, store_path = launch(store, host, port, list(plugins), stdout=output, stderr=subprocess.STDOUT)
    except BaseException:
        log.unlink(missing_ok=True)
        raise
    local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    board = Dashboard(process, _colab_url(port) or local, store_path, log, height)
    deadline = time.monotonic() + timeout
    while not _answers(local):
        if process.poll() is not None or time.monotonic() > deadline:
            last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            why = f"it said: {last[0].strip()}" if last else "it said nothing"
            board.stop()
            raise ProbeError(f"the dashboard did not start on port {port} "
                             f"({'it exited' if process.poll() is not None else f'no answer in {timeout:.0f} s'}; "
                             f"{why})")
        time.sleep(0.25)
    return board


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _colab_url(port: int) -> str | None:
    """In Colab the browser cannot reach the kernel's localhost: Colab's proxy URL for ``port``."""
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab.output import eval_js

        return str(eval_js(f"google.colab.kernel.proxyPort({int(port)})")).rstrip("/")
    except Exception:  # not a Colab front end after all (the module imported elsewhere): use localhost
        return None
