"""``probe summary`` and :mod:`probe.summary`: one row per trace from the manifests, the index that
keeps it quick, plugin columns and results, and every output format.  No model: traces are written
with the store's writer and the manifest fields a run writes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import threading

import pyarrow.parquet as pq
import pytest

import probe
from probe import contributions
from probe.cli import main
from probe.errors import OptionError, PluginError
from probe.plugin_manager import get_plugin_manager
from probe.store import Store, Trace
from probe.summary import CORE_COLUMNS, index_path, summary_reduce, summary_table

REQUIRED = ("id", "name", "created", "model", "source", "duration", "language", "task", "transcript", "reference",
            "dataset", "split", "row", "wer", "cer", "error_rate", "headline", "avg_logprob", "compression_ratio",
            "no_speech_probability", "language_probability", "tokens", "windows", "interventions")


def metrics(**changes) -> dict:
    """A dataset row's metrics with a reference, as the runner writes them."""
    return {"duration": 3.0, "windows": 1, "tokens": 12, "avg_logprob": -0.25, "compression_ratio": 1.2,
            "no_speech_probability": 0.02, "language_probability": 0.97, "language": "en", "wer": 0.25, "cer": 0.1,
            "error_rate": 0.25, "headline": "wer", "substitutions": 1, "deletions": 0, "insertions": 0,
            "reference_words": 4, **changes}


def write_trace(store: Store, name: str, **fields) -> str:
    manifest = {"model": {"id": "tiny"}, "audio": {"source": f"{name}.wav", "duration": 3.0},
                "decode": {"task": "transcribe", "language": None}, "transcript": f"the words of {name}",
                "language": "en", "language_probability": 0.9, "no_speech_probability": 0.05, "windows": [],
                "plugins": {}, "timings": {}, **fields}
    with store.writer(name) as writer:
        writer.update_manifest(**manifest)
    return writer.id


def dataset_trace(store: Store, name: str, row: int, **metric_changes) -> str:
    return write_trace(store, name, metrics=metrics(**metric_changes),
                       reference={"text": "the words of it", "column": "sentence"},
                       dataset={"name": "examples/dataset", "config": None, "split": "train", "row": row,
                                "key": f"{name}.flac", "key_column": "file_name"})


@pytest.fixture(autouse=True)
def only_these_plugins(monkeypatch):
    """No entry-point plugins of the machine; the presentation configured afresh for each test."""
    monkeypatch.setenv("WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("WHISPER_PROBE_PLUGINS", raising=False)
    contributions.configure()
    yield
    contributions.configure()


@pytest.fixture
def pm():
    return get_plugin_manager(presentation=True, autoload=False)


@pytest.fixture
def reads(monkeypatch):
    """How many manifests were read (every Trace opened reads its manifest once)."""
    counted = {"n": 0}
    original = Trace._read_manifest

    def counting(self):
        counted["n"] += 1
        return original(self)

    monkeypatch.setattr(Trace, "_read_manifest", counting)
    return counted


class Counter:
    """A summary plugin: a column per trace and a result across them."""

    name = "counter"
    __version__ = "1.0"

    @probe.hookimpl
    def probe_summary_columns(self, trace):
        return {"counter.chars": len(trace.transcript), "counter.long": len(trace.transcript) > 20}

    @probe.hookimpl
    def probe_summary_reduce(self, table):
        return {"chars": table["counter.chars"].sum(), "rows": len(table)}  # a numpy integer: taken as a number


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["summary", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_rows_come_from_the_manifests_with_reference_metrics_and_old_traces_derived(store, pm):
    old = write_trace(store, "old", transcript="hello hello hello hello hello hello",
                      windows=[{"kept": 3, "signals": {"avg_logprob": -0.5, "tokens": 3}},
                               {"kept": 1, "signals": {"avg_logprob": -0.1, "tokens": 1}}])
    new = dataset_trace(store, "row-0", 0, **{"my_plugin.sharpness": 0.8, "my_plugin.sharp": True})
    intervened = write_trace(store, "ablated", interventions=[{"kind": "ablate_heads"}], metrics=metrics(wer=0.5))

    table = summary_table(store, pm)
    assert list(table["id"]) == [intervened, new, old]  # newest first
    assert list(table.columns[:len(CORE_COLUMNS)]) == list(CORE_COLUMNS) and set(REQUIRED) <= set(table.columns)
    rows = {row["id"]: row for row in table.to_dict("records")}
    row = rows[new]
    assert (row["wer"], row["cer"], row["error_rate"], row["headline"]) == (0.25, 0.1, 0.25, "wer")
    assert (row["reference"], row["dataset"], row["split"], row["row"], row["key"]) == (
        "the words of it", "examples/dataset", "train", 0, "row-0.flac")
    assert (row["tokens"], row["windows"], row["substitutions"], row["reference_words"]) == (12, 1, 1, 4)
    assert row["my_plugin.sharpness"] == 0.8 and row["my_plugin.sharp"] is True
    assert row["model"] == "tiny" and row["source"] == "row-0.wav" and row["task"] == "transcribe"
    assert row["interventions"] is False and rows[intervened]["interventions"] is True
    # the old trace: what its manifest tells, the rest empty
    row = rows[old]
    assert row["duration"] == 3.0 and row["language"] == "en" and row["no_speech_probability"] == 0.05
    assert row["avg_logprob"] == pytest.approx(-0.4)  # the windows' averages weighted by their tokens
    assert row["compression_ratio"] > 1.5 and row["windows"] == 2  # openai-whisper's ratio of the repeated text
    assert row["tokens"] == 4  # the windows' kept tokens
    assert table.loc[table["id"] == old, ["wer", "cer", "reference", "dataset"]].isna().all(axis=None)


def test_broken_traces_are_rows_with_an_error_and_reserved_folders_are_not_traces(store, pm):
    good = write_trace(store, "good")
    (store.path / "20260101-000000-broken-abcdef").mkdir()
    (store.path / "20260101-000000-broken-abcdef" / "manifest.json").write_text("{not json")
    (store.path / "sweeps").mkdir()
    (store.path / ".tmp").mkdir(exist_ok=True)
    table = summary_table(store, pm)
    assert list(table["id"]) == [good, "20260101-000000-broken-abcdef"]  # broken ones last
    broken = table.iloc[1]
    assert "not valid JSON" in broken["error"] and table["error"].isna().tolist() == [True, False]
    assert summary_reduce(table, pm)["core"]["broken"] == 1


def test_where_filters_rows_and_a_bad_expression_is_one_line(store, pm, capsys):
    dataset_trace(store, "zh-bad", 0, wer=0.6, language="zh")
    dataset_trace(store, "en-bad", 1, wer=0.6)
    dataset_trace(store, "zh-good", 2, wer=0.1, language="zh")
    assert list(summary_table(store, pm, where="wer > 0.3 and language == 'zh'")["name"]) == ["zh-bad"]
    with pytest.raises(OptionError, match=r"no column 'werr' \(did you mean wer"):
        summary_table(store, pm, where="werr > 0.3")
    code, out, err = run_cli(capsys, "--store", store.path, "--where", "wer >")
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("probe: error: cannot filter")
    code, out, _ = run_cli(capsys, "--store", store.path, "--where", "wer > 0.9")
    assert code == 0 and "no traces match" in out


def test_the_index_is_reused_and_follows_added_changed_and_deleted_traces(store, pm, reads):
    first, second = dataset_trace(store, "a", 0), dataset_trace(store, "b", 1)
    reads["n"] = 0
    assert len(summary_table(store, pm)) == 2 and reads["n"] == 2 and index_path(store).is_file()
    assert len(summary_table(store, pm)) == 2 and reads["n"] == 2  # warm: no manifest read

    third = dataset_trace(store, "c", 2)
    reads["n"] = 0
    assert list(summary_table(store, pm)["id"]) == [third, second, first] and reads["n"] == 1

    manifest = store.path / first / "manifest.json"
    changed = json.loads(manifest.read_text())
    changed["metrics"]["wer"] = 0.75
    manifest.write_text(json.dumps(changed))
    reads["n"] = 0
    table = summary_table(store, pm)
    assert reads["n"] == 1 and table.loc[table["id"] == first, "wer"].item() == 0.75

    store.delete(second)
    reads["n"] = 0
    assert list(summary_table(store, pm)["id"]) == [third, first] and reads["n"] == 0

    for trace_id in (first, third):  # every indexed row stale at once (a copied store, touched files)
        os.utime(store.path / trace_id / "manifest.json", ns=(1, 1))
    reads["n"] = 0
    assert list(summary_table(store, pm)["id"]) == [third, first] and reads["n"] == 2


def test_an_index_that_cannot_be_written_or_read_only_means_computing(store, pm, reads, monkeypatch):
    dataset_trace(store, "a", 0)
    index_path(store).parent.mkdir()
    index_path(store).write_bytes(b"not parquet")  # corrupt: ignored, then replaced
    assert len(summary_table(store, pm)) == 1 and pq.read_table(index_path(store)).num_rows == 1
    index_path(store).unlink()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("probe.summary.staged", refuse)  # a read-only store, a full disk
    reads["n"] = 0
    assert len(summary_table(store, pm)) == 1 and len(summary_table(store, pm)) == 1
    assert reads["n"] == 2 and not index_path(store).exists()


def test_concurrent_summaries_never_see_a_broken_index(store, pm):
    for row in range(4):
        dataset_trace(store, f"row-{row}", row)
    failures: list[BaseException] = []

    def look():
        try:
            for _ in range(5):
                assert len(summary_table(store, pm)) >= 4
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=look) for _ in range(3)]
    for thread in threads:
        thread.start()
    for row in range(4, 7):
        dataset_trace(store, f"row-{row}", row)
    for thread in threads:
        thread.join()
    assert not failures
    assert len(summary_table(store, pm)) == 7 and pq.read_table(index_path(store)).num_rows == 7
    assert not [p for p in index_path(store).parent.iterdir() if p.name != "index.parquet"]  # no stage left


def test_plugin_columns_and_results_and_the_index_rebuilds_when_plugins_change(store, pm, reads):
    short, long = write_trace(store, "s", transcript="short"), write_trace(store, "l", transcript="x" * 30)
    assert "counter.chars" not in summary_table(store, pm).columns
    with_counter = get_plugin_manager(plugins=[Counter()], presentation=True, autoload=False)
    reads["n"] = 0
    table = summary_table(store, with_counter)
    assert reads["n"] == 2  # other summary plugins: every row made again
    assert list(table.columns[-2:]) == ["counter.chars", "counter.long"]
    assert dict(zip(table["id"], table["counter.chars"])) == {short: 5, long: 30}
    assert table.attrs["plugin_columns"] == ["counter.chars", "counter.long"]
    assert list(summary_table(store, with_counter, where="`counter.long`")["id"]) == [long]
    reduced = summary_reduce(table, with_counter)
    assert reduced["counter"] == {"chars": 35, "rows": 2} and reduced["core"]["count"] == 2
    json.dumps(reduced)


def test_the_presented_plugins_are_asked_by_default(store):
    write_trace(store, "s", transcript="short")
    contributions.configure([Counter()])  # what `probe dashboard -p` does in the dashboard's process
    assert list(summary_table(store)["counter.chars"]) == [5]
    contributions.configure(["no:token_probs"])
    assert "counter.chars" not in summary_table(store).columns


class Raising:
    name = "raising"

    @probe.hookimpl
    def probe_summary_columns(self, trace):
        raise KeyError("oops")


class WrongType:
    name = "wrong_type"

    @probe.hookimpl
    def probe_summary_reduce(self, table):
        return ["not", "a", "dict"]


class NotScalar:
    name = "not_scalar"

    @probe.hookimpl
    def probe_summary_columns(self, trace):
        return {"not_scalar.list": [1, 2]}


@pytest.mark.parametrize("plugin, call, message", [
    (Raising(), "table", r"plugin 'raising' raised in probe_summary_columns: KeyError"),
    (WrongType(), "reduce", r"plugin 'wrong_type' returned list from probe_summary_reduce"),
    (NotScalar(), "table", r"plugin 'not_scalar' returned a list for column 'not_scalar.list'"),
])
def test_a_plugin_that_raises_or_returns_the_wrong_thing_is_a_one_line_error(store, plugin, call, message):
    write_trace(store, "s")
    bad = get_plugin_manager(plugins=[plugin], presentation=True, autoload=False)
    with pytest.raises(PluginError, match=message) as caught:
        summary_reduce(summary_table(store, bad), bad) if call == "reduce" else summary_table(store, bad)
    assert "\n" not in str(caught.value)


def test_a_raising_plugin_file_fails_the_command_in_one_line(store, capsys, tmp_path):
    write_trace(store, "s")
    plugin = tmp_path / "bad_columns.py"
    plugin.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_summary_columns(trace):\n"
                      "    raise ValueError('bad column')\n")
    code, out, err = run_cli(capsys, "--store", store.path, "-p", plugin)
    assert code == 2 and err.count("\n") == 1 and "plugin 'bad_columns' raised in probe_summary_columns" in err
    assert run_cli(capsys, "--store", store.path, "-p", plugin, "-p", "no:bad_columns")[0] == 0


def test_text_json_csv_parquet_and_html_outputs_hold_the_rows(store, capsys, tmp_path):
    ids = [dataset_trace(store, "row-0", 0), dataset_trace(store, "中文", 1, language="zh", wer=0.5)]
    code, out, _ = run_cli(capsys, "--store", store.path)
    assert code == 0 and all(trace_id in out for trace_id in ids)
    assert "2 traces; 2 with a reference: WER 37.5%" in out  # weighted by reference words

    code, out, _ = run_cli(capsys, "--store", store.path, "--json")
    shown = json.loads(out)
    assert [row["id"] for row in shown["rows"]] == ids[::-1] and shown["rows"][0]["name"] == "中文"
    assert shown["reduce"]["core"]["wer"] == 0.375 and shown["rows"][1]["config"] is None

    code, out, _ = run_cli(capsys, "--store", store.path, "--csv", "--columns", "id,wer,language")
    assert list(csv.DictReader(io.StringIO(out))) == [{"id": ids[1], "wer": "0.5", "language": "zh"},
                                                       {"id": ids[0], "wer": "0.25", "language": "en"}]

    code, out, _ = run_cli(capsys, "--store", store.path, "--parquet", tmp_path / "s.parquet", "--where",
                           "language == 'en'")
    written = pq.read_table(tmp_path / "s.parquet")
    assert out.strip() == str(tmp_path / "s.parquet") and written.column("id").to_pylist() == [ids[0]]
    assert json.loads(written.schema.metadata[b"whisper_probe.reduce"])["core"]["count"] == 1

    code, out, _ = run_cli(capsys, "--store", store.path, "--html", tmp_path / "s.html")
    page = (tmp_path / "s.html").read_text()
    assert code == 0 and all(trace_id in page for trace_id in ids) and "中文" in page and "<script>" in page
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, re.I)
    assert all(link.startswith(("data:", "#")) for link in links), links
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.html", "s.parquet", "store"]  # no stage left


def test_an_empty_store_is_an_empty_summary_and_bad_options_are_one_line(store, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--store", store.path)
    assert code == 0 and out.startswith("no traces in ")
    code, out, _ = run_cli(capsys, "--store", store.path, "--json")
    assert json.loads(out) == {"rows": [], "reduce": {"core": {
        "count": 0, "broken": 0, "with_reference": 0, "wer": None, "cer": None, "error_rate": None,
        "avg_logprob": None, "total_duration": None}}}
    code, out, _ = run_cli(capsys, "--store", store.path, "--csv")
    assert out.splitlines()[0].startswith("id,name,created,model")
    code, _, err = run_cli(capsys, "--store", store.path, "--columns", "id,werr")
    assert code == 2 and "no column 'werr' (did you mean wer" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "--store", tmp_path / "nowhere")
    assert code == 2 and "no store at" in err
    shutil.rmtree(store.path / ".summary", ignore_errors=True)
