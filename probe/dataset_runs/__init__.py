"""Dataset runs: every row of a dataset traced into the store, resumably, on one of two engines.

- :mod:`probe.dataset_runs.identity` — :class:`RunIdentity`: what makes two runs the same run, and
  each row's deterministic trace id, so a rerun skips rows already traced and two different runs
  into one store never share a trace.
- :mod:`probe.dataset_runs.outcome` — :class:`RowOutcome` and :class:`RunReport`: what happened to
  each row (traced, already in the store, failed) and the summary a run prints at the end.
- :mod:`probe.dataset_runs.setup` — :class:`TracerSetup`: everything a tracer is made of, as plain
  values a Ray actor can rebuild one from (model spec, plugins, options).
- :mod:`probe.dataset_runs.local` — the in-process engine (the default): rows decoded and traced in
  this process, batched like any ``probe run``.
- :mod:`probe.dataset_runs.ray_engine` — ``--engine ray``: Ray Data's batch-inference pattern —
  rows read by read tasks, audio decoded and log-Mel made in CPU tasks, traced by an actor pool
  that loads the model once per actor (``num_gpus`` per actor on GPU nodes), streaming.

A corrupt row is reported and the others are traced; a row's trace appears whole or not at all
(:mod:`probe.store.writer`), so a worker killed mid-row leaves nothing but a hidden stage that the
engine's retry replaces.
"""

from probe.dataset_runs.identity import RunIdentity
from probe.dataset_runs.outcome import RowOutcome, RunReport
from probe.dataset_runs.setup import TracerSetup

__all__ = ["RowOutcome", "RunIdentity", "RunReport", "TracerSetup"]
