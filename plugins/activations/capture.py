"""Built-in plugin ``activations``: tensors at chosen hook points, whole or summarised.

Points named with ``--points`` (``run.points``) are kept whole, in float16 by default
(``plugin_options["activations_dtype"]``), or as summaries when ``activations_mode`` is
``"summary"``.  With no points named it records the lecture set: the conv stem (``encoder.hook_conv1``,
``encoder.hook_conv2``, first window), the encoder's output (``encoder.hook_ln_final``, what the
decoder cross-attends to: [window, 1500, d_model] of every window, about 1.5 MB per window for base
in float16; a long run keeps it on disk until the trace is written) and per-position residual norms
of every block — the decoder's from the replay of the chosen sequence (one capture per layer and
window, not one per generation step: per-step hooks on every layer would cost a GPU decoding loop
several percent).

Layout of the records (``activations.<point name>``):
- encoder points: ``[window, *shape without batch]``;
- decoder points (seen during generation): every step's positions concatenated along the
  ``query`` axis, windows one after another, ``[batch(beam), *rest]``; attention keys are padded
  with zeros to the longest step.  ``activations.steps`` (table) says which window and step each
  query position came from.
- summaries: ``activations.<point>.norm`` — the L2 norm over ``d_model`` per position; the lecture
  set's decoder norms are ``[1, position]`` over each window's whole sequence (prompt, generated
  tokens, and the last token's own position), windows one after another (``meta["positions"]``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probe.hookspecs import hookimpl
from probe.points import select_points
from probe.spill import Concatenated, Spilled
from probe.transfer import HostCopy, to_host

from probe.plugins.activations.present import Presentation

__version__ = Presentation.__version__
ENCODER_OUTPUT = "encoder.hook_ln_final"  # [batch, frame, d_model]: the lecture set keeps it for every window
LECTURE_FULL = ["encoder.hook_conv1", "encoder.hook_conv2", ENCODER_OUTPUT]
LECTURE_SUMMARY = ["encoder.blocks.*.hook_resid_post", "decoder.blocks.*.hook_resid_post"]
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def point_bytes(point, n_windows: int, n_tokens: int, num_beams: int, dtype_bytes: int) -> int:
    """Bytes a whole capture of ``point`` takes for ``n_windows`` windows of ``n_tokens`` tokens."""
    sizes = dict(zip(point.shape[1:], point.sizes[1:]))
    if point.side == "encoder":
        return int(np.prod(list(sizes.values()))) * n_windows * dtype_bytes
    per_query = int(np.prod([n_tokens if axis == "key" else size for axis, size in sizes.items() if axis != "query"]))
    return per_query * n_tokens * n_windows * num_beams * dtype_bytes


class Plugin(Presentation):
    """Every hook of activations: the run hooks here, what it shows from :class:`Presentation`."""

    @hookimpl
    def probe_addoption(self, parser):
        parser.addoption("--activations", dest="activations_mode", choices=["full", "summary"], default="full",
                         help="keep --points whole (float16) or as per-position norms")
        parser.addoption("--activations-dtype", choices=sorted(DTYPES), default="float16",
                         help="dtype whole --points are kept in")

    @hookimpl
    def probe_run_start(self, run):
        mode = run.option("activations_mode", "full")
        if run.points:
            full = run.points if mode == "full" else []
            summary = run.points if mode == "summary" else []
        else:
            full, summary = LECTURE_FULL, LECTURE_SUMMARY
        run.state[self.name] = {
            "full": {p.name for p in select_points(run.config, full)},
            "summary": {p.name for p in select_points(run.config, summary)},
            "default_set": not run.points,
            # the lecture set's decoder summaries come from the replay, one capture per layer and window
            "replayed": ({p.name for p in select_points(run.config, LECTURE_SUMMARY) if p.side == "decoder"}
                         if not run.points else set()),
            "captured": {},
            "positions": {},  # replayed point → positions per window
            "decoder_summary": {},  # point → [(window, step, tensor)] this window, reduced at window end
            "steps": [],
            "dtype": DTYPES[run.option("activations_dtype", "float16")],
        }
        state = run.state[self.name]
        decoder_names = sorted(n for n in state_names(state) - state["replayed"] if not n.startswith("encoder"))
        run.state[self.name]["step_point"] = decoder_names[0] if decoder_names else None

    @hookimpl
    def probe_estimate(self, run):
        state = run.state[self.name]
        dtype_bytes = torch.finfo(state["dtype"]).bits // 8
        estimate = {f"activations.{p.name}": point_bytes(p, _windows_kept(state, p.name, len(run.window_spans)),
                                                        run.expected_tokens, run.options.num_beams, dtype_bytes)
                    for p in select_points(run.config, sorted(state["full"]))}
        estimate.update({f"activations.{p.name}.norm": point_bytes(p, len(run.window_spans), run.expected_tokens,
                                                                  run.options.num_beams, 4) // p.sizes[-1]
                         for p in select_points(run.config, sorted(state["summary"]))})
        return estimate

    @hookimpl
    def probe_decode_points(self, run):
        state = run.state[self.name]
        return sorted(state_names(state) - state["replayed"])

    @hookimpl
    def probe_replay_points(self, run):
        return sorted(run.state[self.name]["replayed"])

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        state = run.state[self.name]
        if ctx.phase == "replay":  # [1, query, d_model]: the window's whole sequence, padding cut off
            norms = tensor[:, :len(ctx.tokens)].float().norm(dim=-1)  # [1, position]
            state["captured"].setdefault(point.name, []).append((ctx.window, -1, norms))
            state["positions"].setdefault(point.name, []).append(len(ctx.tokens))
            return
        if point.name in state["full"]:
            if _windows_kept(state, point.name, ctx.window + 1) <= ctx.window:
                return
            kept = tensor.to(state["dtype"])
        elif point.side == "decoder":  # a step's few positions: one norm over the window's steps, at its end
            state["decoder_summary"].setdefault(point.name, []).append((ctx.window, ctx.step, tensor))
            kept = None
        else:
            kept = tensor.float().norm(dim=-1)  # [batch, position]
        if kept is not None:
            state["captured"].setdefault(point.name, []).append((ctx.window, ctx.step, kept))
        if point.name == state["step_point"]:
            state["steps"].append({"window": ctx.window, "step": ctx.step, "positions": int(tensor.shape[1])})

    @hookimpl
    def probe_window_end(self, run, window):
        """Drop steps decoded after this window's text ended (padding rows of a batched greedy run),
        then reduce the window's decoder summaries: one L2 norm over all its steps' positions."""
        state = run.state[self.name]
        greedy = run.options.num_beams == 1

        def kept(window_index, step, point_name):
            return (not greedy or window_index != window.index or step < len(window.tokens)
                    or point_name.startswith("encoder"))

        for name, items in state["captured"].items():
            items[:] = [item for item in items if kept(item[0], item[1], name)]
        state["steps"] = [row for row in state["steps"] if kept(row["window"], row["step"], "decoder")]
        summaries, state["decoder_summary"] = state["decoder_summary"], {}
        for name, items in summaries.items():
            tensors = [t for w, step, t in items if kept(w, step, name)]  # [batch(beam), position, d_model]
            if tensors:
                norms = torch.cat(tensors, dim=1).float().norm(dim=-1)  # [batch(beam), position]
                state["captured"].setdefault(name, []).append((window.index, items[0][1], norms))
        # a long run's encoder output goes to disk, window by window; the rest leaves the device without waiting
        spill = run.long and state["dtype"] != torch.bfloat16  # numpy, which writes the spill, has no bfloat16
        for name, items in state["captured"].items():
            keep = (lambda t: run.spill.put(t[:1])) if spill and name == ENCODER_OUTPUT else to_host
            items[:] = [(w, step, keep(t) if w == window.index and isinstance(t, torch.Tensor) else t)
                        for w, step, t in items]

    @hookimpl
    def probe_run_end(self, run, writer):
        state = run.state[self.name]
        points = {p.name: p for p in select_points(run.config, sorted(state_names(state)))}
        for name, items in state["captured"].items():
            point = points[name]
            summary = name not in state["full"]
            record = f"activations.{name}" + (".norm" if summary else "")
            tensors = [_on_host(t) for _, _, t in items]
            if point.side == "encoder" and any(isinstance(t, Spilled) for t in tensors):
                # [window, ...], streamed from the spilled [1, ...] parts into the trace file
                data = Concatenated([t if isinstance(t, Spilled) else t[:1] for t in tensors], axis=0,
                                    last=tensors[0].shape[-1])
                axes = ["window"] + list(point.shape[1:])
            elif point.side == "encoder":
                data = torch.stack([t[0] for t in tensors])  # [window, ...]
                axes = ["window"] + list(point.shape[1:-1] if summary else point.shape[1:])
            else:
                axis = 1 if summary else point.shape.index("query")
                data = _concat_padded(tensors, axis)
                axes = (["batch", "query"] if summary else list(point.shape))
            meta = {"axes": axes, "point": name, "summary": "l2_norm" if summary else None,
                    "windows": sorted({w for w, _, _ in items})}
            if name in state["replayed"]:
                meta.update(phase="replay", positions=state["positions"][name])
            writer.add_tensor(record, data if isinstance(data, Concatenated) else data.cpu(), plugin=self.name,
                              meta=meta)
        if state["steps"]:
            writer.add_table("activations.steps", state["steps"], plugin=self.name)


def _windows_kept(state, name: str, windows: int) -> int:
    """How many windows of point ``name`` are kept whole: every one, except the lecture set's conv
    stem, kept for the first window only (its pictures show one window)."""
    return windows if not state["default_set"] or name == ENCODER_OUTPUT else 1


def _on_host(t) -> torch.Tensor:
    return t.wait() if isinstance(t, HostCopy) else t


def state_names(state) -> set[str]:
    return state["full"] | state["summary"]


def _concat_padded(tensors: list[torch.Tensor], axis: int) -> torch.Tensor:
    """Concatenate along ``axis``, zero-padding every later axis to its largest size."""
    ndim = tensors[0].dim()
    target = [max(t.shape[d] for t in tensors) for d in range(ndim)]
    padded = []
    for t in tensors:
        pad = []
        for d in reversed(range(ndim)):
            pad += [0, 0 if d <= axis else target[d] - t.shape[d]]
        padded.append(F.pad(t, pad) if any(pad) else t)
    return torch.cat(padded, dim=axis)
