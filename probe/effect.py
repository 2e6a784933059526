"""What an intervention changed, measured against the clean trace of the same clip.

An intervened trace links the clean one (:func:`clean_trace`: named by the user, or found in the
store — same audio, model and decoding options, no interventions) and keeps, besides its own
records, how the intervention moved the model on the **clean transcript** (:func:`measure`):
every clean window's tokens are teacher-forced through the model twice, as it is and as
intervened, from the same log-Mel slice ``generate()`` decoded that window from, and the two
passes give

- ``effect.logprobs`` (table): each clean token's log-probability in both, and the change
  (``delta``, intervened − clean; identity interventions give exactly 0);
- ``effect.cross_attention`` (tensor [arm, token, frame], float16; arm 0 clean, 1 intervened):
  the cross-attention of the alignment heads (mean over heads) from each clean token to the
  window's encoder frames, so the difference is taken on the same tokens.

The manifest's ``effect`` sums it up with the error rates between the two transcripts
(:mod:`probe.metrics`; the clean transcript is the reference).  Both passes share one code path
(patterned attention computed as eager attention does), so the change is the intervention's alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probe.errors import OptionError, StoreError

CLEAN_AUTO = "auto"  # find the clean trace in the store
SAMPLES_PER_MEL_FRAME = 160


@dataclass
class Effect:
    """The clean trace an intervened run is measured against, and what :func:`measure` found."""

    clean: Any  # probe.store.Trace
    rows: list[dict] = field(default_factory=list)  # effect.logprobs
    cross_attention: np.ndarray | None = None  # [arm, token, frame] float16
    alignment_heads: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0  # the two teacher-forced passes
    windows: list[dict] = field(default_factory=list)  # the clean windows measured: index, start, n_frames

    def summary(self, transcript: str, sequence: list[int]) -> dict:
        """The manifest's ``effect``: the clean trace, error rates, token equality, log-prob change."""
        from probe.metrics import error_rates

        manifest = self.clean.manifest
        rates = error_rates(manifest.get("transcript") or "", transcript, manifest.get("language"))
        kept = [row["delta"] for row in self.rows if row["in_transcript"]]
        worst = min((row for row in self.rows if row["in_transcript"]), key=lambda row: row["delta"], default=None)
        attention = self.cross_attention
        change = (float(np.abs(attention[1].astype(np.float32) - attention[0].astype(np.float32)).sum(-1).mean())
                  if attention is not None and attention.shape[1] else 0.0)
        return {
            "clean": self.clean.id,
            # the clean transcript travels with the trace: its diff stays readable if the clean trace goes
            "clean_transcript": manifest.get("transcript") or "",
            "tokens_equal": list(manifest.get("sequence") or []) == list(sequence),
            **rates.to_dict(),
            "tokens": len(kept),
            "delta_logprob_total": round(float(sum(kept)), 6),
            "delta_logprob_mean": round(float(np.mean(kept)), 6) if kept else 0.0,
            "largest_drop": None if worst is None else {k: worst[k] for k in ("window", "position", "text", "delta")},
            # mean over tokens of Σ|Δ| over frames (0: the same alignment; 2: none of it shared)
            "cross_attention_change": round(change, 6),
            "seconds": round(self.seconds, 4),
            "windows": self.windows,
        }


def describe(summary: dict) -> str:
    """One line for ``probe run`` and ``probe show``: the manifest's ``effect`` in words."""
    rate = summary[summary["headline"]]
    same = " (same tokens)" if summary["tokens_equal"] else ""
    return (f"effect vs clean {summary['clean']}: {summary['headline'].upper()} {rate:.1%}{same}; clean transcript "
            f"log-prob {summary['delta_logprob_total']:+.2f} over {summary['tokens']} tokens, cross-attention "
            f"change {summary['cross_attention_change']:.2f}")


def clean_trace(store, clean: str | None, run) -> Any | None:
    """The trace ``run`` (an intervened :class:`~probe.tracer.Run`) is compared with: ``clean`` as
    the store resolves it (an id, a unique prefix or a name), the newest matching trace for
    :data:`CLEAN_AUTO`, or None (``clean`` None, or nothing matches).  A named trace of other
    audio or another model is a one-line :class:`OptionError`."""
    if clean is None or store is None:
        return None
    if clean != CLEAN_AUTO:
        try:
            trace = store.resolve(clean)
        except StoreError as err:
            raise OptionError(f"--clean {clean}: {err}") from None
        problem = _mismatch(trace.manifest, run)
        if problem:
            raise OptionError(f"--clean {clean}: trace {trace.id} {problem}; name a trace of the same clip and model "
                              "recorded without --intervene")
        return trace
    for info in store.list():
        if info.error:
            continue
        try:
            trace = store.open(info.id)
        except StoreError:
            continue
        if not _mismatch(trace.manifest, run) and not trace.manifest.get("interventions") and \
                _same(trace.manifest.get("decode"), run.options.to_dict()):
            return trace
    return None


def _mismatch(manifest: dict, run) -> str | None:
    audio = manifest.get("audio") or {}
    if (audio.get("sha256"), audio.get("channel", "mix")) != (run.clip.sha256, run.clip.channel):
        return "was recorded from other audio"
    if (manifest.get("model") or {}).get("id") != run.loaded.model_id:
        return f"was recorded with another model ({(manifest.get('model') or {}).get('id')})"
    if manifest.get("interventions"):
        return "is itself intervened"
    return None


def _same(first, second) -> bool:
    return json.loads(json.dumps(first)) == json.loads(json.dumps(second))


def window_segment(model, features: torch.Tensor, mask: torch.Tensor | None, seek: int) -> torch.Tensor:
    """The log-Mel slice [1, n_mels, 3000] ``generate()`` decodes the window starting at ``seek``
    from: the whole clip's ``features`` [1, n_mels, mel_frame] (``mask``: its audio frames, long
    audio) cut there and padded as transformers pads a window."""
    max_frames = int(mask.sum()) if mask is not None else features.shape[-1]
    segment_frames = 2 * int(model.config.max_source_positions)  # 3000 log-Mel frames a window
    segment = features[..., seek:seek + min(segment_frames, max_frames - seek)]
    return F.pad(segment, (0, segment_frames - segment.shape[-1]))


def measure(tracer, run, clean) -> Effect:
    """Teacher-force every window of the ``clean`` trace through ``tracer``'s model, as it is and
    with ``tracer``'s interventions, on ``run``'s audio (see the module docstring)."""
    from probe import hooks as hooks_mod
    from probe import interventions as interventions_mod
    from probe.points import PATTERN, list_points

    started = time.perf_counter()
    model, loaded = tracer.loaded.model, tracer.loaded
    heads = [tuple(h) for h in loaded.alignment_heads]
    layers = sorted({layer for layer, _ in heads})
    points = [p for p in list_points(model.config)
              if p.kind == PATTERN and ".cross_attn." in p.name and p.layer in layers]
    features, mask = tracer.features([run.clip])  # [1, n_mels, mel_frame]
    windows = [w for w in clean.manifest.get("windows") or [] if w.get("tokens")]
    effect = Effect(clean=clean, alignment_heads=[list(h) for h in heads],
                    windows=[{"index": int(w["index"]), "start": float(w.get("start") or 0.0),
                              "n_frames": int(w.get("n_frames") or model.config.max_source_positions)} for w in windows])
    # the encoder output of a window is the same in both passes unless an intervention acts there
    encoder_changed = interventions_mod.touches_encoder(tracer.interventions, model.config)
    arms: list[list[tuple[list[float], torch.Tensor]]] = [[], []]
    for window in windows:
        seek = int(window.get("seek") or 0)
        segment = window_segment(model, features, mask, seek)
        prompt, tokens = list(window["prompt"]), list(window["tokens"])
        encoded = None
        for arm in (0, 1):
            captured: dict[int, torch.Tensor] = {}
            with torch.inference_mode(), hooks_mod.Hooks(model) as hooks:
                if arm == 1:
                    interventions_mod.apply(hooks, model, tracer.interventions, seeks=lambda seek=seek: [seek])
                hooks.points(points, lambda point, tensor: captured.__setitem__(point.layer, tensor),
                             outputs_from_patterns=True)
                if encoded is None or (arm == 1 and encoder_changed):
                    encoded = model.model.encoder(segment).last_hidden_state  # [1, frame, d_model]
                ids = torch.tensor([prompt + tokens], device=encoded.device)  # [1, query]
                hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
                logprobs = tracer.emitted_logprobs(hidden[0], len(prompt), tokens)
                attention = torch.stack([captured[layer][0, head] for layer, head in heads]).float().mean(0)  # [query, frame]
                arms[arm].append((logprobs, attention[len(prompt) - 1:len(prompt) - 1 + len(tokens)].cpu().clone()))
    from probe.tokens import labels, token_bytes

    raw = token_bytes(loaded.processor.tokenizer, [t for w in windows for t in w["tokens"]])
    for number, window in enumerate(windows):
        (clean_lp, _), (changed_lp, _) = arms[0][number], arms[1][number]
        kept = int(window.get("kept", len(window["tokens"])))
        texts = labels([raw.get(int(t), b"") for t in window["tokens"]])  # split characters joined
        for position, (token, text, before, after) in enumerate(zip(window["tokens"], texts, clean_lp, changed_lp)):
            effect.rows.append({"window": int(window["index"]), "position": position, "token": int(token), "text": text,
                                "in_transcript": position < kept and not window.get("skipped"),
                                "clean": float(before), "intervened": float(after), "delta": float(after - before)})
    if windows:
        effect.cross_attention = torch.stack([torch.cat([part for _, part in arms[arm]]) for arm in (0, 1)]
                                             ).to(torch.float16).numpy()  # [arm, token, frame]
    effect.seconds = time.perf_counter() - started
    return effect


def write(writer, effect: Effect, transcript: str, sequence: list[int]) -> None:
    """Add ``effect``'s records to an intervened trace's ``writer`` and its summary to the manifest."""
    if effect.rows:
        writer.add_table("effect.logprobs", effect.rows, plugin="effect",
                         meta={"clean": effect.clean.id, "columns": {"delta": "intervened − clean log-probability"}})
    if effect.cross_attention is not None:
        writer.add_tensor("effect.cross_attention", effect.cross_attention, plugin="effect",
                          meta={"axes": ["arm", "token", "frame"], "arms": ["clean", "intervened"],
                                "alignment_heads": effect.alignment_heads, "clean": effect.clean.id})
    writer.update_manifest(effect=effect.summary(transcript, sequence))
