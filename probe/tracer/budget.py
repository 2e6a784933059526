"""The memory budget: what a trace will keep, said and checked before decoding starts.

:func:`estimate_records` asks the plugins what their records will take (``probe_estimate``) into
``run.estimate``, says so on stderr above :data:`WARN_BYTES`, and refuses a capture that would not
fit (:func:`check_budget`: all records in host memory, one window's on the device).  While
decoding, :func:`memory_budget_message` turns a device out-of-memory error into the same kind of
one-line message.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch

from probe.errors import MemoryBudgetError
from probe.plugin_manager import ask

WARN_BYTES = 256 * 2**20  # say how much a trace will keep before recording more than this


def estimate_records(pm, run, device: torch.device) -> None:
    """``run.estimate`` from the plugins' ``probe_estimate``; refuses what would not fit on ``device``."""
    estimate = run.estimate
    for sizes in ask(pm, "probe_estimate", expect=lambda r: isinstance(r, dict), run=run).values():
        estimate.update({str(name): int(size) for name, size in sizes.items()})
    total = sum(estimate.values())
    if total > WARN_BYTES:
        print(f"probe: this trace will keep about {total / 2**20:,.0f} MiB of records"
              " (probe run --dry-run lists them)", file=sys.stderr)
    check_budget(total, len(run.window_spans), device)


def available_memory(device: torch.device) -> int:
    """Bytes free now: on the GPU for a CUDA device, else host memory available to allocate."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_budget(total_bytes: int, n_windows: int, device: torch.device) -> None:
    """Refuse a capture that would not fit: all records in host memory, one window's on the device."""
    host = available_memory(torch.device("cpu"))
    if total_bytes > 0.8 * host:
        raise MemoryBudgetError(f"this capture would keep about {total_bytes / 2**30:.1f} GiB but only"
                                f" {host / 2**30:.1f} GiB of memory is free; hook fewer --points, use"
                                " --activations summary, or keep float16 (see probe run --dry-run)")
    if device.type == "cuda":
        free = available_memory(device)
        per_window = 2 * total_bytes / max(n_windows, 1)  # kept in float32 on the device until the window ends
        if per_window > 0.8 * free:
            raise MemoryBudgetError(f"one window's capture needs about {per_window / 2**30:.1f} GiB on {device}"
                                    f" but {free / 2**30:.1f} GiB is free; hook fewer --points or use"
                                    " --activations summary")


@contextmanager
def memory_budget_message(device: torch.device):
    """A device out-of-memory error becomes the one-line memory-budget message."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise MemoryBudgetError(f"the {device} ran out of memory while capturing; hook fewer --points, use"
                                " --activations summary, a smaller --batch-size, or --dtype float16") from exc
