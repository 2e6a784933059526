"""The cross-attention keys and values ``generate()`` computed, kept so the replay need not redo them.

With the cache on, generate() computes each decoder layer's cross-attention keys and values once
per attempt, from the encoder's output.  :class:`CrossKeyValues` keeps them through forward hooks
on each layer's ``encoder_attn.k_proj`` / ``v_proj`` (registered into the decode's
:class:`probe.hooks.Hooks`) and hands the replay an ``EncoderDecoderCache`` holding only them.
(Asking generate() for its cache costs more: Whisper's generate splits and re-stacks every cache
tensor.)
"""

from __future__ import annotations

import inspect

import torch

from probe.hooks import Hooks


class CrossKeyValues:
    """Keeps the first k/v output of each attempt while it decodes ([row·beams, frame, d_model])."""

    def __init__(self, decoder, router):
        self.decoder, self.router = decoder, router  # probe.tracer.routing.Router: its phase says when to keep
        self.attempt = 0
        self.kept: dict[tuple[int, int, str], torch.Tensor] = {}

    def hook(self, hooks: Hooks) -> None:
        """Register the keepers into ``hooks`` (removed with them)."""
        for index, layer in enumerate(self.decoder.layers):
            for which in ("k_proj", "v_proj"):
                hooks.forward(getattr(layer.encoder_attn, which), self._keeper(index, which))

    def _keeper(self, index: int, which: str):
        def keep(module, args, output):
            if self.router.phase == "decode":
                self.kept.setdefault((self.attempt, index, which), output)  # [row·beams, frame, d_model]
        return keep

    def cache(self, rows: list[tuple[int, int, int]]):
        """An EncoderDecoderCache holding only the cross-attention keys/values of ``rows`` — (attempt,
        row within the attempt, beams) each — or None when they were not all seen."""
        layers = len(self.decoder.layers)
        try:
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            attn = self.decoder.layers[0].encoder_attn
            heads, head_dim = attn.num_heads, attn.head_dim
            kept = DynamicCache()
            for index in range(layers):
                keys, values = (torch.stack([self.kept[attempt, index, which][row * beams]
                                             for attempt, row, beams in rows])
                                for which in ("k_proj", "v_proj"))
                shape = (len(rows), -1, heads, head_dim)  # → [batch, head, frame, head_dim]
                kept.update(keys.reshape(shape).transpose(1, 2), values.reshape(shape).transpose(1, 2), index)
            return EncoderDecoderCache(DynamicCache(), kept)
        except (KeyError, AttributeError, ImportError, TypeError, RuntimeError):
            return None


def cache_kwargs(decoder, cache) -> dict:
    """The decoder's keyword arguments for ``cache`` (its name differs across transformers versions)."""
    if cache is None:
        return {"use_cache": False}
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}
