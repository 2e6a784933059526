"""Which plugin gets which capture: the plugins' hook-point requests, resolved and routed.

Before decoding, :func:`resolve_routes` asks the plugins which hook points they want in each phase
(``probe_decode_points``, ``probe_replay_points``, ``probe_rejected_points``) and keeps, per phase,
a :class:`Routes`: the points to attach and, per point, ``probe_capture`` restricted to the
plugins that asked for it.  While decoding, a :class:`Router` takes every fired hook point, splits
the batch axis back into clips (:class:`Item`) and hands each clip's rows to its plugins — or holds
them back while the attempt may still be rejected by temperature fallback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from probe.errors import PluginError
from probe.plugin_manager import ask, implementers, plugin_caller, plugin_timing
from probe.points import HookPoint, select_points

if TYPE_CHECKING:
    from probe.tracer.run import CaptureContext, Run


@dataclass
class Routes:
    """The hook points one phase attaches, and where each one's captures go."""

    points: list[HookPoint] = field(default_factory=list)
    captures: dict[str, Callable] = field(default_factory=dict)  # point name → probe_capture of its askers

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.points]


def resolve_routes(pm, run: Run) -> None:
    """Ask ``run``'s plugins for their hook points and set ``run.decode_routes`` / ``replay_routes`` /
    ``rejected_routes``.  Replays run the decoder only: encoder points belong in probe_decode_points."""
    run.decode_routes = _routes(pm, _requested(pm, run, "probe_decode_points"))
    run.replay_routes = _routes(pm, _requested(pm, run, "probe_replay_points", decoder_only=True))
    run.rejected_routes = _routes(pm, _requested(pm, run, "probe_rejected_points", decoder_only=True))


def union(point_lists: Iterable[list[HookPoint]]) -> list[HookPoint]:
    """Every point of ``point_lists`` once, in first-seen order (the points of clips decoded together)."""
    points: dict[str, HookPoint] = {}
    for point_list in point_lists:
        points.update((p.name, p) for p in point_list)
    return list(points.values())


@dataclass
class Item:
    """One clip of a generate() call: its run and its capture context; captures held back."""

    run: Run
    ctx: CaptureContext
    deferred: list = field(default_factory=list)  # (point, tensor, ctx snapshot, routes), in order


_DECODE, _REPLAY, _REJECTED = attrgetter("decode_routes"), attrgetter("replay_routes"), attrgetter("rejected_routes")


class Router:
    """Routes each fired hook point to the plugins that asked for it, in the phases they asked.

    The batch axis holds the rows of the current attempt (clips × beams while decoding); it is
    split back so each run's plugins see only their own rows.  While an attempt may still be
    rejected (temperature fallback), decoding captures are held back (``defer``) and handed over by
    :meth:`flush` only for the attempt generate() kept; a rejected attempt's are dropped.
    Captures in any other phase (language detection, the no-speech detector) go nowhere.
    """

    def __init__(self, items: list[Item]):
        self.items = items  # of the current attempt or replay, in batch order
        self.phase = "aside"
        self.defer = False
        self.busy = False  # a plugin calling a hooked module inside probe_capture is not the model's forward

    def decoding(self, point: HookPoint, tensor: torch.Tensor) -> None:
        """Capture of the hooks attached for ``generate()``."""
        if self.phase in ("encode", "decode"):
            self._route(point, tensor, _DECODE, hold=self.defer and self.phase == "decode")

    def replaying(self, point: HookPoint, tensor: torch.Tensor) -> None:
        """Capture of the hooks attached for the replay."""
        if self.phase == "replay":
            self._route(point, tensor, _REPLAY, hold=False)

    def rejecting(self, point: HookPoint, tensor: torch.Tensor) -> None:
        """Capture of the hooks attached for the replay of a rejected attempt."""
        if self.phase == "rejected":
            self._route(point, tensor, _REJECTED, hold=False)

    def count_step(self, module, args) -> None:
        """The decoder's forward pre-hook while generate() runs: one more step of the attempt (``ctx.step``)."""
        if self.phase == "decode":
            for item in self.items:
                item.ctx.step += 1

    def _route(self, point: HookPoint, tensor: torch.Tensor, routes_of: Callable[[Run], Routes], hold: bool) -> None:
        if self.busy or not self.items:
            return
        rows = tensor.shape[0] // len(self.items)
        for i, item in enumerate(self.items):
            capture = routes_of(item.run).captures.get(point.name)
            if capture is None:
                continue
            part = tensor if len(self.items) == 1 else tensor[i * rows:(i + 1) * rows]
            if hold:
                item.deferred.append((point, part, dataclasses.replace(item.ctx), capture))
            else:
                self._dispatch(item.run, point, part, item.ctx, capture)

    def flush(self, item: Item) -> None:
        """Hand an accepted attempt's held-back captures to its plugins, in the order they happened."""
        deferred, item.deferred = item.deferred, []
        for point, tensor, ctx, capture in deferred:
            self._dispatch(item.run, point, tensor, ctx, capture)

    def _dispatch(self, run: Run, point: HookPoint, tensor: torch.Tensor, ctx: CaptureContext, capture) -> None:
        """``capture``: pm.hook.probe_capture restricted to the plugins that asked for ``point``."""
        self.busy = True
        try:
            with plugin_timing(run.plugin_seconds):
                capture(run=run, point=point, tensor=tensor, ctx=ctx)
        finally:
            self.busy = False


def _is_patterns(result) -> bool:
    return isinstance(result, (list, tuple, set, frozenset)) and all(isinstance(p, str) for p in result)


def _requested(pm, run: Run, hook_name: str, decoder_only: bool = False) -> dict[str, list[HookPoint]]:
    """Plugin name → the hook points it asked for via ``hook_name`` (only decoder points, if so)."""
    asked = ask(pm, hook_name, expect=_is_patterns, run=run)
    requested = {name: select_points(run.config, list(patterns)) for name, patterns in asked.items()}
    for plugin, wanted in requested.items():
        if decoder_only and any(p.side == "encoder" for p in wanted):
            raise PluginError(f"plugin {plugin!r} asks for encoder points in {hook_name}; it replays the"
                              " decoder only, so encoder points belong in probe_decode_points")
    return requested


def _routes(pm, requested: dict[str, list[HookPoint]]) -> Routes:
    """Every point some plugin asked for, and per point ``probe_capture`` of the plugins that asked."""
    capturing = set(implementers(pm, "probe_capture"))
    points: dict[str, HookPoint] = {}
    askers: dict[str, list[str]] = {}
    for plugin, wanted in requested.items():
        if plugin not in capturing:
            raise PluginError(f"plugin {plugin!r} asks for hook points but implements no probe_capture")
        for point in wanted:
            points[point.name] = point
            askers.setdefault(point.name, []).append(plugin)
    callers: dict[frozenset, Any] = {}  # one subset caller per set of plugins
    for plugins in askers.values():
        if frozenset(plugins) not in callers:
            callers[frozenset(plugins)] = plugin_caller(pm, "probe_capture", plugins)
    return Routes(list(points.values()), {name: callers[frozenset(plugins)] for name, plugins in askers.items()})
