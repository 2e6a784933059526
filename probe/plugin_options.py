"""Options plugins add to ``probe run``, through the ``probe_addoption`` hook.

A plugin declares its options once (``parser.addoption("--top-k", type=int, default=5, help=...)``,
argparse's arguments) and they reach it as ``run.option(dest)`` however it is run: ``probe run``
lists them in ``--help`` under the plugin's name and parses them; ``probe.run(plugin_options=
{dest: value})`` and the dashboard pass values directly, and every option not given gets its
declared default.  A plugin removed with ``-p no:NAME`` takes its options with it.  Two plugins may
declare the same option (same flag and ``dest``: ``--top-k`` serves token_probs and logit_lens).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from probe.errors import PluginError
from probe.plugin_manager import current_plugin


@dataclass
class PluginOption:
    """One option a plugin declared."""

    flags: tuple[str, ...]
    dest: str
    kwargs: dict
    plugins: list[str] = field(default_factory=list)  # the plugins that declared it, first first

    @property
    def default(self):
        if "default" in self.kwargs:
            return self.kwargs["default"]
        return {"store_true": False, "store_false": True}.get(self.kwargs.get("action"))


class OptionParser:
    """What ``probe_addoption(parser)`` receives: collects each plugin's options."""

    def __init__(self):
        self.options: list[PluginOption] = []

    def addoption(self, *flags: str, dest: str | None = None, **kwargs) -> None:
        """Declare an option of ``probe run``: long flags (``"--top-k"``) and argparse's keyword
        arguments (``type``, ``default``, ``action``, ``choices``, ``help``, ``metavar``)."""
        plugin = current_plugin() or "unknown"
        if not flags or not all(isinstance(f, str) and f.startswith("--") and len(f) > 2 for f in flags):
            raise PluginError(f"plugin {plugin!r} declared option {flags!r}; plugin options are long flags"
                              " such as '--my-threshold'")
        dest = dest or flags[0][2:].replace("-", "_")
        for option in self.options:
            if set(option.flags) & set(flags):
                if option.dest != dest:
                    raise PluginError(f"plugin {plugin!r} declares {flags[0]} for {dest!r}, but plugin "
                                      f"{option.plugins[0]!r} already declared it for {option.dest!r}")
                option.plugins.append(plugin)
                return
        self.options.append(PluginOption(tuple(flags), dest, dict(kwargs), [plugin]))

    def defaults(self) -> dict:
        """dest → default of every declared option."""
        return {option.dest: option.default for option in self.options}

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add every option to ``parser``, grouped by plugin, for ``--help`` and parsing."""
        groups: dict[str, argparse._ArgumentGroup] = {}
        for option in self.options:
            owner = option.plugins[0]
            group = groups.get(owner) or groups.setdefault(
                owner, parser.add_argument_group(f"options of plugin {owner}"))
            try:
                group.add_argument(*option.flags, dest=option.dest, **option.kwargs)
            except (argparse.ArgumentError, TypeError, ValueError) as exc:
                raise PluginError(f"plugin {owner!r} declared option {option.flags[0]} that probe run cannot"
                                  f" take: {exc}") from exc

    def values(self, args: argparse.Namespace) -> dict:
        """dest → the value parsed for each declared option."""
        return {option.dest: getattr(args, option.dest, option.default) for option in self.options}


def collect_options(pm) -> OptionParser:
    """Every option the plugins of ``pm`` declare (``probe_addoption``)."""
    parser = OptionParser()
    pm.hook.probe_addoption(parser=parser)
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}  # registration order
    for option in parser.options:
        option.plugins.sort(key=lambda name: order.get(name, len(order)))
    parser.options.sort(key=lambda option: order.get(option.plugins[0], len(order)))
    return parser
