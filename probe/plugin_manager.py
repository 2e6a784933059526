"""Finding, loading and calling plugins.

Built-in features are ordinary plugins listed in :data:`DEFAULT_PLUGINS` (modules of
:mod:`probe.plugins`), each removable with ``-p no:NAME``.  Third-party plugins come from the
entry-point group ``whisper_probe`` (skipped when :data:`DISABLE_AUTOLOAD_ENV` is set), from
``-p MODULE`` or ``-p path/to/file.py``, or as objects passed from Python.  :func:`call_each` calls a
hook one implementation at a time so that a plugin that raises or returns the wrong type is named
in a one-line :class:`~probe.errors.PluginError`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

import pluggy

from probe import hookspecs
from probe.errors import PluginError, ProbeError

DEFAULT_PLUGINS = ("activations", "attention", "cross_attention", "token_probs", "logit_lens")
ENTRY_POINT_GROUP = "whisper_probe"
DISABLE_AUTOLOAD_ENV = "WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD"


def plugin_version(plugin) -> str:
    """A plugin's ``__version__`` (or ``version``), else its distribution's, else ``"unknown"``."""
    for attr in ("__version__", "version"):
        value = getattr(plugin, attr, None)
        if isinstance(value, str):
            return value
    return "unknown"


def _load_builtin(name: str):
    module = importlib.import_module(f"probe.plugins.{name}")
    # Built-ins keep per-run state, so each manager gets a fresh instance.
    return module.Plugin() if hasattr(module, "Plugin") else module


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


def load_plugin(ref):
    """A plugin object from a module name, a ``.py`` path, or an object (returned as is)."""
    if not isinstance(ref, (str, Path)):
        return ref
    text = str(ref)
    if text.endswith(".py") or os.sep in text or Path(text).suffix == ".py":
        return _load_file(Path(text).expanduser().resolve())
    if text in DEFAULT_PLUGINS:
        return _load_builtin(text)
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


def get_plugin_manager(plugins=(), disabled=(), autoload: bool | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-ins (minus ``disabled``), entry points, and ``plugins``.

    :param plugins: extra plugins: module names, ``.py`` paths or objects.  ``"no:NAME"`` entries
        disable a plugin like ``disabled`` does.
    :param autoload: load the ``whisper_probe`` entry points; default: unless the environment
        variable ``WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """
    extra = [p for p in plugins if not (isinstance(p, str) and p.startswith("no:"))]
    disabled = set(disabled) | {p[3:] for p in plugins if isinstance(p, str) and p.startswith("no:")}
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    unknown = disabled - set(DEFAULT_PLUGINS) - _entry_point_names()
    if unknown:
        raise PluginError(f"cannot disable unknown plugin(s) {', '.join(sorted(unknown))};"
                          f" `probe plugins` lists the names")
    for name in DEFAULT_PLUGINS:
        if name not in disabled:
            _register(pm, _load_builtin(name), name)
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
    for ref in extra:
        plugin = load_plugin(ref)
        _register(pm, plugin, plugin_name(plugin))
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
        raise PluginError(f"plugin {name!r} is invalid: {exc}; hook names are listed in probe.hookspecs") from exc


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """Every registered plugin with its version and the hooks it implements."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(impl_name for impl_name in dir(plugin)
                       if impl_name.startswith("probe_") and pm.parse_hookimpl_opts(plugin, impl_name) is not None)
        rows.append({"name": name, "version": plugin_version(plugin), "builtin": name in DEFAULT_PLUGINS,
                     "hooks": hooks})
    return rows


def implementations(pm: pluggy.PluginManager, hook_name: str):
    """(plugin name, function) pairs implementing ``hook_name``, in pluggy's call order."""
    caller = getattr(pm.hook, hook_name)
    return [(impl.plugin_name, impl.function, impl.argnames) for impl in reversed(caller.get_hookimpls())]


def call_each(pm: pluggy.PluginManager, hook_name: str, expect=None, seconds: dict | None = None, **kwargs) -> dict:
    """Call every implementation of ``hook_name``; map plugin name → result (None results dropped).

    A plugin that raises, or returns something that fails ``expect(result)``, becomes a one-line
    :class:`PluginError` naming it.  User errors raised by plugins (ProbeError) pass through.
    ``seconds`` (plugin name → float), when given, accumulates the time each plugin took.
    """
    results = {}
    for name, function, argnames in implementations(pm, hook_name):
        started = time.perf_counter()
        try:
            result = function(*[kwargs[a] for a in argnames])
        except (ProbeError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise PluginError(f"plugin {name!r} raised in {hook_name}: {type(exc).__name__}: {exc}"
                              " (run with --debug for the traceback, or disable it with -p no:"
                              f"{name})") from exc
        finally:
            if seconds is not None:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        if result is None:
            continue
        if expect is not None and not expect(result):
            raise PluginError(f"plugin {name!r} returned {type(result).__name__} from {hook_name},"
                              " which is not what the hook expects; see probe.hookspecs")
        results[name] = result
    return results

