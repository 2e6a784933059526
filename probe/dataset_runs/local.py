"""The in-process engine: a dataset's rows decoded and traced in this process (the default).

Rows whose trace is already in the store are skipped before their audio is decoded; a row whose
audio cannot be decoded is reported and the run goes on; the rest go through
:func:`probe.runner.trace_clips` (batched, traces written on a background thread) under their
deterministic ids.  Anything else that fails (a plugin that raises, a full disk) stops the run with
its one-line error; traces already written stay.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Iterator

from probe.dataset_runs.outcome import FAILED, SKIPPED, TRACED, RowOutcome
from probe.errors import AudioError


def headline_rate(trace) -> float | None:
    metrics = trace.manifest.get("metrics") if trace is not None else None
    return metrics.get("error_rate") if isinstance(metrics, dict) else None


def run_local(make_tracer, opened, store, identity, batch_size: int = 1, name: str | None = None,
              clean: str | None = None) -> Iterator[tuple[RowOutcome, object, object]]:
    """Trace ``opened``'s rows into ``store``: yields ``(outcome, run, trace)`` per row (run and
    trace are None for skipped and failed rows), in row order.  ``make_tracer()`` is called once,
    when the first row to trace is met: a resumed run with nothing left loads no model."""
    from probe import runner

    ids: dict[str, tuple[str, object]] = {}
    order: deque = deque()  # row order: RowOutcome (skipped, failed) or a traced row's [source, result]

    def clips():
        for row in opened.rows():
            trace_id = identity.trace_id(row.key)
            if trace_id in store:
                order.append(RowOutcome(row.index, row.key, row.source, SKIPPED, trace_id))
                continue
            try:
                clip = row.decode()
            except AudioError as error:
                order.append(RowOutcome(row.index, row.key, row.source, FAILED, error=str(error)))
                continue
            ids[clip.source] = (trace_id, row)
            order.append([clip.source, None])
            yield clip

    def ready(finished: bool):
        while order and (finished or isinstance(order[0], RowOutcome) or order[0][1] is not None):
            head = order.popleft()
            yield (head, None, None) if isinstance(head, RowOutcome) else head[1]

    pending = clips()
    first = next(pending, None)
    if first is None:
        yield from ready(True)
        return
    traced = runner.trace_clips(make_tracer(), itertools.chain([first], pending), store, name,
                                batch_size=batch_size, clean=clean, trace_id=lambda clip: ids[clip.source][0])
    for run, trace in traced:
        _, row = ids.pop(run.clip.source)
        entry = next(item for item in order if not isinstance(item, RowOutcome) and item[0] == run.clip.source)
        entry[1] = (RowOutcome(row.index, row.key, row.source, TRACED, trace.id, transcript=run.transcript,
                               error_rate=headline_rate(trace)), run, trace)
        yield from ready(False)
    yield from ready(True)
