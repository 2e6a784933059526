"""Hook points: stable names for what can be observed inside a Whisper model.

The grammar follows TransformerLens (``encoder.blocks.3.attn.hook_pattern``) and each name maps to
one module of a transformers ``WhisperForConditionalGeneration`` plus *what* of that module is seen:
its output, its input, or — for attention patterns — the softmax probabilities recomputed from the
queries and keys the attention module already computed (see :mod:`probe.hooks`).  Names are the
same for every Whisper size; :func:`list_points` gives the concrete list, with shapes, for one config.

Shapes use these axis names: ``batch`` (clips × beams while decoding), ``head``, ``frame`` (encoder
positions, 1500 for 30 s), ``mel_frame`` (3000), ``query``/``key`` (token positions), ``d_model``,
``vocab``, ``head*head_dim`` (every head's output side by side, head-major: head ``h`` is columns
``h·head_dim … (h+1)·head_dim``).

Each attention has a ``hook_z`` point: the input of its ``out_proj``, the heads' outputs before they
are mixed into ``d_model``; per-head work (patching chosen heads, :mod:`probe.interventions`) reads it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from probe.errors import OptionError

OUTPUT, INPUT, PATTERN = "output", "input", "pattern"


@dataclass(frozen=True)
class HookPoint:
    """One observable place in the model."""

    name: str  # stable whisper-probe name
    module: str  # transformers module path, e.g. "model.decoder.layers.3.encoder_attn"
    kind: str  # OUTPUT | INPUT | PATTERN
    shape: tuple  # axis names, e.g. ("batch", "head", "query", "frame")
    sizes: tuple  # concrete sizes for this config; None where it varies per call
    side: str  # "encoder" | "decoder"
    doc: str
    gelu: bool = False  # the conv stem is seen after its GELU, as the encoder uses it

    @property
    def layer(self) -> int | None:
        """The block index of ``*.blocks.{i}.*`` points, else None."""
        parts = self.name.split(".")
        return int(parts[2]) if len(parts) > 2 and parts[1] == "blocks" else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "sizes": list(self.sizes),
            "side": self.side,
            "kind": self.kind,
            "module": self.module,
            "doc": self.doc,
        }


def _encoder_points(config) -> list[HookPoint]:
    d, h = config.d_model, config.encoder_attention_heads
    frames = config.max_source_positions  # 1500
    mel_frames = frames * 2  # 3000
    enc = "model.encoder"
    points = [
        HookPoint("encoder.hook_conv1", f"{enc}.conv1", OUTPUT, ("batch", "d_model", "mel_frame"),
                  (None, d, mel_frames), "encoder", "first conv of the stem (k=3, stride 1), after GELU", gelu=True),
        HookPoint("encoder.hook_conv2", f"{enc}.conv2", OUTPUT, ("batch", "d_model", "frame"),
                  (None, d, frames), "encoder", "second conv (k=3, stride 2: 3000 → 1500 frames), after GELU", gelu=True),
        HookPoint("encoder.hook_embed", f"{enc}.layers.0", INPUT, ("batch", "frame", "d_model"),
                  (None, frames, d), "encoder", "conv stem output plus sinusoidal positions: the first residual"),
    ]
    for i in range(config.encoder_layers):
        layer = f"{enc}.layers.{i}"
        b = f"encoder.blocks.{i}"
        points += [
            HookPoint(f"{b}.hook_resid_pre", layer, INPUT, ("batch", "frame", "d_model"), (None, frames, d),
                      "encoder", f"residual stream entering block {i}"),
            HookPoint(f"{b}.attn.hook_pattern", f"{layer}.self_attn", PATTERN, ("batch", "head", "frame", "frame"),
                      (None, h, frames, frames), "encoder", f"self-attention probabilities of block {i}"),
            HookPoint(f"{b}.attn.hook_z", f"{layer}.self_attn.out_proj", INPUT, ("batch", "frame", "head*head_dim"),
                      (None, frames, d), "encoder", f"self-attention heads' outputs of block {i}, before out_proj"),
            HookPoint(f"{b}.hook_attn_out", f"{layer}.self_attn", OUTPUT, ("batch", "frame", "d_model"),
                      (None, frames, d), "encoder", f"self-attention output of block {i} (before the residual add)"),
            HookPoint(f"{b}.hook_mlp_out", f"{layer}.fc2", OUTPUT, ("batch", "frame", "d_model"), (None, frames, d),
                      "encoder", f"MLP output of block {i} (before the residual add)"),
            HookPoint(f"{b}.hook_resid_post", layer, OUTPUT, ("batch", "frame", "d_model"), (None, frames, d),
                      "encoder", f"residual stream leaving block {i}"),
        ]
    points.append(HookPoint("encoder.hook_ln_final", f"{enc}.layer_norm", OUTPUT, ("batch", "frame", "d_model"),
                            (None, frames, d), "encoder", "encoder output after the final layer norm"))
    return points


def _decoder_points(config) -> list[HookPoint]:
    d, h = config.d_model, config.decoder_attention_heads
    frames = config.max_source_positions
    dec = "model.decoder"
    points = [
        HookPoint("decoder.hook_embed", f"{dec}.layers.0", INPUT, ("batch", "query", "d_model"), (None, None, d),
                  "decoder", "token embedding plus learned positions: the first decoder residual"),
    ]
    for i in range(config.decoder_layers):
        layer = f"{dec}.layers.{i}"
        b = f"decoder.blocks.{i}"
        points += [
            HookPoint(f"{b}.hook_resid_pre", layer, INPUT, ("batch", "query", "d_model"), (None, None, d),
                      "decoder", f"residual stream entering block {i}"),
            HookPoint(f"{b}.attn.hook_pattern", f"{layer}.self_attn", PATTERN, ("batch", "head", "query", "key"),
                      (None, h, None, None), "decoder", f"causal self-attention probabilities of block {i}"),
            HookPoint(f"{b}.attn.hook_z", f"{layer}.self_attn.out_proj", INPUT, ("batch", "query", "head*head_dim"),
                      (None, None, d), "decoder", f"self-attention heads' outputs of block {i}, before out_proj"),
            HookPoint(f"{b}.hook_attn_out", f"{layer}.self_attn", OUTPUT, ("batch", "query", "d_model"),
                      (None, None, d), "decoder", f"self-attention output of block {i}"),
            HookPoint(f"{b}.cross_attn.hook_pattern", f"{layer}.encoder_attn", PATTERN,
                      ("batch", "head", "query", "frame"), (None, h, None, frames), "decoder",
                      f"cross-attention probabilities of block {i} over the encoder frames (20 ms each)"),
            HookPoint(f"{b}.cross_attn.hook_z", f"{layer}.encoder_attn.out_proj", INPUT,
                      ("batch", "query", "head*head_dim"), (None, None, d), "decoder",
                      f"cross-attention heads' outputs of block {i}, before out_proj"),
            HookPoint(f"{b}.hook_cross_attn_out", f"{layer}.encoder_attn", OUTPUT, ("batch", "query", "d_model"),
                      (None, None, d), "decoder", f"cross-attention output of block {i}"),
            HookPoint(f"{b}.hook_mlp_out", f"{layer}.fc2", OUTPUT, ("batch", "query", "d_model"), (None, None, d),
                      "decoder", f"MLP output of block {i}"),
            HookPoint(f"{b}.hook_resid_post", layer, OUTPUT, ("batch", "query", "d_model"), (None, None, d),
                      "decoder", f"residual stream leaving block {i}"),
        ]
    points += [
        HookPoint("decoder.hook_ln_final", f"{dec}.layer_norm", OUTPUT, ("batch", "query", "d_model"), (None, None, d),
                  "decoder", "decoder output after the final layer norm"),
        HookPoint("hook_logits", "proj_out", OUTPUT, ("batch", "query", "vocab"), (None, None, config.vocab_size),
                  "decoder", "next-token logits (the unembedding of the final residual)"),
    ]
    return points


def list_points(config) -> list[HookPoint]:
    """Every hook point of a model with this ``WhisperConfig``, encoder first, in forward order."""
    return _encoder_points(config) + _decoder_points(config)


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def select_points(config, patterns) -> list[HookPoint]:
    """The points matching any of the glob ``patterns`` (``*`` matches within and across dots).

    An unknown pattern raises :class:`OptionError` naming close matches, so a typo never silently
    records nothing.
    """
    available = list_points(config)
    chosen: dict[str, HookPoint] = {}
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        hits = [p for p in available if fnmatch.fnmatchcase(p.name, pattern)]
        if not hits:
            raise OptionError(f"no hook point matches {pattern!r}; {_suggest(pattern, available)}"
                              " (`probe points` lists them all)")
        for p in hits:
            chosen[p.name] = p
    order = {p.name: i for i, p in enumerate(available)}
    return sorted(chosen.values(), key=lambda p: order[p.name])


def _suggest(pattern: str, available: list[HookPoint]) -> str:
    import difflib

    names = sorted({re.sub(r"\.\d+\.", ".{i}.", p.name) for p in available}, key=_natural_key)
    generic = re.sub(r"\.\d+\.", ".{i}.", pattern)
    close = difflib.get_close_matches(generic, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(close) + "?"
    return "names look like " + ", ".join(names[:4]) + ", ..."
