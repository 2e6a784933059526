"""Interventions during real decoding: change one thing inside the model, decode as usual, and
record what follows.

An intervention is declared once — a Python object (:class:`Ablate`, :class:`Steer`,
:class:`Replace`), a dict, or JSON (``probe run --intervene spec.json`` or inline JSON) — and
:func:`resolve` checks it against the model's config: an unknown kind or hook point, a layer or
head out of range or a vector of the wrong length is a one-line :class:`~probe.errors.OptionError`
before anything is decoded.  :func:`apply` registers its hooks in the tracer's
:class:`~probe.hooks.Hooks` *before* any capture hook, for the whole ``generate()`` call — language
detection, every window and fallback attempt, and the teacher-forced replays inside it — so every
record of an intervened trace reflects the intervention, and the hooks go when the call returns
or raises.  The manifest lists the interventions (``interventions``) and ``probe show`` says so.

Kinds:

- ``ablate``: heads of one attention kind (``encoder.self_attn``, ``decoder.self_attn``,
  ``decoder.cross_attn``) in one layer zeroed: each head's slice of the input to ``out_proj`` set
  to 0, which is exactly that attention with those heads' columns of ``out_proj`` zeroed (the
  head's pattern is still computed and recorded; what it writes to the residual is gone);
  With ``mean_of`` (reference traces) each head's slice is set to its mean over those traces
  instead (mean ablation): over every encoder frame of their first window, or every position of
  its prompt and tokens for the decoder's attentions;
- ``steer``: ``alpha · vector`` added at a hook point's tensor (an output or input point whose
  last axis is ``d_model``, or the logits); ``alpha = 0`` leaves the model as it was;
  ``vector`` may also be taken from recorded traces: ``{"traces": [...], "minus": [...]}`` is the
  mean of ``activations.<point>`` over every position of the first set's traces, less the same
  mean over the second's (``minus`` optional: a vector from records alone);
- ``local``: encoder self-attention limited to the frames within ±``k`` of each frame (20 ms
  each), in the given ``layers`` (default: every one), as in Reid's "Interpreting OpenAI's
  Whisper": an additive mask of -inf outside the band handed to the attention as its
  ``attention_mask``, so the recorded patterns show the restriction too;
- ``block``: cross-attention of the given decoder ``layers`` (default: every one) cannot see the
  encoder frames of ``start``–``end`` seconds of the clip ("what if the decoder could not hear
  3.0–5.0 s"): an additive mask over those frames, placed in each window by where it starts
  (the window's ``seek``), so long-form windows block the same seconds of the clip;
- ``patch``: a point's activation replaced by the one recorded at the same point in another
  trace of the same model (``source``: a trace id or name in ``store``, or a trace folder; recorded
  with ``--points POINT``, best with ``--activations-dtype float32``).  Each window takes the
  source's window that starts at the same place (its ``seek``), else the last one starting before
  it.  At an encoder point, all frames or ``frames`` [start, end) only (by index, 20 ms each).
  At a decoder point, by position: ``positions`` [start, end) counts from 0 at the window's first
  prompt token, as the source's record does (its steps put back together: the prompt, then one
  position per generated token but the last; ``activations.steps`` says where each window's
  positions are), default all it has.  Every decoder call is placed by where it starts (the length
  of the key/value cache it is handed: the whole prompt first, then one position a step; 0 in the
  teacher-forced replays, which patch the same positions at once); positions the source's window
  does not have are left as they are.  A decoder source is decoded greedily (``--num-beams 1``: a
  beam search's rows are beams generate() reorders step by step, no one sequence); every beam of
  the patched clip takes it.  With ``heads`` only those heads are patched: their slices of
  the attention's ``out_proj`` input, the point ``...attn.hook_z`` / ``...cross_attn.hook_z``
  (give it, or the attention's output point ``...hook_attn_out`` / ``...hook_cross_attn_out``,
  which is read as its ``hook_z``; the source must have recorded the ``hook_z``).  Patching a clip
  into itself changes nothing; patching the whole encoder output (``encoder.hook_ln_final``) from
  clip B into clip A decodes what B decodes; a decoder patch leaves the encoder as it was;
- ``replace`` (Python only): ``function(point, tensor) -> tensor`` returns what the model uses at
  a hook point instead, for interventions of one's own.

Shapes (see :mod:`probe.points`): out_proj's input [batch, position, head × head_dim] (head-major);
steered tensors [batch, position, d_model]; a patch source's decoder record [1, position, width],
every window's positions one after another.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from probe.errors import OptionError
from probe.points import INPUT, OUTPUT, PATTERN, HookPoint, list_points

# attention kind → (module path of layer i, config key of its head count, config key of its layer count)
ATTENTION = {
    "encoder.self_attn": ("model.encoder.layers.{layer}.self_attn", "encoder_attention_heads", "encoder_layers"),
    "decoder.self_attn": ("model.decoder.layers.{layer}.self_attn", "decoder_attention_heads", "decoder_layers"),
    "decoder.cross_attn": ("model.decoder.layers.{layer}.encoder_attn", "decoder_attention_heads", "decoder_layers"),
}
KINDS = ("ablate", "steer", "local", "block", "patch", "replace")
FRAME_SECONDS = 0.02  # one encoder frame
MEL_FRAMES_PER_SECOND = 100  # a window's seek is counted in log-Mel frames


@dataclass(frozen=True)
class Ablate:
    """Zero ``heads`` of the ``attention`` kind (:data:`ATTENTION`) in block ``layer`` — or, with
    ``mean_of`` (reference traces: ids, names or folders in ``store``), set each to its mean over
    those traces (:func:`prepare` computes ``means`` from their audio and tokens)."""

    attention: str
    layer: int
    heads: tuple[int, ...]
    mean_of: tuple[str, ...] = ()
    store: str | None = None
    means: tuple[tuple[float, ...], ...] | None = field(default=None, compare=False)  # [head][head_dim]

    def to_dict(self) -> dict:
        found = {"kind": "ablate", "attention": self.attention, "layer": self.layer, "heads": list(self.heads)}
        return {**found, "mean_of": list(self.mean_of)} if self.mean_of else found


@dataclass(frozen=True)
class Steer:
    """Add ``alpha · vector`` at hook point ``point`` (``vector``: [d_model], or [vocab] at the logits)."""

    point: str
    vector: tuple[float, ...]
    alpha: float = 1.0

    def to_dict(self) -> dict:
        return {"kind": "steer", "point": self.point, "alpha": self.alpha, "vector": list(self.vector)}


@dataclass(frozen=True)
class Local:
    """Encoder self-attention of ``layers`` (None: all) sees only frames within ±``k`` of each frame."""

    k: int
    layers: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {"kind": "local", "k": self.k, "layers": None if self.layers is None else list(self.layers)}


@dataclass(frozen=True)
class Block:
    """Cross-attention of decoder ``layers`` (None: all) cannot see the encoder frames of
    ``start``–``end`` seconds of the clip."""

    start: float
    end: float
    layers: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {"kind": "block", "start": self.start, "end": self.end,
                "layers": None if self.layers is None else list(self.layers)}


@dataclass(frozen=True)
class Patch:
    """Hook point ``point`` takes the activation trace ``source`` recorded there: at an encoder
    point over ``frames`` = (start, end) or all, at a decoder point over ``positions`` = (start,
    end) or all the source has; with ``heads`` only those heads' slices of an attention's
    ``out_proj`` input (its ``hook_z``, which :func:`resolve` puts in ``point``).  ``store``: where
    ``source`` is (default store if None)."""

    point: str
    source: str
    frames: tuple[int, int] | None = None
    store: str | None = None
    positions: tuple[int, int] | None = None
    heads: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        found: dict[str, Any] = {"kind": "patch", "point": self.point, "source": self.source}
        if self.positions is not None or not self.point.startswith("encoder."):
            found["positions"] = None if self.positions is None else list(self.positions)
        else:
            found["frames"] = None if self.frames is None else list(self.frames)
        return {**found, "heads": list(self.heads)} if self.heads is not None else found


@dataclass(frozen=True)
class Replace:
    """What ``function(point, tensor)`` returns is used at hook point ``point`` instead of ``tensor``
    (same shape and dtype); ``name`` is what the manifest calls it."""

    point: str
    function: Callable[[HookPoint, torch.Tensor], torch.Tensor] = field(compare=False)
    name: str | None = None

    def to_dict(self) -> dict:
        label = self.name or getattr(self.function, "__qualname__", repr(self.function))
        return {"kind": "replace", "point": self.point, "function": label}


Intervention = Ablate | Steer | Local | Block | Patch | Replace


def load_spec(spec: str | Path) -> list[dict]:
    """The interventions of ``--intervene``: a JSON file, or JSON text; a list of objects, one
    object, or ``{"interventions": [...]}``."""
    text = str(spec)
    path = Path(text).expanduser()
    if not text.lstrip().startswith(("[", "{")):
        if not path.is_file():
            raise OptionError(f"--intervene {text}: no such file; give a JSON file or inline JSON such as "
                              "'{\"kind\": \"ablate\", \"attention\": \"decoder.self_attn\", \"layer\": 0, \"heads\": [1]}'")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise OptionError(f"--intervene {spec}: cannot read it ({err}); give a UTF-8 JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise OptionError(f"--intervene: not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                          "give a list of objects with a \"kind\" each") from None
    if isinstance(data, dict) and "interventions" in data:
        data = data["interventions"]
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items):
        raise OptionError("--intervene: each intervention is a JSON object with a \"kind\" "
                          f"({', '.join(KINDS[:2])})")
    return items


def in_store(interventions: Iterable[Intervention | dict] | None, store) -> list:
    """``interventions`` with every patch that names no store of its own looking in ``store`` (the
    store the trace is written to) for its source."""
    out = []
    for item in interventions or ():
        if isinstance(item, dict) and item.get("kind") in ("patch", "steer", "ablate") and item.get("store") is None:
            item = {**item, "store": str(store)}
        elif isinstance(item, Patch) and item.store is None:
            item = dataclasses.replace(item, store=str(store))
        elif isinstance(item, Ablate) and item.mean_of and item.store is None:
            item = dataclasses.replace(item, store=str(store))
        out.append(item)
    return out


def resolve(config, interventions: Iterable[Intervention | dict] | None, model_id: str | None = None) \
        -> list[Intervention]:
    """``interventions`` (objects or dicts) checked against a model with this ``WhisperConfig``
    (and, for a patch's source trace, this model id); anything wrong is a one-line
    :class:`OptionError` that says what would be right."""
    resolved = []
    points = {point.name: point for point in list_points(config)}
    for number, item in enumerate(interventions or (), start=1):
        found = _from_dict(item, number) if isinstance(item, dict) else item
        if isinstance(found, Ablate):
            _check_ablate(config, found)
            if found.mean_of:
                found = dataclasses.replace(found, mean_of=tuple(
                    str(_source_trace(ref, found.store, model_id, "ablate mean_of").path) for ref in found.mean_of))
        elif isinstance(found, Local):
            found = _check_local(config, found)
        elif isinstance(found, Block):
            _check_block(config, found)
        elif isinstance(found, Patch):
            found = _check_patch(config, points, found, model_id)
        elif isinstance(found, (Steer, Replace)):
            point = _point(points, found.point)
            if isinstance(found, Steer):
                found = _check_steer(point, found)
        else:
            raise OptionError(f"intervention {number}: {type(found).__name__} is not an intervention; use "
                              "probe.interventions.Ablate, Steer, Local, Block, Patch or Replace, or a dict with a \"kind\"")
        resolved.append(found)
    return resolved


def _from_dict(item: dict, number: int) -> Intervention:
    kind = item.get("kind")
    fields = {key: value for key, value in item.items() if key != "kind"}
    expected = {"ablate": {"attention", "layer", "heads", "mean_of", "store"}, "steer": {"point", "vector", "alpha", "store"},
                "local": {"k", "layers"}, "block": {"start", "end", "layers"},
                "patch": {"point", "source", "frames", "positions", "heads", "store"}}
    if kind not in expected:
        hint = " (replace takes a Python function: probe.run(interventions=[Replace(...)]))" if kind == "replace" else ""
        raise OptionError(f"intervention {number}: unknown kind {kind!r}; use \"ablate\", \"steer\", "
                          f"\"local\", \"block\" or \"patch\"{hint}")
    unknown = set(fields) - expected[kind]
    optional = {"alpha", "layers", "frames", "positions", "store", "mean_of"} | ({"heads"} if kind == "patch" else set())
    missing = expected[kind] - set(fields) - optional
    if kind == "steer" and isinstance(fields.get("vector"), dict):
        fields["vector"] = vector_from_traces(fields.get("store"), str(fields.get("point")), fields["vector"], number)
    if unknown or missing:
        what = f"unknown field {sorted(unknown)[0]!r}" if unknown else f"missing field {sorted(missing)[0]!r}"
        raise OptionError(f"intervention {number} ({kind}): {what}; it takes {', '.join(sorted(expected[kind]))}")
    try:
        if kind == "ablate":
            heads = fields["heads"] if isinstance(fields["heads"], list) else [fields["heads"]]
            mean_of = fields.get("mean_of") or []
            if not isinstance(mean_of, list):
                raise ValueError(mean_of)
            return Ablate(str(fields["attention"]), _integer(fields["layer"]), tuple(_integer(h) for h in heads),
                          tuple(str(ref) for ref in mean_of), fields.get("store"))
        layers = fields.get("layers")
        layers = None if layers is None else tuple(_integer(n) for n in (layers if isinstance(layers, list) else [layers]))
        if kind == "local":
            return Local(_integer(fields["k"]), layers)
        if kind == "block":
            return Block(_number(fields["start"]), _number(fields["end"]), layers)
        if kind == "patch":
            heads = fields.get("heads")
            heads = None if heads is None else tuple(_integer(h) for h in (heads if isinstance(heads, list)
                                                                             else [heads]))
            store = fields.get("store")
            return Patch(str(fields["point"]), str(fields["source"]), _span(fields.get("frames")),
                         None if store is None else str(store), _span(fields.get("positions")), heads)
        return Steer(str(fields["point"]), tuple(float(v) for v in fields["vector"]), float(fields.get("alpha", 1.0)))
    except (TypeError, ValueError):
        raise OptionError(f"intervention {number} ({kind}): layer and heads are whole numbers, vector a list of "
                          "numbers, alpha, start and end numbers, frames and positions [start, end]") from None


def _integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(value)
    return int(value)


def _span(value) -> tuple[int, int] | None:
    """``[start, end]`` of a patch's frames or positions as a pair of whole numbers (None: all)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(value)
    return _integer(value[0]), _integer(value[1])


def vector_from_traces(store, point: str, spec: dict, number: int = 1) -> list[float]:
    """A steering vector from records (see the module docstring): the mean of ``activations.<point>``
    over every position of ``spec["traces"]``, less the same over ``spec["minus"]`` if given."""
    from probe.errors import StoreError
    from probe.store import Store, default_store_dir

    unknown = set(spec) - {"traces", "minus"}
    if unknown or not isinstance(spec.get("traces"), list) or not spec["traces"]:
        raise OptionError(f"intervention {number} (steer): a vector from records is {{\"traces\": [ids], "
                          "\"minus\": [ids]}} (minus optional)")
    opened = Store(store or default_store_dir())

    def mean_of(refs: list) -> np.ndarray:
        means = []
        for ref in refs:
            try:
                trace = opened.resolve(str(ref))
            except StoreError as err:
                raise OptionError(f"steer vector: {err}") from None
            name = f"activations.{point}"
            if name not in trace.records:
                raise OptionError(f"steer vector: trace {trace.id} has no record {name}; record it with "
                                  f"probe run CLIP --points {point}")
            values = np.asarray(trace.tensor(name), dtype=np.float64)  # [..., d_model]
            means.append(values.reshape(-1, values.shape[-1]).mean(0))
        return np.mean(means, axis=0)

    vector = mean_of(spec["traces"])
    if spec.get("minus"):
        vector = vector - mean_of(list(spec["minus"]))
    return vector.tolist()


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(value)
    return float(value)


def _check_ablate(config, ablate: Ablate) -> None:
    if ablate.attention not in ATTENTION:
        raise OptionError(f"ablate: unknown attention {ablate.attention!r}; use one of {', '.join(ATTENTION)}")
    _, heads_key, layers_key = ATTENTION[ablate.attention]
    layers, heads = int(getattr(config, layers_key)), int(getattr(config, heads_key))
    if not 0 <= ablate.layer < layers:
        raise OptionError(f"ablate {ablate.attention}: layer {ablate.layer} is out of range; this model has "
                          f"layers 0–{layers - 1}")
    bad = [head for head in ablate.heads if not 0 <= head < heads]
    if bad or not ablate.heads:
        raise OptionError(f"ablate {ablate.attention} layer {ablate.layer}: head {bad[0] if bad else '(none)'} is "
                          f"out of range; this model has heads 0–{heads - 1}")


def _check_local(config, local: Local) -> Local:
    layers = int(config.encoder_layers)
    if local.k < 0:
        raise OptionError(f"local: k = {local.k}; give the frames each side a frame may attend to, 0 or more")
    bad = [n for n in local.layers or () if not 0 <= n < layers]
    if bad or local.layers == ():
        raise OptionError(f"local: encoder layer {bad[0] if bad else '(none)'} is out of range; this model has "
                          f"layers 0–{layers - 1} (leave layers out for all)")
    return local


def _check_block(config, block: Block) -> None:
    if not (math.isfinite(block.start) and math.isfinite(block.end)) or block.start < 0 or block.end <= block.start:
        raise OptionError(f"block: {block.start:g}–{block.end:g} s is not a span of the clip; give start ≥ 0 and "
                          "end > start, in seconds")
    layers = int(config.decoder_layers)
    bad = [n for n in block.layers or () if not 0 <= n < layers]
    if bad or block.layers == ():
        raise OptionError(f"block: decoder layer {bad[0] if bad else '(none)'} is out of range; this model has "
                          f"layers 0–{layers - 1} (leave layers out for all)")


def _source_trace(ref: str, store: str | None, model_id: str | None, what: str):
    """The trace ``ref`` names (a trace folder, or an id or name in ``store``), made by ``model_id``;
    else a one-line :class:`OptionError` starting with ``what``."""
    from probe.errors import StoreError
    from probe.store import Store, default_store_dir

    folder = Path(str(ref)).expanduser()
    try:
        trace = (Store(folder.parent).open(folder.name) if (folder / "manifest.json").is_file()
                 else Store(store or default_store_dir()).resolve(str(ref)))
    except StoreError as err:
        raise OptionError(f"{what} {ref}: {err}") from None
    made_by = (trace.manifest.get("model") or {}).get("id")
    if model_id is not None and made_by != model_id:
        raise OptionError(f"{what} {trace.id} was recorded with another model ({made_by}); use a trace of {model_id}")
    return trace


def prepare(loaded, interventions: list[Intervention]) -> list[Intervention]:
    """``interventions`` with what needs the model worked out: each mean ablation's per-head means,
    from its reference traces' audio (first window) and, for decoder attentions, their tokens."""
    return [_with_means(loaded, item) if isinstance(item, Ablate) and item.mean_of and item.means is None else item
            for item in interventions]


def _with_means(loaded, ablate: Ablate) -> Ablate:
    from probe import hooks as hooks_mod
    from probe.store import Store

    model = loaded.model
    attention = model.get_submodule(ATTENTION[ablate.attention][0].format(layer=ablate.layer))
    width = attention.out_proj.in_features
    head_dim = width // int(getattr(model.config, ATTENTION[ablate.attention][1]))
    total, count = torch.zeros(width, dtype=torch.float64), 0

    def keep(module, args):
        nonlocal total, count
        mixed = args[0].reshape(-1, width)  # [position, head × head_dim]
        total += mixed.double().sum(0).cpu()
        count += mixed.shape[0]

    for path in ablate.mean_of:
        trace = Store(Path(path).parent).open(Path(path).name)
        samples, _ = trace.audio(0.0, 30.0)
        features = loaded.processor.feature_extractor(samples, sampling_rate=16000, return_tensors="pt"
                                                      ).input_features.to(loaded.device, loaded.dtype)
        window = (trace.manifest.get("windows") or [{}])[0]
        ids = torch.tensor([list(window.get("prompt") or []) + list(window.get("tokens") or [])],
                           device=loaded.device)  # [1, query]
        with torch.inference_mode(), hooks_mod.Hooks(model) as hooks:
            hooks.forward_pre(attention.out_proj, keep)
            encoded = model.model.encoder(features).last_hidden_state  # [1, frame, d_model]
            if ablate.attention.startswith("decoder") and ids.shape[1]:
                model.model.decoder(input_ids=ids, encoder_hidden_states=encoded)
    mean = (total / max(count, 1)).float()  # [head × head_dim]
    means = tuple(tuple(mean[h * head_dim:(h + 1) * head_dim].tolist()) for h in ablate.heads)
    return dataclasses.replace(ablate, means=means)


def _check_patch(config, points: dict[str, HookPoint], patch: Patch, model_id: str | None) -> Patch:
    """The patch with its point and source checked: the point exists (with ``heads``: an
    attention's output or ``hook_z``, read as its ``hook_z``), frames go with encoder points and
    positions with decoder ones, the source trace exists, was made by this model and holds
    ``activations.<point>`` as [window, frame, width] (encoder) or [1, position, width] — decoded
    greedily, laid out by its ``activations.steps`` — (decoder), and the span lies inside it."""
    point = _point(points, patch.point)
    if patch.heads is not None:
        point = _head_point(config, points, point, patch.heads)
    if point.side == "encoder" and patch.positions is not None:
        raise OptionError(f"patch {point.name}: positions are for decoder points; give frames [start, end) "
                          "for an encoder point")
    if point.side == "decoder" and patch.frames is not None:
        raise OptionError(f"patch {point.name}: frames are for encoder points; give positions [start, end) "
                          "for a decoder point")
    trace = _source_trace(patch.source, patch.store, model_id, "patch source")
    name = f"activations.{point.name}"
    entry = trace.records.get(name)
    if entry is None:
        raise OptionError(f"patch source {trace.id} has no record {name}; record it with "
                          f"probe run CLIP --points {point.name} --activations-dtype float32")
    shape = list(entry.get("shape") or [])
    axes = "[window, frame," if point.side == "encoder" else "[batch, query,"
    if len(shape) != 3 or shape[-1] != point.sizes[-1]:
        raise OptionError(f"patch source {trace.id}: {name} has shape {shape}, not {axes} "
                          f"{point.sizes[-1]}] of this model's {point.name}")
    if point.side == "encoder":
        span, what, length = patch.frames, "frames", shape[1]
    elif shape[0] != 1:
        raise OptionError(f"patch source {trace.id} was decoded with beam search ({shape[0]} beams), whose rows "
                          "generate() reorders step by step; record the source with --num-beams 1")
    else:
        span, what, length = patch.positions, "positions", max(n for _, n in _window_positions(trace, name, shape[1]))
    if span is not None and not 0 <= span[0] < span[1] <= length:
        raise OptionError(f"patch {what} {list(span)}: give [start, end) within the source's {length} {what}")
    return dataclasses.replace(patch, point=point.name, source=str(trace.path))


# an attention's output point → its out_proj input (the heads side by side), by the name's last part
HEADS_AT = {"hook_attn_out": "attn.hook_z", "hook_cross_attn_out": "cross_attn.hook_z"}


def _head_point(config, points: dict[str, HookPoint], point: HookPoint, heads: tuple[int, ...]) -> HookPoint:
    """The ``hook_z`` point whose ``heads`` a patch replaces: ``point`` itself, or the ``hook_z`` of
    the attention whose output ``point`` is; the heads checked against that attention's count."""
    prefix, _, last = point.name.rpartition(".")
    if not point.name.endswith(".hook_z"):
        if last not in HEADS_AT:
            raise OptionError(f"patch {point.name}: heads are patched at an attention; give heads with "
                              "*.hook_attn_out, *.hook_cross_attn_out or *.hook_z, or leave heads out")
        point = points[f"{prefix}.{HEADS_AT[last]}"]
    count = int(config.encoder_attention_heads if point.side == "encoder" else config.decoder_attention_heads)
    bad = [head for head in heads if not 0 <= head < count]
    if bad or not heads:
        raise OptionError(f"patch {point.name}: head {bad[0] if bad else '(none)'} is out of range; this model "
                          f"has heads 0–{count - 1}")
    return point


def _window_positions(trace, name: str, recorded: int) -> list[tuple[int, int]]:
    """(window, positions) of each window a decoder record holds, in its order: the activations
    plugin's ``activations.steps`` summed per window; they must add up to the ``recorded`` positions."""
    if "activations.steps" not in trace.records:
        raise OptionError(f"patch source {trace.id} has no record activations.steps, which says where each "
                          f"window's positions are in {name}; re-record it with the activations plugin")
    windows: dict[int, int] = {}
    for row in trace.table("activations.steps"):
        windows[int(row["window"])] = windows.get(int(row["window"]), 0) + int(row["positions"])
    if sum(windows.values()) != recorded or not windows:
        raise OptionError(f"patch source {trace.id}: {name} has {recorded} positions but its activations.steps "
                          f"{sum(windows.values())}; re-record it with --points and the default --activations full")
    return list(windows.items())


def _point(points: dict[str, HookPoint], name: str) -> HookPoint:
    point = points.get(name)
    if point is None:
        from probe.points import _suggest

        raise OptionError(f"intervention at unknown hook point {name!r}; {_suggest(name, list(points.values()))}"
                          " (`probe points` lists them all)")
    if point.kind == PATTERN:
        raise OptionError(f"{name} is an attention pattern, which the model does not read back; ablate its heads "
                          "(kind \"ablate\") or intervene at the attention's output point instead")
    if point.gelu:
        raise OptionError(f"{name} is seen after a GELU the module does not return; intervene at "
                          "encoder.hook_embed (the conv stem's output with positions) instead")
    return point


def _check_steer(point: HookPoint, steer: Steer) -> Steer:
    width = point.sizes[-1]
    if len(steer.vector) != width:
        raise OptionError(f"steer {point.name}: the vector has {len(steer.vector)} numbers; this point's last axis "
                          f"({point.shape[-1]}) has {width}")
    if not all(math.isfinite(v) for v in (*steer.vector, steer.alpha)):
        raise OptionError(f"steer {point.name}: vector and alpha must be finite numbers")
    return steer


# --------------------------------------------------------------------------- hooks


def apply(hooks, model: torch.nn.Module, interventions: Iterable[Intervention], config=None,
          seeks: Callable[[], list[int] | None] | None = None) -> None:
    """Register every intervention's hook in ``hooks`` (a :class:`probe.hooks.Hooks`); call it before
    the capture hooks, so that they see the changed tensors.  ``seeks()`` gives the log-Mel frame
    where each row of the current decoder batch's window starts (None or absent: every window
    starts the clip); a time-span ``block`` places its frames by it, a ``patch`` its source's window."""
    points = {point.name: point for point in list_points(config or model.config)}
    interventions = list(interventions)
    start = _QueryStart()
    if any(isinstance(item, Patch) and points[item.point].side == "decoder" for item in interventions):
        hooks.forward_pre(model.model.decoder, start.hook, with_kwargs=True)
    for item in interventions:
        if isinstance(item, Ablate):
            attention = model.get_submodule(ATTENTION[item.attention][0].format(layer=item.layer))
            head_dim = attention.out_proj.in_features // int(getattr(model.config, ATTENTION[item.attention][1]))
            hooks.forward_pre(attention.out_proj, _ablate_hook(item.heads, head_dim, item.means))
        elif isinstance(item, Local):
            layers = range(int(model.config.encoder_layers)) if item.layers is None else item.layers
            for layer in layers:
                hooks.forward_pre(model.model.encoder.layers[layer].self_attn, _local_hook(item.k), with_kwargs=True)
        elif isinstance(item, Block):
            layers = range(int(model.config.decoder_layers)) if item.layers is None else item.layers
            hook = _block_hook(item, int(model.config.max_source_positions), seeks or (lambda: None))
            for layer in layers:
                hooks.forward_pre(model.model.decoder.layers[layer].encoder_attn, hook, with_kwargs=True)
        else:
            point = points[item.point]
            if isinstance(item, Steer):
                change = _steer_change(item)
            elif isinstance(item, Patch):
                change = _patch_change(item, seeks or (lambda: None), _head_columns(item, point, model.config),
                                       start.value if point.side == "decoder" else (lambda: 0))
            else:
                change = _replace_change(item, point)
            module = model.get_submodule(point.module)
            if point.kind == OUTPUT:
                hooks.forward(module, _output_change(change))
            elif point.kind == INPUT:
                hooks.forward_pre(module, _input_change(change), with_kwargs=True)


def _ablate_hook(heads: tuple[int, ...], head_dim: int, means=None):
    """Each head's slice of out_proj's input set to 0, or to its mean (``means[i]`` for ``heads[i]``)."""
    placed: dict[tuple, list[torch.Tensor]] = {}

    def hook(module, args):
        mixed = args[0].clone()  # [batch, position, head × head_dim]
        if means is not None:
            key = (mixed.device, mixed.dtype)
            if key not in placed:
                placed[key] = [torch.tensor(m, device=mixed.device, dtype=mixed.dtype) for m in means]
        for i, head in enumerate(heads):
            mixed[..., head * head_dim:(head + 1) * head_dim] = 0 if means is None else placed[(mixed.device, mixed.dtype)][i]
        return (mixed, *args[1:])
    return hook


def _local_hook(k: int):
    """Hand the encoder self-attention an additive mask [1, 1, frame, frame]: 0 within ±k, the
    dtype's lowest number outside (-inf would make a fully masked row NaN; none is, but safe).
    Made once per (frames, device, dtype) and reused by every layer and window."""
    masks: dict[tuple, torch.Tensor] = {}

    def band(frames: int, device, dtype) -> torch.Tensor:
        key = (frames, device, dtype)
        if key not in masks:
            position = torch.arange(frames, device=device)
            outside = (position[:, None] - position[None, :]).abs() > k  # [frame, frame]
            masks[key] = torch.zeros(frames, frames, dtype=dtype, device=device).masked_fill(
                outside, torch.finfo(dtype).min)[None, None]
        return masks[key]

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # [batch, frame, d_model]
        mask = band(hidden.shape[1], hidden.device, hidden.dtype)
        given = kwargs.get("attention_mask")
        return args, {**kwargs, "attention_mask": mask if given is None else given + mask}
    return hook


def touches_encoder(interventions: Iterable[Intervention], config) -> bool:
    """Whether any of ``interventions`` changes what the encoder computes (otherwise a window's
    encoder output can be shared between a clean and an intervened pass)."""
    points = {point.name: point for point in list_points(config)}
    for item in interventions:
        if isinstance(item, Local) or (isinstance(item, Ablate) and item.attention.startswith("encoder")):
            return True
        if isinstance(item, (Steer, Replace, Patch)) and points[item.point].side == "encoder":
            return True
    return False


def blocked_frames(block: Block, seek: int, frames: int) -> tuple[int, int]:
    """The encoder frames [first, last) of a window starting at log-Mel frame ``seek`` that
    ``block``'s seconds touch (an empty range when the span misses the window)."""
    start = seek / MEL_FRAMES_PER_SECOND  # seconds of the clip where the window starts
    first = min(frames, max(0, math.floor((block.start - start) / FRAME_SECONDS + 1e-9)))
    last = min(frames, math.ceil((block.end - start) / FRAME_SECONDS - 1e-9))
    return first, max(first, last)


def _block_hook(block: Block, frames: int, seeks: Callable[[], list[int] | None]):
    """Hand the cross-attention an additive mask [batch, 1, 1, frame]: the dtype's lowest number on
    the frames :func:`blocked_frames` gives for each row's window, 0 elsewhere (beams: each row's
    mask repeated for its beams).  Made once per (seeks, batch, device, dtype)."""
    masks: dict[tuple, torch.Tensor] = {}

    def mask_for(rows: tuple[int, ...], batch: int, keys: int, device, dtype) -> torch.Tensor:
        key = (rows, batch, keys, device, dtype)
        if key not in masks:
            mask = torch.zeros(len(rows), keys, dtype=dtype, device=device)
            for row, seek in enumerate(rows):
                first, last = blocked_frames(block, seek, keys)
                mask[row, first:last] = torch.finfo(dtype).min
            masks[key] = mask.repeat_interleave(batch // len(rows), dim=0)[:, None, None, :]
        return masks[key]

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # [batch, query, d_model]
        rows = tuple(seeks() or ())
        if not rows or hidden.shape[0] % len(rows):
            rows = (rows[0] if rows else 0,) * hidden.shape[0]  # one window for every row
        states = kwargs.get("key_value_states")  # [batch, frame, d_model] (the encoder output)
        keys = states.shape[1] if isinstance(states, torch.Tensor) else frames
        mask = mask_for(rows, hidden.shape[0], keys, hidden.device, hidden.dtype)
        given = kwargs.get("attention_mask")
        return args, {**kwargs, "attention_mask": mask if given is None else given + mask}
    return hook


def _steer_change(steer: Steer) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tensor + alpha · vector``, the scaled vector made once per device and dtype."""
    if steer.alpha == 0:
        return lambda tensor: tensor
    scaled = steer.alpha * torch.tensor(steer.vector, dtype=torch.float32)  # [d_model]
    placed: dict[tuple, torch.Tensor] = {}

    def change(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.device, tensor.dtype)
        if key not in placed:
            placed[key] = scaled.to(device=tensor.device, dtype=tensor.dtype)
        return tensor + placed[key]
    return change


class _QueryStart:
    """Where along the sequence the decoder call now running starts: the length of the key/value
    cache it is handed (generate(): the whole prompt at 0, then one position a step), 0 without one
    (the teacher-forced passes, the whole sequence at once).  Its :meth:`hook` is the decoder's
    forward pre-hook."""

    def __init__(self):
        self.position = 0

    def hook(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None:
            self.position = 0
        elif hasattr(cache, "get_seq_length"):
            self.position = int(cache.get_seq_length())
        else:  # a legacy tuple cache: ((self key [batch, head, position, head_dim], ...), ...)
            self.position = int(cache[0][0].shape[-2]) if len(cache) else 0

    def value(self) -> int:
        return self.position


@functools.lru_cache(maxsize=4)
def _patch_source(path: str, point: str) -> tuple[list[torch.Tensor], list[int]]:
    """A patch source's recorded activation per window — [frame, width] at an encoder point,
    [position, width] at a decoder point (its steps' positions put back together, see
    :func:`_window_positions`) — and where each of those windows starts (seek): read once, not
    again for every generate() call or teacher-forced window."""
    from probe.store import Store

    trace = Store(Path(path).parent).open(Path(path).name)
    name = f"activations.{point}"
    recorded = torch.as_tensor(trace.tensor(name))
    seek_of = {int(w.get("index", i)): int(w.get("seek") or 0)
               for i, w in enumerate(trace.manifest.get("windows") or [])}
    if point.startswith("encoder."):  # [window, frame, width]
        windows = list(recorded.unbind(0))
        indices = list(range(len(windows)))
    else:  # [1, position, width]: every window's positions one after another
        lengths = _window_positions(trace, name, recorded.shape[1])
        windows = list(recorded[0].split([n for _, n in lengths]))
        indices = [window for window, _ in lengths]
    return windows, [seek_of.get(i, 0) for i in indices]


def _head_columns(patch: Patch, point: HookPoint, config) -> list[slice]:
    """The columns of the last axis a patch replaces: each of its heads' slice of the
    [..., head × head_dim] out_proj input, or all of it."""
    if patch.heads is None:
        return [slice(None)]
    head_dim = point.sizes[-1] // int(config.encoder_attention_heads if point.side == "encoder"
                                      else config.decoder_attention_heads)
    return [slice(head * head_dim, (head + 1) * head_dim) for head in patch.heads]


def _row_seeks(seeks: Callable[[], list[int] | None], batch: int) -> list[int]:
    """Where the window of each of ``batch`` rows (clips × beams, clip-major) starts (seek)."""
    rows = list(seeks() or [0])
    if batch % len(rows):
        rows = [rows[0]] * batch  # one window for every row
    return [seek for seek in rows for _ in range(batch // len(rows))]


def _patch_change(patch: Patch, seeks: Callable[[], list[int] | None], columns: list[slice],
                  start: Callable[[], int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Each row's tensor takes, over the patch's frames or positions, ``columns`` of the source's
    window that starts where the row's does (else the last starting before): ``start()`` is where
    the tensor's second axis starts (a decoder call's first position; 0 at the encoder), and what
    the source's window lacks is left as it is.  Every beam of a clip takes the same window."""
    windows, starts = _patch_source(patch.source, patch.point)
    first, last = patch.frames or patch.positions or (0, max(window.shape[0] for window in windows))
    placed: dict[tuple, list[torch.Tensor]] = {}

    def source_window(seek: int) -> int:
        before = [i for i, begins in enumerate(starts) if begins <= seek]
        return starts.index(seek) if seek in starts else (before[-1] if before else 0)

    def change(tensor: torch.Tensor) -> torch.Tensor:  # [batch, frame | query, width]
        key = (tensor.device, tensor.dtype)
        if key not in placed:
            placed[key] = [window.to(tensor.device, tensor.dtype) for window in windows]
        offset, out = start(), None
        for row, seek in enumerate(_row_seeks(seeks, tensor.shape[0])):
            source = placed[key][source_window(seek)]  # [frame | position, width]
            lo, hi = max(first, offset), min(last, offset + tensor.shape[1], source.shape[0])
            if lo >= hi:
                continue
            out = tensor.clone() if out is None else out
            for cols in columns:
                out[row, lo - offset:hi - offset, cols] = source[lo:hi, cols]
        return tensor if out is None else out
    return change


def _replace_change(replace: Replace, point: HookPoint) -> Callable[[torch.Tensor], torch.Tensor]:
    def change(tensor: torch.Tensor) -> torch.Tensor:
        out = replace.function(point, tensor)
        if not isinstance(out, torch.Tensor) or out.shape != tensor.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise OptionError(f"replace at {point.name}: the function returned {got}, not a tensor of shape "
                              f"{tuple(tensor.shape)}")
        return out.to(device=tensor.device, dtype=tensor.dtype)
    return change


def _output_change(change: Callable[[torch.Tensor], torch.Tensor]):
    def hook(module, args, output):
        if isinstance(output, (tuple, list)):
            return type(output)([change(output[0]), *output[1:]])
        return change(output)
    return hook


def _input_change(change: Callable[[torch.Tensor], torch.Tensor]):
    def hook(module, args, kwargs):
        if args:
            return (change(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}
    return hook


def describe(interventions: list[dict]) -> str:
    """One line for ``probe show``: what a trace's interventions were."""
    parts = []
    for item in interventions:
        if item.get("kind") == "ablate":
            mean = f" to their mean over {len(item['mean_of'])} trace(s)" if item.get("mean_of") else ""
            parts.append(f"ablate {item['attention']} layer {item['layer']} heads {item['heads']}{mean}")
        elif item.get("kind") == "steer":
            parts.append(f"steer {item['point']} by {item['alpha']:g}·v")
        elif item.get("kind") == "patch":
            what = "positions" if item.get("positions") is not None else "frames"
            span = "" if item.get(what) is None else f" {what} {item[what][0]}–{item[what][1]}"
            heads = "" if item.get("heads") is None else f" heads {item['heads']}"
            parts.append(f"patch {item['point']}{heads}{span} from {Path(str(item['source'])).name}")
        elif item.get("kind") == "block":
            where = "every layer" if item.get("layers") is None else f"layers {item['layers']}"
            parts.append(f"cross-attention blind to {item['start']:g}–{item['end']:g} s ({where})")
        elif item.get("kind") == "local":
            where = "every layer" if item.get("layers") is None else f"layers {item['layers']}"
            parts.append(f"encoder self-attention within ±{item['k']} frames ({where})")
        else:
            parts.append(f"{item.get('kind')} {item.get('point', '')} ({item.get('function', '')})".strip())
    return "; ".join(parts)


def summary(interventions: list[Intervention]) -> list[dict[str, Any]]:
    """The manifest's ``interventions``: each one as JSON."""
    return [item.to_dict() for item in interventions]
