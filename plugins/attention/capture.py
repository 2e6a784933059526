"""Built-in plugin ``attention``: self-attention patterns for the attention explorer.

Encoder self-attention is huge ([head, 1500, 1500] per layer), so for the first window
(``plugin_options["attention_windows"]``, default 1) it keeps, per layer, the pattern over the
frames that hold audio, average-pooled to at most 375 frames a side (each row still sums to 1),
plus per-head summaries over every window: entropy (nats) and mean attention distance (frames).
Decoder self-attention is small and is kept whole from the replay of the chosen tokens.

Records: ``attention.encoder`` [layer, head, query_frame, key_frame] float16 (meta ``pool``: frames
per cell), ``attention.encoder_entropy`` / ``attention.encoder_distance`` [window, layer, head] float32,
``attention.decoder`` [layer, head, query, key] float16 (window 0, prompt included).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from probe.hookspecs import hookimpl

from probe.plugins.attention.present import Presentation

__version__ = Presentation.__version__
MAX_SIDE = 375


def pool_pattern(probs: torch.Tensor, pool: int) -> torch.Tensor:
    """[head, q, k] → [head, ceil(q/pool), ceil(k/pool)]: queries averaged, keys summed."""
    if pool == 1:
        return probs
    head, q, k = probs.shape
    probs = F.pad(probs, (0, (-k) % pool, 0, (-q) % pool))
    summed = probs.reshape(head, probs.shape[1], -1, pool).sum(-1)
    counts = torch.full((math.ceil(q / pool),), pool, device=probs.device, dtype=probs.dtype)
    counts[-1] = q - pool * (len(counts) - 1)
    return summed.reshape(head, -1, pool, summed.shape[-1]).sum(2) / counts[:, None]


def head_summaries(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [head, q, k] → (entropy [head], mean |q - k| distance [head]) averaged over queries."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(-1)
    q = torch.arange(probs.shape[1], device=probs.device, dtype=probs.dtype)
    k = torch.arange(probs.shape[2], device=probs.device, dtype=probs.dtype)
    distance = (probs * (q[:, None] - k[None, :]).abs()).sum(-1).mean(-1)
    return entropy, distance


class Plugin(Presentation):
    """Every hook of attention: the run hooks here, what it shows from :class:`Presentation`."""

    @hookimpl
    def probe_addoption(self, parser):
        parser.addoption("--attention-windows", type=int, default=1,
                         help="how many of the first windows keep their encoder self-attention patterns")

    @hookimpl
    def probe_run_start(self, run):
        run.state[self.name] = {"encoder": {}, "summaries": {}, "decoder": {}, "n_frames": {}}

    @hookimpl
    def probe_decode_points(self, run):
        return ["encoder.blocks.*.attn.hook_pattern"]

    @hookimpl
    def probe_replay_points(self, run):
        return ["decoder.blocks.*.attn.hook_pattern"]

    @hookimpl
    def probe_estimate(self, run):
        config = run.config
        kept = run.frames[: int(run.option("attention_windows", 1))]
        side = [math.ceil(f / math.ceil(f / MAX_SIDE)) for f in kept]
        enc = config.encoder_layers * config.encoder_attention_heads
        dec = config.decoder_layers * config.decoder_attention_heads
        return {"attention.encoder": 2 * enc * sum(s * s for s in side),
                "attention.decoder": 2 * dec * len(kept) * (run.expected_tokens + 4) ** 2,
                "attention.encoder_summaries": 8 * enc * len(run.window_spans)}

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        state = run.state[self.name]
        keep = ctx.window < int(run.option("attention_windows", 1))
        if point.side == "decoder":
            if keep:
                length = len(ctx.tokens)
                state["decoder"].setdefault(ctx.window, {})[point.layer] = tensor[0, :, :length, :length].to(torch.float16)
            return
        # the window's own audio frames: long-form windows follow seek, not fixed 30 s slices
        frames = state["n_frames"].setdefault(ctx.window, ctx.n_frames)
        probs = tensor[0, :, :frames, :frames]  # [head, frame, frame]
        state["summaries"].setdefault(ctx.window, {})[point.layer] = head_summaries(probs)
        if keep:
            pool = math.ceil(frames / MAX_SIDE)
            state["encoder"].setdefault(ctx.window, {})[point.layer] = (pool_pattern(probs, pool).to(torch.float16), pool)

    @hookimpl
    def probe_run_end(self, run, writer):
        state = run.state[self.name]
        if state["encoder"].get(0):
            layers = state["encoder"][0]
            pool = layers[0][1]
            writer.add_tensor("attention.encoder", torch.stack([layers[i][0] for i in sorted(layers)]),
                              plugin=self.name, meta={"axes": ["layer", "head", "query_frame", "key_frame"],
                                                      "pool": pool, "window": 0, "frames": state["n_frames"][0]})
        if state["summaries"]:
            windows = [state["summaries"][w] for w in sorted(state["summaries"])]
            for part, name in enumerate(("encoder_entropy", "encoder_distance")):
                values = torch.stack([torch.stack([w[i][part] for i in sorted(w)]) for w in windows])
                writer.add_tensor(f"attention.{name}", values.float().cpu().numpy().astype(np.float32),
                                  plugin=self.name, meta={"axes": ["window", "layer", "head"]})
        if state["decoder"].get(0):
            layers = state["decoder"][0]
            writer.add_tensor("attention.decoder", torch.stack([layers[i] for i in sorted(layers)]),
                              plugin=self.name, meta={"axes": ["layer", "head", "query", "key"], "window": 0})

