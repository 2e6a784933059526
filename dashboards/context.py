"""What every dashboard view shares: the store, the selected trace, cached reads and errors.

This module owns the one store handle (``st.cache_resource``), the trace picker (the sidebar's
follows ``?trace=`` in the URL; the compare view uses the same helper for its second trace), the
:class:`CachedTrace` views and figures read through (whole records cached with ``st.cache_data``,
keyed by store path + trace id + record), figures drawn once per trace and arguments and kept as
PNG, and the small presentational pieces several views use (prompt tokens as chips, the export
download).  Trace references from the URL or widgets only ever reach the disk through
:meth:`Store.resolve` / :meth:`Store.open`, which refuse anything outside the store.  Nothing
here imports torch.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import io
import sys
import tempfile
import zipfile

import numpy as np
import streamlit as st

from probe import contributions, figures
from probe.errors import PluginError, ProbeError, StoreError
from probe.store import Store, Trace, TraceInfo

TRACE_KEY = "trace"  # session-state key of the sidebar picker and the URL query parameter
_PENDING_KEY = "trace_to_select"  # set by select_trace(), applied before the picker is drawn
_CURRENT_KEY = "current_trace"  # (trace or None, why it could not be opened or None), set each run
_PAGES_KEY = "plugin_pages"  # title → st.Page of the plugin pages listed in this run
EXPORT_FORMATS = ("html", "zip", "png", "svg", "pdf", "json", "csv")


# --------------------------------------------------------------------------- store and traces


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store", default=None)
    parser.add_argument("--plugin", action="append", default=[])
    return parser.parse_known_args(argv)[0]


def store_argument(argv: list[str]) -> str | None:
    """The ``--store DIR`` that :func:`probe.dashboards.serve` passes after ``--``, if any."""
    return _arguments(argv).store


_PRESENTED: list[tuple] = []


def present_plugins(argv: list[str]) -> None:
    """Present the plugins ``probe dashboard -p ...`` named (``--plugin`` after ``--``), beside the
    built-ins and entry points; done once per process, not on every rerun."""
    plugins = tuple(_arguments(argv).plugin)
    if _PRESENTED != [plugins]:
        contributions.configure(plugins)
        _PRESENTED[:] = [plugins]


@st.cache_resource(show_spinner=False)
def open_store(path: str | None) -> Store:
    """The store at ``path`` (default: ``$WHISPER_PROBE_STORE`` or the user store), shared by sessions."""
    return Store(path)


def current_store() -> Store:
    return open_store(store_argument(sys.argv[1:]))


class CachedTrace(Trace):
    """A :class:`Trace` whose whole-record and audio reads are served from ``st.cache_data``.

    Lazy tensor slices (``lazy=True``) read straight from the file: they are small by design and
    the figures drawn from them are cached as images anyway.
    """

    @property
    def store_path(self) -> str:
        return str(self.path.parent)

    def tensor(self, name: str, lazy: bool = False):
        if lazy:
            return super().tensor(name, lazy=True)
        return _read_record(self.store_path, self.id, name)

    def table(self, name: str) -> list[dict]:
        return _read_record(self.store_path, self.id, name)

    def json(self, name: str):
        return _read_record(self.store_path, self.id, name)

    def audio(self, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int] | None:
        if start is not None or end is not None:
            return super().audio(start, end)  # a span: decoded alone (seeking in the FLAC), not cached
        return _read_audio(self.store_path, self.id)


@st.cache_resource(show_spinner=False, max_entries=64)
def open_trace(store_path: str, trace_id: str) -> CachedTrace:
    """The trace ``trace_id`` (manifest read once; traces never change once written)."""
    return CachedTrace(open_store(store_path).open(trace_id).path)


@st.cache_data(show_spinner=False, max_entries=256)
def _read_record(store_path: str, trace_id: str, name: str):
    return open_store(store_path).open(trace_id).record(name)


@st.cache_data(show_spinner=False, max_entries=16)
def _read_audio(store_path: str, trace_id: str):
    return open_store(store_path).open(trace_id).audio()


@st.cache_data(show_spinner=False, ttl=5)
def trace_labels(store_path: str) -> dict[str, str]:
    """Trace id → picker label, newest first; short-lived so new traces show up.

    A label leads with what tells traces apart at a glance — the name (the audio's file name
    unless given), task and language, model — then when it was recorded and the id's random
    tail, so two traces never share one (Streamlit tells options apart by label); the sidebar
    shows the picked trace's whole id and transcript under the picker (:func:`trace_details`).
    """
    labels, taken = {}, set()
    for info in _listing(open_store(store_path)):
        if info.error:
            labels[info.id] = f"⚠ {info.id} (broken)"
            continue
        # "embedded:base" → base, "openai/whisper-small" → whisper-small, a directory → its name
        model = str(info.model_id or "?").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].removeprefix("embedded:")
        label = " · ".join(part for part in (
            info.name or "(unnamed)", f"{info.task or '?'} <|{info.language or '?'}|>", model,
            info.created[:16].replace("T", " "), info.id.rsplit("-", 1)[-1]) if part)
        labels[info.id] = label if label not in taken else f"{label} ({info.id})"
        taken.add(labels[info.id])
    return labels


def _listing(store: Store) -> list[TraceInfo]:
    """``store.list()``, read from the store's summary index (:func:`probe.summary.summary_table`):
    a warm read opens no manifest, so 10 000 traces are listed in a fraction of a second instead of
    seconds; from the manifests if the summary cannot be made (a plugin's summary columns fail)."""
    from probe.summary import summary_table

    try:
        table = summary_table(store)
    except ProbeError:
        return store.list()
    fields = ("id", "name", "created", "transcript", "model", "source", "error", "language", "task")
    columns = [[value if isinstance(value, str) else None for value in table[name].tolist()] for name in fields]
    return [TraceInfo(trace_id, name, created or "", (transcript or "")[:80], model, source, error, language, task)
            for trace_id, name, created, transcript, model, source, error, language, task in zip(*columns)]


def trace_details(trace: CachedTrace) -> str:
    """What the picker's one-line label leaves out, for a caption under it: the whole id, the
    audio's source and the start of the transcript."""
    source = trace.audio_source or "array"
    text = trace.transcript[:80] + ("…" if len(trace.transcript) > 80 else "")
    return f"`{trace.id}` · audio `{source}`  \n{text}"


@st.cache_data(show_spinner=False, ttl=5)
def traces_of_audio(store_path: str, audio: dict) -> list[str]:
    """Ids of the traces recorded from the same audio (file hash and channel), newest first."""
    same = (audio.get("sha256"), audio.get("channel", "mix"))
    found = []
    for trace_id in trace_labels(store_path):
        try:
            other = open_trace(store_path, trace_id).manifest.get("audio") or {}
        except StoreError:
            continue
        if same[0] and (other.get("sha256"), other.get("channel", "mix")) == same:
            found.append(trace_id)
    return found


def pick_trace(label: str, key: str, follow_url: bool = False, default: str | None = None) \
        -> CachedTrace | None:
    """A trace picker; returns the chosen trace, or None if the store is empty.

    ``default``: the trace to start from.  ``follow_url``: start from ``?trace=`` instead and write
    the choice back to the URL, so a view can be shared as a link.  References (an id, a unique id
    prefix or a name) are resolved by the store, which refuses anything outside it.
    """
    store = current_store()
    labels = trace_labels(str(store.path))
    if not labels:
        st.info(f"No traces in {store.path} yet: record one on the **New trace** page or with "
                "`probe run AUDIO`.")
        return None
    wanted = st.session_state.pop(_PENDING_KEY, None) if follow_url else None
    if wanted is None and follow_url and key not in st.session_state:
        wanted = st.query_params.get(TRACE_KEY)
    if wanted is None and key not in st.session_state:
        wanted = default
    if wanted is not None:
        try:
            st.session_state[key] = store.resolve(wanted).id
        except StoreError as err:
            st.error(str(err))
    if st.session_state.get(key) not in labels:
        if wanted is not None:
            trace_labels.clear()  # a trace written since the list was cached
            labels = trace_labels(str(store.path))
        if st.session_state.get(key) not in labels:
            st.session_state[key] = next(iter(labels))
    trace_id = st.selectbox(label, list(labels), key=key, format_func=labels.get)
    if follow_url:
        st.query_params[TRACE_KEY] = trace_id
    return open_trace(str(store.path), trace_id)


def select_trace(trace_id: str) -> None:
    """Make ``trace_id`` the sidebar's trace from the next run on (e.g. after recording it)."""
    trace_labels.clear()
    st.session_state[_PENDING_KEY] = trace_id


def sidebar() -> None:
    """The sidebar every page shares: the store, the trace picker and the export download.
    A trace that cannot be opened is reported by the view that needs it (:func:`current_trace`)."""
    trace, problem = None, None
    with st.sidebar:
        st.caption(f"Store: `{current_store().path}`")
        try:
            trace = pick_trace("Trace", TRACE_KEY, follow_url=True)
        except StoreError as err:
            problem = str(err)
        if trace is not None:
            st.caption(trace_details(trace))
            export_controls(trace)
    st.session_state[_CURRENT_KEY] = (trace, problem)


def picked_trace() -> CachedTrace | None:
    """The trace picked in the sidebar this run, or None (the router lists pages by it)."""
    return st.session_state.get(_CURRENT_KEY, (None, None))[0]


def current_trace() -> CachedTrace:
    """The trace picked in the sidebar; stops the view with the reason if there is none."""
    trace, problem = st.session_state.get(_CURRENT_KEY, (None, None))
    if problem is not None:
        st.error(problem)
        st.stop()
    if trace is None:
        st.info("Pick a trace in the sidebar, or record one on the **New trace** page.")
        st.stop()
    return trace


# --------------------------------------------------------------------------- figures


@st.cache_data(show_spinner=False, max_entries=128)
def _figure_png(store_path: str, trace_id: str, name: str, options: tuple) -> bytes:
    trace = open_trace(store_path, trace_id)
    return figures.png_bytes(figures.figure(name)(trace, **dict(options)))


def show_figure(trace: CachedTrace, figure: str, /, **options) -> bool:
    """Draw figure ``figure`` (the core's or a plugin's, :func:`probe.figures.figure`) of ``trace``
    with ``options``; a :class:`ProbeError` (missing or corrupt record, no such figure) is shown in
    its place, and so is a plugin figure's bug, naming the plugin.  ``figure`` is positional-only,
    so any option name (``name=`` of a record) passes through.

    A figure drawn over time (it takes ``time_range``) whose span is longer than
    :data:`~probe.figures.legible.ZOOM_FROM_SECONDS` gets a time-range slider above it, so a
    long window can be zoomed until its words and tokens are readable."""
    from streamlit.errors import StreamlitDuplicateElementKey

    from probe.figures import legible

    try:
        function = figures.figure(figure)
        span = legible.time_span(function, trace, options) if "time_range" not in options else None
        if span is not None and span[1] - span[0] > legible.ZOOM_FROM_SECONDS:
            key = f"time_range:{figure}:{trace.id}:{options.get('window')}"
            try:
                chosen = st.slider("Time range (s)", float(span[0]), float(span[1]), (float(span[0]), float(span[1])),
                                   step=0.5, key=key, help="Zoom the figure to part of its time axis.")
            except StreamlitDuplicateElementKey:  # the same figure of the same trace twice on one page
                chosen = span
            if tuple(chosen) != tuple(span):
                options["time_range"] = (float(chosen[0]), float(chosen[1]))
        with st.spinner(f"Drawing {figure.replace('_', ' ')}…"):
            png = _figure_png(trace.store_path, trace.id, figure, tuple(sorted(options.items())))
    except ProbeError as err:
        st.error(str(err))
        return False
    except Exception as exc:  # a plugin's figure must not take the page down
        plugin = contributions.current().figures.get(figure)
        st.error(str(PluginError(f"plugin {plugin.plugin if plugin else '?'!r} raised drawing figure {figure!r}: "
                                 f"{type(exc).__name__}: {exc}")))
        return False
    st.image(png, width="stretch")
    return True


# --------------------------------------------------------------------------- plugin pages


def render_view(view: contributions.View) -> None:
    """Draw a plugin's page for the picked trace; its errors stay in the page, naming the plugin."""
    trace = current_trace()
    try:
        view.render(trace, st)
    except ProbeError as err:
        st.error(str(err))
    except Exception as exc:  # a plugin view's bug must not take the dashboard down
        st.error(str(PluginError(f"plugin {view.plugin!r} raised in its dashboard view {view.title!r}: "
                                 f"{type(exc).__name__}: {exc}")))


def remember_pages(pages: dict) -> None:
    st.session_state[_PAGES_KEY] = pages


def follow_page_parameter(pages: dict) -> None:
    """``?page=<url path>``: switch to that plugin page once (the parameter is dropped first)."""
    wanted = st.query_params.get("page")
    if wanted is None:
        return
    del st.query_params["page"]
    target = next((page for page in pages.values() if page.url_path == wanted), None)
    if target is not None:
        st.switch_page(target)


def window_pages(trace: CachedTrace) -> list[contributions.View]:
    """The plugin pages listed now that show one window at a time (``window_key``)."""
    listed = st.session_state.get(_PAGES_KEY, {})
    return [v for v in contributions.current().views if v.window_key and v.title in listed and v.available(trace)]


def open_page(view: contributions.View, window: int | None = None) -> None:
    """Switch to a plugin's page, at ``window`` if it shows one window at a time."""
    if window is not None and view.window_key:
        st.session_state[view.window_key] = window
    st.switch_page(st.session_state[_PAGES_KEY][view.title])


# --------------------------------------------------------------------------- shared pieces


def prompt_chips(prompt: list[dict], highlight: set[int] = frozenset()) -> str:
    """The special-token prompt as HTML chips (``<|en|>`` over its id); ids in ``highlight`` stand out."""
    chips = []
    for entry in prompt:
        colour = "#ffd54f" if entry["id"] in highlight else "#e3eaf5"
        chips.append(f'<span style="display:inline-block;margin:2px 4px 2px 0;padding:3px 8px;border-radius:6px;'
                     f'background:{colour};font-family:monospace;color:#111">{html.escape(entry["token"])}'
                     f'<br><small style="color:#555">{entry["id"]}</small></span>')
    return f'<div class="probe-prompt">{"".join(chips)}</div>'


def pick_window(trace: CachedTrace, key: str, default: int = 0, resets: tuple[str, ...] = ()) -> int:
    """The 30 s window to show (0-based; labelled from 1): a picker for long audio, starting at
    ``default``; window 0 otherwise.  ``resets``: session-state keys of widgets whose choices
    belong to one window (a token, a word): they go back to their first option whenever the
    window or the trace changes, however it changed (the picker, a link from another page)."""
    windows = trace.manifest.get("windows") or []
    if len(windows) < 2:
        window = 0
    else:
        window = st.selectbox("Window", range(len(windows)), index=min(max(default, 0), len(windows) - 1), key=key,
                              format_func=lambda i: f"window {i + 1}: {windows[i]['start']:.1f}–"
                                                    f"{windows[i]['end']:.1f} s")
    shown, marker = (trace.id, window), f"{key}.shown"
    if resets and st.session_state.get(marker) != shown:
        for dependent in resets:
            st.session_state.pop(dependent, None)
        st.session_state[marker] = shown
    return window


def audio_span(trace: CachedTrace, start: float, end: float) -> np.ndarray:
    """The samples between ``start`` and ``end`` seconds: float32 [sample] at 16 kHz."""
    rate = figures.SAMPLE_RATE
    return figures.audio_samples(trace, start, max(end, start + 1 / rate))


def export_available() -> bool:
    return importlib.util.find_spec("probe.export") is not None


@st.cache_data(show_spinner=False, max_entries=8)
def _export_bytes(store_path: str, trace_id: str, fmt: str) -> tuple[bytes, str]:
    """The export of a trace in ``fmt`` as (bytes, file name): one file as is, several zipped."""
    from probe.export import export_trace  # written by the export module's owner; loaded on demand

    trace = open_store(store_path).open(trace_id)

    def drawn_png(name: str, options: dict) -> bytes:  # the page's figures: the ones the views drew
        return _figure_png(store_path, trace_id, name, tuple(sorted(options.items())))

    with tempfile.TemporaryDirectory() as folder:
        # single files land inside, many in it; the html page reuses the dashboard's PNGs and the
        # other formats the export's own cache of figures saved in this process
        paths = export_trace(trace, fmt, out=folder, png=drawn_png if fmt == "html" else None)
        if len(paths) == 1:
            return paths[0].read_bytes(), paths[0].name
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in paths:
                bundle.write(path, path.name)
        return buffer.getvalue(), f"{trace_id}-{fmt}.zip"


def export_controls(trace: CachedTrace) -> None:
    """Export the trace for a lecture (hidden if this install has no ``probe.export``)."""
    if not export_available():
        return
    fmt = st.selectbox("Export format", EXPORT_FORMATS, key="export_format")
    ready = st.session_state.setdefault("exports_ready", set())
    if st.button("Prepare export", key="export_prepare"):
        ready.add((trace.id, fmt))
    if (trace.id, fmt) in ready:
        try:
            with st.spinner("Exporting…"):
                data, name = _export_bytes(trace.store_path, trace.id, fmt)
        except StoreError as err:
            st.error(str(err))
            return
        st.download_button(f"Download {name}", data, file_name=name, key="export_download")
