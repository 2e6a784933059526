"""One dataset run, whichever the engine: what ``probe run --dataset`` and :func:`probe.run_dataset`
both call.  :func:`dataset_outcomes` yields each row's outcome as it comes; :func:`dataset_report`
runs it to the end (the CLI printing each row) and returns the :class:`RunReport`;
:func:`run_dataset` is that from a dataset name and keyword options."""

from __future__ import annotations

import time
from typing import Iterator

from probe.dataset_runs.outcome import RowOutcome, RunReport
from probe.errors import OptionError

ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None, workers: int, gpus_per_worker: float) -> None:
    """The engine's flags, checked before anything loads (one line each)."""
    if engine not in ENGINES:
        raise OptionError(f"unknown engine {engine!r}; use local or ray")
    if engine == "local" and (address or workers != 1 or gpus_per_worker):
        raise OptionError("--address, --workers and --gpus-per-worker are for --engine ray; add --engine ray")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OptionError(f"--workers must be a whole number ≥ 1 (got {workers!r})")
    if not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
        raise OptionError(f"--gpus-per-worker must be ≥ 0 (got {gpus_per_worker!r})")


def dataset_outcomes(setup, opened, store, engine: str = "local", pm=None, workers: int = 1,
                     gpus_per_worker: float = 0.0, address: str | None = None, batch_size: int = 1,
                     name: str | None = None, clean: str | None = None, make_tracer=None,
                     progress: bool = False) -> Iterator[tuple[RowOutcome, object, object]]:
    """``(outcome, run, trace)`` per row of ``opened`` (an :class:`~probe.audio.OpenedDataset`)
    traced into ``store`` by ``engine``; run and trace are None except for rows the local engine
    traced.  ``pm`` is the plugin manager of ``setup``'s plugins (made if None); ``make_tracer`` makes
    the local engine's tracer (default: ``setup.make``), called only if a row is left to trace."""
    check_engine(engine, address, workers, gpus_per_worker)
    if pm is None:
        from probe.plugin_manager import get_plugin_manager

        pm = get_plugin_manager(plugins=list(setup.plugins))
    identity = setup.identity(opened.spec, pm)
    if engine == "ray":
        from probe.dataset_runs.ray_engine import run_ray

        for outcome in run_ray(setup, opened, store, identity, workers=workers, gpus_per_worker=gpus_per_worker,
                               address=address, batch_size=batch_size, name=name):
            yield outcome, None, None
        return
    from probe.dataset_runs.local import run_local

    make_tracer = make_tracer or (lambda: setup.make(progress=progress))
    yield from run_local(make_tracer, opened, store, identity, batch_size=batch_size, name=name, clean=clean)


def dataset_report(setup, opened, store, engine: str = "local", on_row=None, **engine_options) -> RunReport:
    """:func:`dataset_outcomes` run to the end: the :class:`RunReport` of every row, timed;
    ``on_row(outcome, run, trace)`` sees each row as it comes (the CLI prints it)."""
    report = RunReport(engine)
    started = time.perf_counter()
    for outcome, run, trace in dataset_outcomes(setup, opened, store, engine, **engine_options):
        report.add(outcome)
        if on_row is not None:
            on_row(outcome, run, trace)
    report.seconds = time.perf_counter() - started
    return report


def run_dataset(dataset: str, model=None, plugins=(), points=(), store=None, engine: str = "local",
                config: str | None = None, split: str = "train", audio_column: str | None = None,
                text_column: str | None = None, key_column: str | None = None, limit: int | None = None,
                streaming: bool = False, workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None,
                batch_size: int = 1, device: str = "auto", dtype: str = "auto", plugin_options: dict | None = None,
                interventions=None, name: str | None = None, **decoding) -> RunReport:
    """Trace every row of ``dataset`` into ``store`` (default: the default store) and return the
    :class:`RunReport` (each row traced, already in the store, or failed, and why).

    Rows already traced by the same run (same dataset rows, model, options, plugins) are skipped, so
    calling it again continues an interrupted run.  ``engine="ray"`` runs it on Ray Data with
    ``workers`` tracer actors (``gpus_per_worker`` GPUs each) on the cluster at ``address`` (default:
    a local one).  ``text_column`` is each row's reference (WER/CER in every trace's metrics);
    ``key_column`` a column of stable row ids.  ``decoding``: :func:`probe.run`'s decoding options.
    """
    from probe.audio import DatasetSpec, OpenedDataset
    from probe.dataset_runs.setup import TracerSetup, absolute_plugin_refs
    from probe.runner import decode_options
    from probe.store import Store

    openai_defaults = decoding.pop("openai_defaults", False)
    options = decode_options(openai_defaults, **decoding)
    opened = OpenedDataset(DatasetSpec(dataset, config, split, audio_column, text_column, key_column, limit, streaming))
    setup = TracerSetup(model, options, device, dtype, absolute_plugin_refs(plugins), tuple(points),
                        dict(plugin_options or {}), list(interventions or []))
    store = store if isinstance(store, Store) else Store(store)
    return dataset_report(setup, opened, store, engine, workers=workers, gpus_per_worker=gpus_per_worker,
                          address=address, batch_size=batch_size, name=name)
