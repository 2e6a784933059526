"""Copies between host and device that keep out of decoding's way: pinned memory, non-blocking.

Plugins move what they keep off the GPU as each window ends (so a long input does not pile up on
the device) and the trace writer copies records to host before writing them.  On a CUDA device
:func:`to_host` allocates pinned (page-locked) host memory, queues the copy on the current stream
without blocking the calling thread, and records an event; :meth:`HostCopy.wait` blocks on that
event only when the data is read — typically at the end of the run or on the writer thread.  A CPU
tensor is handed back as it is (no copy).  :func:`to_device` is the other direction for the small
index lists plugins build (token ids): a plain ``torch.tensor(ids, device="cuda")`` copies from
pageable memory, which waits for everything already queued on the GPU.
"""

from __future__ import annotations

import torch


class HostCopy:
    """A tensor on its way to host memory; :meth:`wait` returns it once it is there."""

    def __init__(self, tensor: torch.Tensor):
        tensor = tensor.detach()
        self.shape, self.dtype = tuple(tensor.shape), tensor.dtype
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)  # after whatever the stream has queued
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.cpu()  # CPU: the same tensor; other devices: a blocking copy

    def wait(self) -> torch.Tensor:
        """The host tensor (pinned on CUDA), after the copy has finished."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host


def to_host(tensor: torch.Tensor) -> HostCopy:
    """Start copying ``tensor`` to host memory; ``.wait()`` on the result gives the host tensor."""
    return HostCopy(tensor)


def to_device(values, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``; on CUDA through pinned memory, without blocking."""
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)  # the pinned block is kept until copied
    return host.to(device)
