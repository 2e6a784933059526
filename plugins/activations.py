"""Built-in plugin ``activations``: tensors at chosen hook points, whole or summarised.

Points named with ``--points`` (``run.points``) are kept whole, in float16 by default
(``plugin_options["activations_dtype"]``), or as summaries when ``activations_mode`` is
``"summary"``.  With no points named it records the lecture set: the conv stem (``encoder.hook_conv1``,
``encoder.hook_conv2``, first window) and per-position residual norms of every block.

Layout of the records (``activations.<point name>``):
- encoder points: ``[window, *shape without batch]``;
- decoder points (seen during generation): every step's positions concatenated along the
  ``query`` axis, windows one after another, ``[batch(beam), *rest]``; attention keys are padded
  with zeros to the longest step.  ``activations.steps`` (table) says which window and step each
  query position came from.
- summaries: ``activations.<point>.norm`` — the L2 norm over ``d_model`` per position.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from probe.hookspecs import hookimpl
from probe.points import select_points

__version__ = "1.0"
LECTURE_FULL = ["encoder.hook_conv1", "encoder.hook_conv2"]
LECTURE_SUMMARY = ["encoder.blocks.*.hook_resid_post", "decoder.blocks.*.hook_resid_post"]
WARN_BYTES = 256 * 2**20
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def estimate_bytes(config, points, n_windows: int, n_tokens: int, num_beams: int, dtype_bytes: int) -> int:
    """Bytes a full capture of ``points`` will take for ``n_windows`` windows of ``n_tokens`` tokens."""
    total = 0
    for point in points:
        sizes = [s if s is not None else 0 for s in point.sizes[1:]]
        if point.side == "encoder":
            total += int(np.prod(sizes)) * n_windows
        else:
            named = dict(zip(point.shape[1:], point.sizes[1:]))
            per_query = int(np.prod([n_tokens if axis == "key" else size for axis, size in named.items()
                                     if axis != "query"]))
            total += per_query * n_tokens * n_windows * num_beams
    return total * dtype_bytes


class Plugin:
    name = "activations"
    __version__ = __version__

    @hookimpl
    def probe_run_start(self, run):
        mode = run.option("activations_mode", "full")
        if run.points:
            full = run.points if mode == "full" else []
            summary = run.points if mode == "summary" else []
        else:
            full, summary = LECTURE_FULL, LECTURE_SUMMARY
        full_points = select_points(run.config, full)
        run.state[self.name] = {
            "full": {p.name for p in full_points},
            "summary": {p.name for p in select_points(run.config, summary)},
            "default_set": not run.points,
            "captured": {},
            "steps": [],
            "dtype": DTYPES[run.option("activations_dtype", "float16")],
        }
        decoder_names = sorted(n for n in state_names(run.state[self.name]) if not n.startswith("encoder"))
        run.state[self.name]["step_point"] = decoder_names[0] if decoder_names else None
        n_tokens = run.options.max_new_tokens or 224
        size = estimate_bytes(run.config, full_points, len(run.window_spans) if run.points else 1, n_tokens,
                              run.options.num_beams, torch.finfo(run.state[self.name]["dtype"]).bits // 8)
        run.state[self.name]["estimate"] = size
        if size > WARN_BYTES:
            print(f"probe: activations will keep about {size / 2**20:,.0f} MiB for {len(full_points)} point(s);"
                  " use fewer --points or --activations summary to keep less", file=sys.stderr)

    @hookimpl
    def probe_decode_points(self, run):
        state = run.state[self.name]
        return sorted(state_names(state))

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        state = run.state[self.name]
        if point.name in state["full"]:
            if state["default_set"] and ctx.window > 0:
                return
            kept = tensor.to(state["dtype"])
        else:
            kept = tensor.float().norm(dim=-1)  # [batch, position]
        state["captured"].setdefault(point.name, []).append((ctx.window, ctx.step, kept))
        if point.name == state["step_point"]:
            state["steps"].append({"window": ctx.window, "step": ctx.step, "positions": int(tensor.shape[1])})

    @hookimpl
    def probe_run_end(self, run, writer):
        state = run.state[self.name]
        points = {p.name: p for p in select_points(run.config, sorted(state_names(state)))}
        for name, items in state["captured"].items():
            point = points[name]
            summary = name not in state["full"]
            record = f"activations.{name}" + (".norm" if summary else "")
            if point.side == "encoder":
                data = torch.stack([t[0] for _, _, t in items])  # [window, ...]
                axes = ["window"] + list(point.shape[1:-1] if summary else point.shape[1:])
            else:
                axis = 1 if summary else point.shape.index("query")
                data = _concat_padded([t for _, _, t in items], axis)
                axes = (["batch", "query"] if summary else list(point.shape))
            writer.add_tensor(record, data.cpu(), plugin=self.name,
                              meta={"axes": axes, "point": name, "summary": "l2_norm" if summary else None,
                                    "windows": sorted({w for w, _, _ in items})})
        if state["steps"]:
            writer.add_table("activations.steps", state["steps"], plugin=self.name)


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
