"""``probe run --dataset ... --engine ray``: a dataset run on Ray Data.

The pipeline is Ray Data's documented batch-inference pattern, streaming end to end:

1. **read** — :class:`RowSource`, a Ray ``Datasource``: read tasks open the dataset where they run
   (a map-style dataset is shared out by row ranges; a streamed one is read by one task) and emit
   rows undecoded; a row whose deterministic trace id (:mod:`probe.dataset_runs.identity`) is
   already in the store is marked ``skipped`` here, before its audio is touched;
2. **decode** — :func:`decode_rows`, CPU tasks: audio decoded to 16 kHz mono through
   :mod:`probe.audio` (a corrupt row is marked ``failed`` with its one-line reason) and, for clips of
   up to 30 s, the log-Mel features made by the model's own feature extractor;
3. **trace** — :class:`TraceRows`, an actor pool (``--workers`` actors, ``--gpus-per-worker`` GPUs
   each): every actor loads the model and the plugins once (:class:`TracerSetup.make`) and traces
   its batches with :func:`probe.runner.trace_clips` into the store, which every worker must see.

``probe sweep --engine ray`` shares a sweep's cells out the same way (:func:`sweep_cells_on_ray`):
each actor holds the clip set and the model, decodes one cell per call, and hands its rows back to
the driver, the sweep's one writer.

Ray restarts an actor that dies and retries its batch: rows it had already published are found
in the store, a row it was writing left only a hidden stage, so nothing is lost or half written.
Without ``--address`` a local Ray cluster is started for the run (and stopped after it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from typing import Iterator

import numpy as np

from probe.dataset_runs.outcome import FAILED, PENDING, SKIPPED, TRACED, RowOutcome
from probe.errors import AudioError, OptionError, ProbeError

ROWS_PER_BLOCK = 8
MAX_TASK_RETRIES = 3  # a batch whose actor died is retried this often before the run fails


def _ray():
    try:
        import ray
    except ImportError:
        raise OptionError('--engine ray needs Ray Data: pip install "whisper-probe[ray]" (or "ray[data]")') from None
    return ray


# -- 1. read ----------------------------------------------------------------------------------------
def _row_record(row, identity, store) -> dict:
    trace_id = identity.trace_id(row.key)
    done = trace_id in store
    audio = row.audio or {}
    return {"index": row.index, "key": row.key, "source": row.source, "trace_id": trace_id,
            "status": SKIPPED if done else PENDING, "error": None,
            "audio_bytes": None if done else audio.get("bytes"), "audio_path": None if done else audio.get("path"),
            "columns": json.dumps(row.columns, ensure_ascii=False)}


def _read_rows(spec, identity, store_path: str, start: int, stop: int | None, block_rows: int):
    import pyarrow as pa

    from probe.audio.dataset import OpenedDataset
    from probe.store import Store

    store, block = Store(store_path), []
    for row in OpenedDataset(spec).rows(start, stop):
        block.append(_row_record(row, identity, store))
        if len(block) == block_rows:
            yield pa.Table.from_pylist(block)
            block = []
    if block:
        yield pa.Table.from_pylist(block)


def row_source(spec, identity, store_path: str, size: int | None, random_access: bool, shards: int):
    """The Ray ``Datasource`` of ``spec``'s rows in up to ``shards`` read tasks (made here so ``ray``
    is imported only when used)."""
    ray = _ray()
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    # blocks small enough that every actor gets rows, at most ROWS_PER_BLOCK
    block_rows = max(1, min(ROWS_PER_BLOCK, -(-size // shards))) if size else ROWS_PER_BLOCK

    class RowSource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            if not random_access or not size:
                ranges = [(0, None)]
            else:
                bounds = np.linspace(0, size, max(1, min(shards, size)) + 1).astype(int)
                ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            return [ReadTask(lambda a=a, b=b: _read_rows(spec, identity, store_path, a, b, block_rows),
                             BlockMetadata(num_rows=(b - a) if b is not None else None, size_bytes=None,
                                           input_files=None, exec_stats=None),
                             per_task_row_limit=per_task_row_limit)
                    for a, b in ranges]

    del ray
    return RowSource()


# -- 2. decode --------------------------------------------------------------------------------------
def decode_rows(batch, spec, extractor):
    """CPU stage: each pending row's audio decoded (a corrupt one marked failed) and its log-Mel made."""
    import pyarrow as pa

    from probe.audio.dataset import DatasetRow
    from probe.constants import SAMPLE_RATE, WINDOW_SECONDS

    out = []
    for record in batch.to_pylist():
        record.update(samples=None, features=None, n_mels=0, clip=None)
        if record["status"] == PENDING:
            row = DatasetRow(spec, record["index"], record["key"],
                             {"bytes": record["audio_bytes"], "path": record["audio_path"]}, json.loads(record["columns"]))
            try:
                clip = row.decode()
            except AudioError as error:
                record.update(status=FAILED, error=str(error))
            else:
                record["samples"] = clip.samples.astype(np.float32).tobytes()
                if extractor is not None and clip.duration <= WINDOW_SECONDS:
                    mel = extractor([clip.samples], sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
                    record.update(features=mel.astype(np.float32).tobytes(), n_mels=int(mel.shape[0]))
                record["clip"] = json.dumps({"sha256": clip.sha256, "rate": clip.original_sample_rate,
                                             "channels": clip.original_channels, "reference": clip.reference,
                                             "dataset": clip.dataset, "row": clip.row}, ensure_ascii=False)
        record.update(audio_bytes=None, audio_path=None)
        out.append(record)
    return pa.Table.from_pylist(out)


# -- 3. trace ---------------------------------------------------------------------------------------
class TraceRows:
    """Actor stage: one tracer (model and plugins loaded once, when the actor first gets a row to
    trace) tracing its batches into the store."""

    def __init__(self, setup, store_path: str, batch_size: int, name: str | None, torch_threads: int | None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        from probe.store import Store

        self.setup, self.tracer = setup, None  # loaded with the first row to trace: a resumed run may have none
        self.store = Store(store_path)
        self.batch_size, self.name = batch_size, name

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_pylist()
        pending = [r for r in records if r["status"] == PENDING]
        if pending and self.tracer is None:
            self.tracer = self.setup.make()
        for start in range(0, len(pending), self.batch_size):
            self._trace(pending[start:start + self.batch_size])
        return pa.Table.from_pylist([{key: r.get(key) for key in RowOutcome.__dataclass_fields__}
                                     for r in records])

    def _trace(self, records: list[dict]) -> None:
        try:
            self._trace_together(records)
        except ProbeError as error:
            if len(records) == 1:
                records[0].update(status=FAILED, error=str(error))
                return
            for record in records:  # find the row that failed; the others still land
                if record["status"] == PENDING:
                    self._trace([record])

    def _trace_together(self, records: list[dict]) -> None:
        from probe import runner
        from probe.dataset_runs.local import headline_rate

        by_source = {r["source"]: r for r in records}
        clips = [_clip(r) for r in records]
        for run, trace in runner.trace_clips(self.tracer, clips, self.store, self.name, batch_size=len(clips),
                                             trace_id=lambda clip: by_source[clip.source]["trace_id"]):
            by_source[run.clip.source].update(status=TRACED, trace_id=trace.id, transcript=run.transcript,
                                              error_rate=headline_rate(trace))


def _clip(record: dict):
    from probe.audio import AudioClip

    info = json.loads(record["clip"])
    features = None
    if record["features"] is not None:
        features = np.frombuffer(record["features"], dtype=np.float32).reshape(record["n_mels"], -1)
    return AudioClip(np.frombuffer(record["samples"], dtype=np.float32).copy(), record["source"], info["sha256"],
                     info["rate"], info["channels"], row=info["row"], reference=info["reference"],
                     dataset=info["dataset"], features=features)


# -- the run ----------------------------------------------------------------------------------------
def feature_extractor(model):
    """The model's feature extractor, for the CPU stage (None when it cannot be had without loading
    the model: the actors then make the log-Mel themselves)."""
    try:
        from transformers import WhisperFeatureExtractor

        from probe.models import _resolve

        return WhisperFeatureExtractor.from_pretrained(str(_resolve(model).where))
    except Exception:  # a hub id offline, an unusual folder: the tracer makes the features itself
        return None


def start_ray(address: str | None, workers: int, gpus_per_worker: float):
    """Connect to ``address`` or start a local cluster sized so read and decode tasks can run beside
    the actor pool (a pool holding every CPU starves the reads); returns whether one was started."""
    ray = _ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, private cluster
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # its C++ notes go to the session logs, not here
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
        return True
    ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), **kwargs)
    return True


@contextlib.contextmanager
def _on_cluster(ray, address: str | None, workers: int, gpus_per_worker: float, failed: str):
    """A cluster for one pipeline (started here without ``address``, stopped after), Ray's own
    logging kept to its session logs, and a failure of the pipeline as one line (``failed`` says
    what is kept)."""
    started = start_ray(address, workers, gpus_per_worker)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()
        context.verbose_stats_logs = False
        for logger in ("ray", "ray.data"):  # the run prints its own summary
            logging.getLogger(logger).setLevel(logging.ERROR)
        yield
    except ray.exceptions.RayError as error:
        raise ProbeError(f"the Ray run failed: {_first_line(error)}; {failed}") from None
    finally:
        if started and not address:
            ray.shutdown()


def _actor_stage(ray, data, actor, batch_size: int, kwargs: dict, workers: int, gpus_per_worker: float,
                 address: str | None):
    """``data.map_batches`` on a pool of ``workers`` ``actor``s: on a local CPU cluster each gets
    1 CPU and its share of the cores as torch threads; with GPUs, ``gpus_per_worker`` each.  A dead
    actor is restarted and its batch retried up to :data:`MAX_TASK_RETRIES` times."""
    threads = None if gpus_per_worker or address else max(1, (os.cpu_count() or 1) // workers)
    with warnings.catch_warnings():  # bounded retries are still passed the 2.60 way
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return data.map_batches(
            actor, batch_format="pyarrow", batch_size=batch_size,
            fn_constructor_kwargs={**kwargs, "torch_threads": threads},
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0.5 if gpus_per_worker else 1,
            num_gpus=gpus_per_worker or None, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)


def run_ray(setup, opened, store, identity, workers: int = 1, gpus_per_worker: float = 0.0,
            address: str | None = None, batch_size: int = 1, name: str | None = None) -> Iterator[RowOutcome]:
    """Trace ``opened``'s rows into ``store`` on Ray Data (see the module docstring); yields each
    row's :class:`RowOutcome` as the pipeline hands it back."""
    ray = _ray()
    with _on_cluster(ray, address, workers, gpus_per_worker,
                     "rows already traced are in the store and a rerun continues from them"):
        spec = opened.spec
        shards = max(2, workers * 2)
        source = row_source(spec, identity, str(store.path), opened.size(), opened.random_access, shards)
        rows = ray.data.read_datasource(source, override_num_blocks=shards, num_cpus=0.25)
        rows = rows.map_batches(decode_rows, batch_format="pyarrow", batch_size=None, num_cpus=0.5,
                                fn_kwargs={"spec": spec, "extractor": feature_extractor(setup.model)})
        batch_size = max(batch_size, 1)
        traced = _actor_stage(ray, rows, TraceRows, batch_size,
                              {"setup": setup, "store_path": str(store.path), "batch_size": batch_size, "name": name},
                              workers, gpus_per_worker, address)
        for record in traced.iter_rows():
            yield RowOutcome(**{key: record.get(key) for key in RowOutcome.__dataclass_fields__})


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


# -- sweeps -----------------------------------------------------------------------------------------
class SweepCells:
    """Actor stage of ``probe sweep --engine ray``: the clip set held once per actor, one cell of the
    sweep decoded and measured per call (:class:`probe.sweep._CellRunner`, as the local sweep does)."""

    def __init__(self, setup, clips, options, batch_size: int, reuse_encoder: bool, clean, cells, torch_threads):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        from probe import runner
        from probe.sweep import _CellRunner

        loaded = runner.load(setup.model, device=setup.device, dtype=setup.dtype)
        self.runner = _CellRunner(loaded, clips, options, batch_size, reuse_encoder)
        self.runner.use_clean(clean)
        self.cells = cells  # [(Cell, interventions, encoder_changed)]

    def __call__(self, batch):
        import pyarrow as pa

        out = []
        for number in batch.column("cell").to_pylist():
            cell, interventions, encoder_changed = self.cells[number]
            rows = self.runner.run(cell, interventions, encoder_changed)
            out.append({"cell": number, "rows": json.dumps(rows, ensure_ascii=False)})
        return pa.Table.from_pylist(out)


def sweep_cells_on_ray(setup, cells, clips, options, batch_size: int, reuse_encoder: bool, clean,
                       workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None):
    """``(cell, rows)`` for each of ``cells`` (``[(Cell, interventions, encoder_changed)]``) as an
    actor pool of ``workers`` finishes them, in any order; the caller appends the rows (one writer)."""
    ray = _ray()
    with _on_cluster(ray, address, workers, gpus_per_worker,
                     "the cells already done are kept and running the same sweep again resumes it"):
        items = ray.data.from_items([{"cell": number} for number in range(len(cells))],
                                    override_num_blocks=max(1, len(cells)))
        done = _actor_stage(ray, items, SweepCells, 1,
                            {"setup": setup, "clips": clips, "options": options, "batch_size": batch_size,
                             "reuse_encoder": reuse_encoder, "clean": clean, "cells": cells},
                            workers, gpus_per_worker, address)
        for record in done.iter_rows():
            yield cells[record["cell"]][0], json.loads(record["rows"])
