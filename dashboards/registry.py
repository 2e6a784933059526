"""Dashboard views contributed by plugins through the ``probe_dashboard_views`` hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PluginView:
    title: str
    render: Callable  # render(trace, st)
    plugin: str


def plugin_views(pm) -> list[PluginView]:
    """Every view registered by a plugin, in plugin call order.  A plugin that raises is named."""
    from probe.plugin_manager import implementations
    from probe.errors import PluginError

    views: list[PluginView] = []
    for name, function, argnames in implementations(pm, "probe_dashboard_views"):
        def register(title: str, render: Callable, _plugin=name) -> None:
            views.append(PluginView(str(title), render, _plugin))
        try:
            function(register)
        except Exception as exc:
            raise PluginError(f"plugin {name!r} raised in probe_dashboard_views: {type(exc).__name__}: {exc}") from exc
    return views
