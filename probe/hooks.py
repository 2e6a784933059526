"""Every PyTorch hook whisper-probe puts on a model: registered here, and removed here.

:class:`Hooks` owns the handles: a context manager whose :meth:`~Hooks.points` registers forward
hooks (and forward pre-hooks) for exactly the requested :class:`~probe.points.HookPoint` objects,
whose :meth:`~Hooks.forward` / :meth:`~Hooks.forward_pre` register the tracer's own observers (the
decoder step counter, the cross-attention key/value keepers, :class:`probe.longform.GenerateObserver`'s
marks on the model and encoder), and which removes every one of them, newest first, on exit —
also when decoding or a plugin raises, or on Ctrl-C.  Nothing else in whisper-probe calls
``register_forward_hook``; :func:`hooks_left` counts what is still registered (0 after a run).
:func:`attach` is the short form for hook points only.  Hooks only detach and hand tensors on;
they always return ``None``, so the model's output is untouched.

Attention patterns need care: the fast attention kernels (SDPA, flash) never materialise the
probabilities.  Rather than switch the whole model to eager attention, the requested attention
modules alone are routed through a registered transformers attention function that calls the
model's own implementation unchanged and then recomputes ``softmax(q·kᵀ + mask)`` from the queries
and keys it was given (the same tensors, including cached keys during generation).  Only those
modules pay for it; the output still comes from the original kernel, so decoding is untouched.
Where nothing is decoded from the output (the teacher-forced replay), ``attach(...,
outputs_from_patterns=True)`` has those modules compute their output from the same probabilities
as eager attention does (``probs·v``) instead of running the kernel as well.
"""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from probe.points import INPUT, OUTPUT, PATTERN, HookPoint

PATTERN_ATTN_NAME = "whisper_probe_pattern"

Capture = Callable[[HookPoint, torch.Tensor], None]


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _output_hook(point: HookPoint, capture: Capture):
    if point.gelu:
        def hook(module, args, output):
            capture(point, F.gelu(output.detach()))
    else:
        def hook(module, args, output):
            capture(point, _first(output).detach())
    return hook


def _input_hook(point: HookPoint, capture: Capture):
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        capture(point, hidden.detach())
    return hook


def attention_probabilities(module, query: torch.Tensor, key: torch.Tensor, attention_mask, scaling: float | None):
    """``softmax(q·kᵀ·scaling + mask)`` in float32, as eager attention computes it.

    query: [batch, head, query, head_dim]; key: [batch, head, key, head_dim] → [batch, head, query, key].
    """
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2))
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    q_len, k_len = scores.shape[-2], scores.shape[-1]
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[..., -q_len:, :k_len]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    elif getattr(module, "is_causal", False) and q_len > 1:
        # SDPA paths pass no mask and use is_causal; query i sees keys up to i + (k_len - q_len).
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, float("-inf"))
    return scores.softmax(dim=-1)


def _pattern_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention function registered with transformers: original kernel, plus the probabilities.

    query/key/value: [batch, head, position, head_dim]; returns ([batch, query, head, head_dim], weights).
    The innermost :func:`attach` decides whether the output comes from the probabilities.
    """
    routes = module._probe_routes
    if routes[-1][1] and not module.training and kwargs.get("head_mask") is None:
        probs = attention_probabilities(module, query, key, attention_mask, scaling)  # [batch, head, query, key]
        _capture_all(routes, probs.detach())
        return torch.matmul(probs.to(value.dtype), value).transpose(1, 2).contiguous(), None
    original = module._probe_original_attention
    attn_output, attn_weights = original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    probs = attn_weights if attn_weights is not None else attention_probabilities(
        module, query, key, attention_mask, scaling)
    _capture_all(routes, probs.detach())
    return attn_output, attn_weights


def _capture_all(routes, probs: torch.Tensor) -> None:
    for captures, _ in routes:
        for capture in captures:
            capture(probs)


def _register_pattern_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PATTERN_ATTN_NAME, _pattern_attention)


def original_attention_function(module) -> Callable:
    """The attention function a transformers attention module would call right now."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = module.config._attn_implementation
    if impl in (None, "eager") or impl not in ALL_ATTENTION_FUNCTIONS:
        from transformers.models.whisper import modeling_whisper

        return modeling_whisper.eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[impl]


def _route_pattern(module, captures: list[Callable[[torch.Tensor], None]],
                   outputs_from_patterns: bool = False) -> Callable[[], None]:
    """Send ``module``'s attention through :func:`_pattern_attention`; return the undo.

    Routes nest: an :func:`attach` inside another (the replay inside ``generate()``) adds its
    captures to a module already routed, and removing the last route restores the module.
    """
    if not hasattr(module, "_probe_routes"):
        _register_pattern_attention()
        module._probe_config = module.config
        module._probe_original_attention = original_attention_function(module)
        module._probe_routes = []
        # A private config copy for this module only: the model-wide setting (and the masks the
        # decoder builds from it) stay exactly as they were.
        routed = copy.copy(module.config)
        routed._attn_implementation_internal = PATTERN_ATTN_NAME
        module.config = routed
    route = (captures, outputs_from_patterns)
    module._probe_routes.append(route)

    def undo():
        module._probe_routes.remove(route)
        if not module._probe_routes:
            module.config = module._probe_config
            del module._probe_original_attention, module._probe_routes, module._probe_config

    return undo


class Hooks:
    """The hooks one owner registered on ``model``; :meth:`close` (or leaving ``with``) removes them all."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._undo: list[Callable[[], None]] = []  # in registration order; undone newest first

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def forward(self, module: torch.nn.Module, hook: Callable) -> None:
        """``hook(module, args, output)`` after every forward of ``module``."""
        self._undo.append(module.register_forward_hook(hook).remove)

    def forward_pre(self, module: torch.nn.Module, hook: Callable, with_kwargs: bool = False) -> None:
        """``hook(module, args)`` (``hook(module, args, kwargs)`` with ``with_kwargs``) before every forward."""
        self._undo.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs).remove)

    def points(self, points: Iterable[HookPoint], capture: Capture, outputs_from_patterns: bool = False) -> None:
        """Hook ``points``: ``capture(point, tensor)`` receives detached tensors (shapes as in :mod:`probe.points`).

        ``outputs_from_patterns``: attention modules whose pattern is hooked return ``probs·v`` (eager
        attention's arithmetic on the captured probabilities) rather than also running their kernel;
        for passes whose outputs decide nothing (the replay).
        """
        patterns: dict[str, list] = {}
        for point in points:
            module = self.model.get_submodule(point.module)
            if point.kind == OUTPUT:
                self.forward(module, _output_hook(point, capture))
            elif point.kind == INPUT:
                self.forward_pre(module, _input_hook(point, capture), with_kwargs=True)
            elif point.kind == PATTERN:
                patterns.setdefault(point.module, []).append(functools.partial(capture, point))
            else:  # pragma: no cover - HookPoint kinds are fixed
                raise ValueError(point.kind)
        for module_path, captures in patterns.items():
            self._undo.append(_route_pattern(self.model.get_submodule(module_path), captures, outputs_from_patterns))

    def close(self) -> None:
        """Remove everything registered here, newest first; an error (or Ctrl-C) on the way stops
        no removal after it and is raised once all are gone."""
        failure: BaseException | None = None
        while self._undo:
            try:
                self._undo.pop()()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once nothing is left
                failure = failure or exc
        if failure is not None:
            raise failure


@contextmanager
def attach(model: torch.nn.Module, points: Iterable[HookPoint], capture: Capture,
           outputs_from_patterns: bool = False) -> Iterator[Hooks]:
    """Hook ``points`` on ``model`` for the duration of the ``with`` block (:meth:`Hooks.points`).

    Everything registered here is removed on exit, whatever happened inside.
    """
    with Hooks(model) as hooks:
        hooks.points(points, capture, outputs_from_patterns)
        yield hooks


def hooks_left(model: torch.nn.Module) -> int:
    """How many forward hooks, pre-hooks and pattern routes are registered on ``model`` (0 after a run)."""
    count = 0
    for module in model.modules():
        count += len(module._forward_hooks) + len(module._forward_pre_hooks)
        count += int(hasattr(module, "_probe_original_attention"))
    return count
