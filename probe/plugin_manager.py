"""Finding, loading and calling plugins.

Built-in features are ordinary plugins listed in :data:`DEFAULT_PLUGINS` (modules of
:mod:`probe.plugins`), each removable with ``-p no:NAME``.  Third-party plugins come from the
entry-point group ``whisper_probe`` (skipped when :data:`DISABLE_AUTOLOAD_ENV` is set), from
``-p MODULE`` or ``-p path/to/file.py``, or as objects passed from Python.

Every call goes through pluggy (``pm.hook.<name>(...)``), so hook wrappers (``@hookimpl(wrapper=True)``),
``tryfirst``/``trylast`` and pluggy's call monitoring work as they do in pytest.  Naming the plugin
that raised and timing each plugin are done once, here: when a plugin is registered each of its
hook implementations is wrapped (:func:`_named`) so that

* an exception becomes a one-line :class:`~probe.errors.PluginError` naming the plugin and hook
  (user errors, :class:`~probe.errors.ProbeError`, pass through);
* its time is added to the per-plugin seconds of the run being traced (:func:`plugin_timing`);
* with ``WHISPER_PROBE_TRACE_PLUGINS=1`` every call is printed to stderr with its plugin and
  duration (datasette's ``DATASETTE_TRACE_PLUGINS`` habit).

:func:`ask` calls a hook whose answer differs per plugin (the hook points each wants) and returns
each plugin's own result by name; :func:`plugin_caller` is the hook restricted to some plugins
(``probe_capture`` goes only to the plugins that asked for the point that fired).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, Iterator

import pluggy

from probe import hookspecs
from probe.errors import PluginError, ProbeError

DEFAULT_PLUGINS = ("activations", "attention", "cross_attention", "token_probs", "logit_lens")
ENTRY_POINT_GROUP = "whisper_probe"
DISABLE_AUTOLOAD_ENV = "WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "WHISPER_PROBE_TRACE_PLUGINS"

# per-plugin seconds of the run whose hooks are being called (plugin_timing), if any
_SECONDS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("probe_plugin_seconds", default=None)
# (hook, plugin, result) of every implementation called while ask() collects
_ANSWERS: contextvars.ContextVar[list | None] = contextvars.ContextVar("probe_plugin_answers", default=None)
# the plugin whose hook implementation is running (for callbacks such as probe_dashboard_views' register)
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("probe_current_plugin", default=None)


def plugin_version(plugin) -> str:
    """A plugin's ``__version__`` (or ``version``), else its distribution's, else ``"unknown"``."""
    for attr in ("__version__", "version"):
        value = getattr(plugin, attr, None)
        if isinstance(value, str):
            return value
    return "unknown"


def _load_builtin(name: str, presentation: bool = False):
    """Built-in ``name``: its package's ``capture.Plugin`` (every hook), or for presentation only its
    torch-free ``present.Presentation`` (figures, pages, export sections, descriptions)."""
    if presentation:
        return importlib.import_module(f"probe.plugins.{name}.present").Presentation()
    # Built-ins keep per-run state, so each manager gets a fresh instance.
    return importlib.import_module(f"probe.plugins.{name}.capture").Plugin()


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"plugin file {path} does not exist; pass an existing .py file or a module name to -p")
    name = f"whisper_probe_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PluginError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def load_plugin(ref, presentation: bool = False):
    """A plugin object from a module name, a ``.py`` path, or an object (returned as is)."""
    if not isinstance(ref, (str, Path)):
        return ref
    text = str(ref)
    if text.endswith(".py") or os.sep in text or Path(text).suffix == ".py":
        return _load_file(Path(text).expanduser().resolve())
    if text in DEFAULT_PLUGINS:
        return _load_builtin(text, presentation)
    try:
        return importlib.import_module(text)
    except ModuleNotFoundError as exc:
        raise PluginError(
            f"unknown plugin {text!r}: no such module ({exc.name}); built-ins are {', '.join(DEFAULT_PLUGINS)},"
            " or pass a .py file path"
        ) from exc
    except Exception as exc:
        raise PluginError(f"plugin {text!r} failed to import: {type(exc).__name__}: {exc}") from exc


def plugin_name(plugin) -> str:
    name = getattr(plugin, "name", None) or getattr(plugin, "__name__", None) or type(plugin).__name__
    return str(name).rsplit(".", 1)[-1].removeprefix("whisper_probe_plugin_")


def get_plugin_manager(plugins=(), disabled=(), autoload: bool | None = None,
                       presentation: bool = False) -> pluggy.PluginManager:
    """A plugin manager with the built-ins (minus ``disabled``), entry points, and ``plugins``.

    :param presentation: for showing traces, not running them (the dashboard, exports, figures):
        the core's own contributions (:mod:`probe.present`, plugin ``core``) come first and the
        built-ins are loaded without torch.

    :param plugins: extra plugins: module names, ``.py`` paths or objects.  ``"no:NAME"`` entries
        disable a plugin like ``disabled`` does.
    :param autoload: load the ``whisper_probe`` entry points; default: unless the environment
        variable ``WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """
    extra = [p for p in plugins if not (isinstance(p, str) and p.startswith("no:"))]
    disabled = set(disabled) | {p[3:] for p in plugins if isinstance(p, str) and p.startswith("no:")}
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    loaded = [(plugin, plugin_name(plugin)) for plugin in (load_plugin(ref, presentation) for ref in extra)]
    unknown = (disabled - set(DEFAULT_PLUGINS) - {name for _, name in loaded}) if disabled else set()
    unknown = unknown - _entry_point_names() if unknown else unknown
    if unknown:
        raise PluginError(f"cannot disable unknown plugin(s) {', '.join(sorted(unknown))};"
                          f" `probe plugins` lists the names")
    if presentation:
        from probe import present

        _register(pm, present, "core")
    for name in DEFAULT_PLUGINS:
        if name not in disabled:
            _register(pm, _load_builtin(name, presentation), name)
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in disabled:
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:
                raise PluginError(f"plugin {entry_point.name!r} (entry point) failed to load: {exc};"
                                  f" uninstall it or set {DISABLE_AUTOLOAD_ENV}=1") from exc
            _register(pm, plugin, entry_point.name)
    for plugin, name in loaded:
        if name not in disabled:  # -p my_plugin.py -p no:my_plugin: loaded, then left out
            _register(pm, plugin, name)
    return pm


def _entry_point_names() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _register(pm: pluggy.PluginManager, plugin, name: str) -> None:
    if pm.has_plugin(name) or pm.is_registered(plugin):
        return
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        hooks = [hook for hook in dir(hookspecs) if hook.startswith("probe_")]
        typos = [attr for attr in dir(plugin) if attr.startswith("probe_") and attr not in hooks]
        close = {typo: difflib.get_close_matches(typo, hooks, n=1) for typo in typos}
        hint = "; ".join(f"did you mean {match[0]} for {typo}?" for typo, match in close.items() if match)
        raise PluginError(f"plugin {name!r} is invalid: {exc}; {hint + ' ' if hint else ''}"
                          "hook names are listed in probe.hookspecs") from exc
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                impl.function = _named(name, caller.name, impl)


def _named(plugin: str, hook: str, impl) -> Callable:
    """``impl.function``, calling it the same way, with the plugin named in its errors, its time
    counted for the current run, and the call printed when :data:`TRACE_ENV` is set."""
    function = impl.function
    where = impl.argnames.index("point") if "point" in impl.argnames else None

    def failure(exc: Exception, args) -> PluginError:
        at = f" at {args[where].name}" if where is not None and where < len(args) else ""
        return PluginError(f"plugin {plugin!r} raised in {hook}{at}: {type(exc).__name__}: {exc}"
                           f" (run with --debug for the traceback, or disable it with -p no:{plugin})")

    def finish(started: float) -> None:
        elapsed = time.perf_counter() - started
        seconds = _SECONDS.get()
        if seconds is not None:
            seconds[plugin] = seconds.get(plugin, 0.0) + elapsed
        if os.environ.get(TRACE_ENV):
            print(f"probe: plugin {plugin} {hook} {elapsed * 1000:.2f} ms", file=sys.stderr)

    @contextlib.contextmanager
    def calling(args):
        started, token = time.perf_counter(), _CURRENT.set(plugin)
        try:
            yield
        except (ProbeError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _passes_through(exc):
                raise
            raise failure(exc, args) from exc
        finally:
            _CURRENT.reset(token)
            finish(started)

    if impl.wrapper or impl.hookwrapper:  # a hook wrapper: name and time it around its yield
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with calling(args):
                return (yield from function(*args, **kwargs))
        return wrapper

    @functools.wraps(function)
    def named(*args, **kwargs):
        with calling(args):
            result = function(*args, **kwargs)
        answers = _ANSWERS.get()
        if answers is not None:
            answers.append((hook, plugin, result))
        return result
    return named


def _passes_through(exc: BaseException) -> bool:
    # running out of device memory is the machine's limit, not the plugin's bug: the memory-budget
    # message says what to do; a PluginError is already named (a plugin calling another hook)
    return isinstance(exc, PluginError) or type(exc).__name__ == "OutOfMemoryError"


@contextlib.contextmanager
def plugin_timing(seconds: dict) -> Iterator[dict]:
    """Add each plugin's time in the hooks called inside the block to ``seconds`` (name → s)."""
    token = _SECONDS.set(seconds)
    try:
        yield seconds
    finally:
        _SECONDS.reset(token)


def current_plugin() -> str | None:
    """The plugin whose hook implementation is running now (None outside one)."""
    return _CURRENT.get()


def ask(pm: pluggy.PluginManager, hook_name: str, expect=None, seconds: dict | None = None, **kwargs) -> dict:
    """``pm.hook.<hook_name>(**kwargs)``; each plugin's own result by plugin name (None dropped).

    A result that fails ``expect(result)`` is a one-line :class:`PluginError` naming the plugin.
    ``seconds``, when given, accumulates each plugin's time.
    """
    answers: list = []
    token = _ANSWERS.set(answers)
    try:
        with plugin_timing(seconds) if seconds is not None else contextlib.nullcontext():
            getattr(pm.hook, hook_name)(**kwargs)
    finally:
        _ANSWERS.reset(token)
    results = {}
    for hook, name, result in answers:
        if hook != hook_name or result is None:
            continue
        if expect is not None and not expect(result):
            raise PluginError(f"plugin {name!r} returned {type(result).__name__} from {hook_name},"
                              " which is not what the hook expects; see probe.hookspecs")
        results[name] = result
    return results


def plugin_caller(pm: pluggy.PluginManager, hook_name: str, plugins: Iterable[str]):
    """``pm.hook.<hook_name>`` restricted to the named plugins (pluggy's subset hook caller)."""
    keep = set(plugins)
    others = [plugin for name, plugin in pm.list_name_plugin() if name not in keep]
    return pm.subset_hook_caller(hook_name, remove_plugins=others)


def implementers(pm: pluggy.PluginManager, hook_name: str) -> list[str]:
    """Names of the plugins implementing ``hook_name``, in pluggy's call order."""
    return [impl.plugin_name for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls())]


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """Every registered plugin with its version and the hooks it implements."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(impl_name for impl_name in dir(plugin)
                       if impl_name.startswith("probe_") and pm.parse_hookimpl_opts(plugin, impl_name) is not None)
        rows.append({"name": name, "version": plugin_version(plugin), "builtin": name in DEFAULT_PLUGINS,
                     "hooks": hooks})
    return rows
