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
    from probe.plugin_manager import current_plugin

    views: list[PluginView] = []

    def register(title: str, render: Callable) -> None:
        views.append(PluginView(str(title), render, current_plugin() or "unknown"))

    pm.hook.probe_dashboard_views(register=register)
    return views
