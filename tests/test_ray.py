"""``--engine ray`` on a real local Ray cluster: two tracer actors give the traces the in-process
engine gives, a rerun skips what is traced, a killed worker's rows are retried with nothing lost,
and a corrupt row is reported while the rest land.  Real tiny.en weights, minds14-shaped rows."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataset_fixtures import EXAMPLES, minds14_like
from probe.dataset_runs.ray_engine import start_ray
from probe.dataset_runs.run import run_dataset
from probe.store import Store

ray = pytest.importorskip("ray")  # installed by scripts/setup.sh with the test extras: never skipped in CI

OPTIONS = dict(model="tiny.en", text_column="transcription", key_column="path", plugins=["no:activations"],
               max_new_tokens=16, device="cpu", dtype="float32")

KILLER = """
import os
from probe import hookimpl

@hookimpl
def probe_run_start(run):
    marker = {marker!r}
    if not os.path.exists(marker):  # the first row any worker starts: that worker dies, mid-run
        open(marker, "w").close()
        os._exit(1)
"""


@pytest.fixture(scope="module")
def cluster():
    started = start_ray(None, workers=2, gpus_per_worker=0)  # 3 logical CPUs: two actors and the reads
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def minds14(tmp_path_factory):
    return minds14_like(tmp_path_factory.mktemp("minds14"), rows=3, corrupt=(1,))


@pytest.fixture(scope="module")
def local_run(minds14, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("local") / "store")
    return store, run_dataset(str(minds14), store=store, **OPTIONS)


def records_equal(a, b) -> None:
    """Same records; integer ones identical, float ones to float32 rounding (an actor computes with
    its own torch thread count, so sums are added in another order: differences of ~1e-7)."""
    assert sorted(a.records) == sorted(b.records)
    for name, record in a.records.items():
        if record["kind"] == "tensor":
            ours, theirs = a.record(name), b.record(name)
            if np.issubdtype(ours.dtype, np.floating):
                np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(ours, theirs, err_msg=name)


def test_two_ray_workers_trace_what_the_local_engine_traces(cluster, minds14, local_run, tmp_path):
    local_store, local = local_run
    store = Store(tmp_path / "store")
    report = run_dataset(str(minds14), store=store, engine="ray", workers=2, **OPTIONS)
    by_row = {o.index: o for o in report.outcomes}
    assert sorted(by_row) == [0, 1, 2]
    assert [by_row[i].status for i in range(3)] == [o.status for o in local.outcomes] == ["traced", "failed", "traced"]
    assert "#1" in by_row[1].error and "\n" not in by_row[1].error  # the corrupt row, reported
    assert sorted(store) == sorted(local_store) and len(store) == 2  # the same deterministic ids
    for trace_id in store:
        ours, theirs = store.open(trace_id).manifest, local_store.open(trace_id).manifest
        for field in ("transcript", "sequence", "language", "metrics", "reference", "dataset", "prompt"):
            assert ours[field] == theirs[field], field
        assert [w["tokens"] for w in ours["windows"]] == [w["tokens"] for w in theirs["windows"]]
        records_equal(store.open(trace_id), local_store.open(trace_id))
    assert by_row[0].error_rate == store.open(by_row[0].trace_id).manifest["metrics"]["error_rate"]

    again = run_dataset(str(minds14), store=store, engine="ray", workers=2, **OPTIONS)  # resume
    assert sorted(o.status for o in again.outcomes) == ["failed"] + ["skipped"] * 2 and len(store) == 2


def test_a_killed_worker_is_retried_and_nothing_is_lost_on_a_streamed_dataset(cluster, minds14, local_run, tmp_path):
    local_store, _ = local_run
    marker = tmp_path / "died"
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER.format(marker=str(marker)))
    store = Store(tmp_path / "store")
    options = {**OPTIONS, "plugins": [*OPTIONS["plugins"], str(plugin)]}
    # streamed: one read task iterates the rows (an IterableDataset has no row ranges to share out)
    report = run_dataset(str(minds14), store=store, engine="ray", workers=2, streaming=True, **options)
    assert marker.exists()  # a worker did die
    assert sorted(o.status for o in report.outcomes) == ["failed"] + ["traced"] * 2
    assert len(store) == 2 and all(info.error is None for info in store.list(check_files=True))
    assert not [name for name in os.listdir(store.path) if not name.startswith(".") and name not in store]
    transcripts = sorted(store.open(t).transcript for t in store)
    assert transcripts == sorted(local_store.open(t).transcript for t in local_store)


def test_a_sweep_on_two_ray_workers_gives_the_local_sweeps_rows(cluster, tmp_path):
    from probe import runner, sweep
    from probe.runner import as_clip
    from probe.tracer import decode_options

    loaded = runner.load("tiny.en", device="cpu", dtype="float32")
    clips = [sweep.SweepClip(as_clip(str(EXAMPLES / name)), text=None, group=None) for name in ("en_fox.flac",
                                                                                             "en_lecture.flac")]
    spec = sweep.SweepSpec("heads", "decoder.self_attn", layers=(3,), heads=(0, 2, 5))
    options = decode_options(False, language="en", max_new_tokens=24)
    local = sweep.run_sweep(loaded, spec, clips, Store(tmp_path / "local"), options, batch_size=2)
    on_ray = sweep.run_sweep(loaded, spec, clips, Store(tmp_path / "ray"), options, batch_size=2,
                             ray=sweep.RayCells("tiny.en", "cpu", "float32", workers=2))
    assert on_ray.id == local.id

    def rows(found):
        return {(r["cell"], r["clip"]): r for r in found.rows()}

    ours, theirs = rows(on_ray), rows(local)
    assert sorted(ours) == sorted(theirs) and len(ours) == 4 * 2  # clean + 3 heads, two clips each
    for key, row in ours.items():
        assert (row["transcript"], row["tokens"], row["wer"]) == (theirs[key]["transcript"], theirs[key]["tokens"],
                                                                 theirs[key]["wer"]), key
        assert row["delta_logprob"] == pytest.approx(theirs[key]["delta_logprob"], abs=1e-3), key
