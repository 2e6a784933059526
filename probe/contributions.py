"""What plugins show: their figures, dashboard pages, export sections, lesson steps and record
descriptions, collected once from the presentation hooks (:mod:`probe.hookspecs`).

The dashboard, ``probe export`` and :mod:`probe.figures` read a trace's pictures from here and
know no plugin by name: each contribution names the records it needs (``requires``, names or glob
patterns) and is offered only for traces that hold them, so a trace made with ``-p no:NAME``
shows nothing of that plugin and nothing broken.

The core's own pictures (the audio, the windows, the export's first sections, the lesson's first
steps) are contributed the same way, by the plugin ``core`` (:mod:`probe.present`), registered
first.  Presentation needs no model, so built-in plugins are loaded here through their torch-free
``present`` module (:func:`probe.plugin_manager.get_plugin_manager` with ``presentation=True``);
third-party plugins are loaded as they are.  :func:`configure` sets which plugins the process
presents (``probe dashboard -p ...``, ``probe export -p ...``); :func:`current` is that collection,
made once.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from probe.errors import PluginError


def _names(requires: Iterable[str] | str) -> tuple[str, ...]:
    return (requires,) if isinstance(requires, str) else tuple(requires or ())


def holds(trace, requires: Iterable[str]) -> bool:
    """Whether ``trace`` has a record for every name or glob pattern in ``requires``."""
    records = trace.records
    return all((name in records) if not any(c in name for c in "*?[") else bool(fnmatch.filter(records, name))
               for name in requires)


def slug(title: str) -> str:
    """``"Token probabilities"`` → ``"token-probabilities"``: a page's URL path, a section's id."""
    return "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split()) or "view"


class _Requires:
    """What every contribution shares: it is offered for traces holding its ``requires``."""

    requires: tuple[str, ...]

    def available(self, trace) -> bool:
        return holds(trace, self.requires)


@dataclass(frozen=True)
class Figure(_Requires):
    """A named figure function ``function(trace, **choices) -> matplotlib Figure``."""

    name: str
    function: Callable
    plugin: str
    caption: str = ""
    requires: tuple[str, ...] = ()

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(list(inspect.signature(self.function).parameters.items())[1:])

    @property
    def per_window(self) -> bool:
        """It shows one 30 s window (a ``window`` parameter): exports draw it per window."""
        return "window" in self.parameters

    @property
    def per_attempt(self) -> bool:
        """It shows one rejected fallback attempt (an ``attempt`` parameter)."""
        return "attempt" in self.parameters

    @property
    def by_default(self) -> bool:
        """It can be drawn from the trace alone (every other parameter has a default)."""
        return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in self.parameters.values())



@dataclass(frozen=True)
class View(_Requires):
    """A dashboard page: ``render(trace, st)``."""

    title: str
    render: Callable
    plugin: str
    requires: tuple[str, ...] = ()
    icon: str = ":material/extension:"
    section: str = "Plugins"
    window_key: str | None = None  # the session-state key of its window picker, if it has one

    @property
    def url_path(self) -> str:
        return slug(self.title)



@dataclass(frozen=True)
class ExportSection(_Requires):
    """A section of the HTML export (``render(trace, windows) -> html``) and/or tables of the
    json/csv exports (``tables(trace) -> {name: rows}``)."""

    title: str
    render: Callable | None
    plugin: str
    requires: tuple[str, ...] = ()
    order: float = 50
    tables: Callable | None = None
    replaces: tuple[str, ...] = ()
    id: str = ""  # the section's HTML id (default: from the title)

    @property
    def anchor(self) -> str:
        return self.id or slug(self.title)



@dataclass(frozen=True)
class LessonStep(_Requires):
    """A step of the Lesson: ``explain(trace, st, window)`` writes text, returns a picture drawer."""

    title: str
    explain: Callable
    plugin: str
    requires: tuple[str, ...] = ()
    order: float = 50



@dataclass
class Contributions:
    """Everything the presented plugins contribute, in plugin registration order."""

    figures: dict[str, Figure] = field(default_factory=dict)
    views: list[View] = field(default_factory=list)
    sections: list[ExportSection] = field(default_factory=list)
    lesson_steps: list[LessonStep] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)  # record name or glob → description
    plugins: list[str] = field(default_factory=list)

    def figure(self, name: str) -> Figure:
        try:
            return self.figures[name]
        except KeyError:
            raise PluginError(f"no figure named {name!r}; figures: {', '.join(self.figures)}") from None

    def available_figures(self, trace) -> list[Figure]:
        return [f for f in self.figures.values() if f.available(trace)]

    def describe(self, name: str, entry: dict | None = None) -> dict:
        """What is known of record ``name``: the plugin's description, then the record's own meta
        (``axes`` → ``dims``)."""
        described: dict[str, Any] = {}
        for pattern, info in self.records.items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                described = {**info, **described} if pattern != name else {**described, **info}
        meta = (entry or {}).get("meta") or {}
        for key in ("dims", "units", "description"):
            if meta.get(key):
                described[key] = meta[key]
        if meta.get("axes"):
            described["dims"] = list(meta["axes"])
        return described


_FUNCTION_FIELD = {"figures": "function", "views": "render", "sections": "render", "lesson_steps": "explain"}


def collect(pm) -> Contributions:
    """Call the presentation hooks of ``pm``'s plugins; two plugins registering one figure name,
    or a malformed registration, is a one-line :class:`~probe.errors.PluginError`."""
    from probe.plugin_manager import ask, current_plugin

    order = [name for name, _ in pm.list_name_plugin()]
    found = Contributions(plugins=order)
    made: list[tuple[str, str, Any]] = []  # (plugin, kind, item)

    def registrar(kind: str, make: Callable) -> Callable:
        def register(*args, **kwargs):
            plugin = current_plugin() or "unknown"
            try:
                item = make(plugin, *args, **kwargs)
            except TypeError as exc:
                raise PluginError(f"plugin {plugin!r} called register() of {kind} wrongly: {exc}; "
                                  "see probe.hookspecs") from None
            function = getattr(item, _FUNCTION_FIELD[kind])
            if not callable(function) and not (kind == "sections" and function is None):  # tables only
                raise PluginError(f"plugin {plugin!r} registered a {kind[:-1]} that is not a function")
            made.append((plugin, kind, item))
        return register

    def figure(plugin, name, function, *, caption="", requires=()):
        return Figure(str(name), function, plugin, str(caption), _names(requires))

    def view(plugin, title, render, *, requires=(), icon=":material/extension:", section="Plugins",
             window_key=None):
        return View(str(title), render, plugin, _names(requires), str(icon), str(section), window_key)

    def section(plugin, title, render=None, *, requires=(), order=50, tables=None, replaces=(), id=""):
        if render is None and tables is None:
            raise TypeError("give render, tables or both")
        return ExportSection(str(title), render, plugin, _names(requires), float(order), tables, _names(replaces),
                             str(id))

    def step(plugin, title, explain, *, requires=(), order=50):
        return LessonStep(str(title), explain, plugin, _names(requires), float(order))

    pm.hook.probe_figures(register=registrar("figures", figure))
    pm.hook.probe_dashboard_views(register=registrar("views", view))
    pm.hook.probe_export_sections(register=registrar("sections", section))
    pm.hook.probe_lesson_steps(register=registrar("lesson_steps", step))
    rank = {name: index for index, name in enumerate(order)}
    made.sort(key=lambda item: rank.get(item[0], len(rank)))  # pluggy calls the last registered first
    for plugin, kind, item in made:
        if kind == "figures":
            if item.name in found.figures:
                raise PluginError(f"plugins {found.figures[item.name].plugin!r} and {plugin!r} both register a "
                                  f"figure named {item.name!r}; disable one with -p no:NAME")
            found.figures[item.name] = item
        else:
            getattr(found, kind).append(item)
    for plugin, described in sorted(ask(pm, "probe_describe_records", expect=lambda r: isinstance(r, dict)).items(),
                                    key=lambda item: rank.get(item[0], len(rank))):
        for name, info in described.items():
            found.records[str(name)] = {**dict(info), "plugin": plugin}
    found.sections.sort(key=lambda s: s.order)
    found.lesson_steps.sort(key=lambda s: s.order)
    return found


PLUGINS_ENV = "WHISPER_PROBE_PLUGINS"  # more plugins to present: references separated by os.pathsep
_LOCK = threading.Lock()
_CONFIG: dict[str, tuple] = {"plugins": (), "disabled": ()}
_CURRENT: dict[tuple, Contributions] = {}


def configure(plugins: Iterable = (), disabled: Iterable[str] = ()) -> None:
    """Present these plugins (``-p`` references; ``no:NAME`` disables) from now on."""
    with _LOCK:
        _CONFIG.update(plugins=tuple(plugins), disabled=tuple(disabled))
        _CURRENT.clear()


def current() -> Contributions:
    """The contributions of the configured plugins (built-ins and entry points by default, plus the
    references in ``$WHISPER_PROBE_PLUGINS``, e.g. ``my_plugin.py:other.module``), collected again
    when that, ``sys.path`` or the autoload switch changes (an entry point may appear)."""
    from probe.plugin_manager import DISABLE_AUTOLOAD_ENV

    extra = tuple(ref for ref in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if ref.strip())
    key = (_CONFIG["plugins"], _CONFIG["disabled"], extra, tuple(sys.path), os.environ.get(DISABLE_AUTOLOAD_ENV))
    found = _CURRENT.get(key)
    if found is not None:
        return found
    with _LOCK:
        if key not in _CURRENT:
            from probe.plugin_manager import get_plugin_manager

            pm = get_plugin_manager(extra + _CONFIG["plugins"], _CONFIG["disabled"], presentation=True)
            _CURRENT.clear()
            _CURRENT[key] = collect(pm)
        return _CURRENT[key]
