"""Dataset runs on the in-process engine: minds14-shaped rows with references, WER/CER and plugin
metrics in every manifest, deterministic trace ids, resume, corrupt rows, streaming, and one-line
errors for flags that need a dataset.  (The Ray engine: tests/test_ray.py.)"""

from __future__ import annotations

import json

import pytest

from conftest import store_snapshot
from dataset_fixtures import CLIPS, minds14_like
from probe import hookimpl
from probe.cli import main
from probe.dataset_runs.run import run_dataset
from probe.errors import DatasetError, PluginError
from probe.metrics import error_rates
from probe.store import Store, TraceExists


@pytest.fixture(scope="module")
def minds14(tmp_path_factory):
    return minds14_like(tmp_path_factory.mktemp("minds14"), rows=3)


def run(dataset, store, tiny, **options):
    options.setdefault("text_column", "transcription")
    options.setdefault("max_new_tokens", 6)  # a random model never stops by itself
    return run_dataset(str(dataset), model=tiny, store=store, plugins=["no:activations"], **options)


def traces(store: Store) -> dict:
    return {trace_id: store.open(trace_id).manifest for trace_id in store}


def test_minds14_rows_keep_their_reference_metrics_and_origin(minds14, store, tiny):
    report = run(minds14, store, tiny, key_column="path")
    assert [o.status for o in report.outcomes] == ["traced"] * 3 and not report.failures
    manifests = traces(store)
    assert sorted(manifests) == sorted(o.trace_id for o in report.outcomes)
    for outcome in report.outcomes:
        manifest = manifests[outcome.trace_id]
        reference = CLIPS[outcome.index][1]
        assert manifest["reference"] == {"text": reference, "column": "transcription"}
        assert manifest["dataset"]["row"] == outcome.index and manifest["dataset"]["key_column"] == "path"
        assert manifest["dataset"]["key"] == outcome.key == f"zh-CN~{outcome.index:04d}"
        assert f"zh-cn-{outcome.index:04d}" in outcome.trace_id  # the key is readable in the id
        assert manifest["audio"]["original_sample_rate"] == 8000
        metrics = manifest["metrics"]
        rates = error_rates(reference, manifest["transcript"], manifest["language"])
        assert metrics["wer"] == round(rates.wer, 4) and metrics["cer"] == round(rates.cer, 4)
        assert metrics["error_rate"] == metrics[rates.headline] == outcome.error_rate
        assert metrics["duration"] == pytest.approx(manifest["audio"]["duration"], abs=1e-3)
        assert metrics["windows"] == len(manifest["windows"]) and metrics["language"] == manifest["language"]
        assert metrics["avg_logprob"] is not None and metrics["avg_logprob"] <= 0


def test_a_rerun_skips_what_is_traced_and_finishes_an_interrupted_run(minds14, store, tiny):
    first = run(minds14, store, tiny, limit=2)
    assert [o.status for o in first.outcomes] == ["traced", "traced"]
    second = run(minds14, store, tiny)
    assert [o.status for o in second.outcomes] == ["skipped", "skipped", "traced"]
    assert [o.trace_id for o in second.outcomes[:2]] == [o.trace_id for o in first.outcomes]
    before = store_snapshot(store.path)
    third = run(minds14, store, tiny)
    assert third.count("skipped") == 3 and third.count("traced") == 0
    assert store_snapshot(store.path) == before and len(store) == 3


def test_a_streamed_read_of_the_same_rows_is_the_same_run(minds14, store, tiny):
    run(minds14, store, tiny, limit=1)
    streamed = run(minds14, store, tiny, streaming=True)
    assert [o.status for o in streamed.outcomes] == ["skipped", "traced", "traced"] and len(store) == 3


def test_different_runs_into_one_store_do_not_collide(minds14, store, tiny):
    greedy = run(minds14, store, tiny, limit=2)
    translated = run(minds14, store, tiny, limit=2, task="translate")
    unreferenced = run(minds14, store, tiny, limit=2, text_column=None)
    ids = [o.trace_id for report in (greedy, translated, unreferenced) for o in report.outcomes]
    assert len(set(ids)) == 6 and len(store) == 6
    assert all(o.status == "traced" for report in (translated, unreferenced) for o in report.outcomes)
    assert "reference" not in store.open(unreferenced.outcomes[0].trace_id).manifest


def test_a_corrupt_row_is_reported_and_the_others_land(tmp_path, store, tiny):
    dataset = minds14_like(tmp_path, rows=3, corrupt=(1,))
    report = run(dataset, store, tiny)
    assert [o.status for o in report.outcomes if o.index != 1] == ["traced", "traced"]
    (failed,) = report.failures
    assert failed.index == 1 and "#1" in failed.source and "\n" not in failed.error
    assert len(store) == 2 and report.to_dict()["failures"][0]["row"] == 1


def test_a_named_trace_id_is_taken_once(store):
    store.writer(trace_id="row-1").commit()
    with pytest.raises(TraceExists):
        store.writer(trace_id="row-1")
    early, late = store.writer(trace_id="row-2"), store.writer(trace_id="row-2")  # two runs racing for one row
    early.commit()
    with pytest.raises(TraceExists) as excinfo:
        late.commit()
    assert excinfo.value.trace_id == "row-2" and sorted(store) == ["row-1", "row-2"]
    assert not list((store.path / ".tmp").glob("*")) if (store.path / ".tmp").exists() else True


class ScalarPlugin:
    @hookimpl
    def probe_trace_metrics(self, run):
        return {"scalar.windows": len(run.windows), "scalar.first_language": None}


class BadScalarPlugin:
    @hookimpl
    def probe_trace_metrics(self, run):
        return {"bad_scalar.text": run.transcript}


def test_plugins_declare_scalars_for_the_metrics(minds14, store, tiny):
    report = run_dataset(str(minds14), model=tiny, store=store, plugins=[ScalarPlugin()], limit=1, max_new_tokens=4)
    metrics = store.open(report.outcomes[0].trace_id).manifest["metrics"]
    assert metrics["scalar.windows"] == 1 and metrics["scalar.first_language"] is None
    with pytest.raises(PluginError, match="bad_scalar.*probe_trace_metrics"):
        run_dataset(str(minds14), model=tiny, store=store, plugins=[BadScalarPlugin()], limit=1, max_new_tokens=4)


def test_an_unknown_text_column_names_the_columns(minds14, store, tiny):
    with pytest.raises(DatasetError, match="no column 'text'.*path, audio, transcription, lang_id.*--text-column"):
        run(minds14, store, tiny, text_column="text")


@pytest.mark.parametrize("argv, says", [
    (["examples/en_fox.flac", "--text-column", "t"], "--text-column is for dataset runs"),
    (["examples/en_fox.flac", "--engine", "ray"], "--engine ray runs datasets"),
    (["--dataset", "examples/dataset", "--workers", "2"], "are for --engine ray"),
    (["--dataset", "examples/dataset", "--no-store"], "drop --no-store"),
])
def test_dataset_flags_without_what_they_need_are_one_line_errors(capsys, tmp_path, argv, says):
    code = main(["run", *argv, "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code != 0 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_the_cli_runs_a_minds14_shaped_dataset_with_real_weights(capsys, tmp_path, monkeypatch):
    """Real tiny.en weights, 8 kHz rows with one corrupt: JSON lines per row, the summary, exit 1."""
    dataset = minds14_like(tmp_path, rows=3, corrupt=(2,))
    argv = ["run", "--dataset", str(dataset), "--model", "tiny.en", "--text-column", "transcription",
            "--key-column", "path", "--store", str(tmp_path / "store"), "--json", "-p", "no:activations"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert [row["status"] for row in rows] == ["traced", "traced", "failed"]
    assert "quick" in rows[0]["text"].lower() and 0 < rows[0]["error_rate"] < 0.9  # real speech at 8 kHz, tiny.en
    assert summary["traced"] == 2 and summary["failed"] == 1 and summary["failures"][0]["row"] == 2
    assert "2 traced, 0 already in the store, 1 failed" in err and "#2" in err
    from probe import runner

    monkeypatch.setattr(runner, "load", lambda *a, **k: pytest.fail("a rerun with nothing to trace loaded a model"))
    assert main(argv) == 1  # the rerun: the two traced rows are skipped, the corrupt one fails again
    out, err = capsys.readouterr()
    assert [json.loads(line)["status"] for line in out.splitlines()[:-1]] == ["skipped", "skipped", "failed"]
