"""The background thread that writes traces' files while decoding goes on: :class:`WriteQueue`."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class WriteQueue:
    """One background thread that writes traces' files, in the order they were handed over.

    Trace writers given the queue (``store.writer(name, queue=q)``) return from ``add_*`` as soon
    as the record is registered, and their commit is queued too, so decoding goes on while the
    files are written, fsynced and published.  The thread runs file I/O and the record functions
    plugins hand over (``add_json(name, function)``: the cross_attention plugin's DTW, the audio's
    FLAC encoding), never a plugin hook, so Ctrl-C still lands in the code that was running.  :meth:`close` (or leaving the
    ``with`` block) waits for every queued job: finished traces are published, aborted ones removed.
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-store-writer")

    def submit(self, job: Callable[[], Any]) -> Future:
        return self._executor.submit(job)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> WriteQueue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

