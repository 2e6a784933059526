"""The Dataset view: every trace of a store as one table with its WER/CER, filters, charts, the
plugins' reductions, and a row that opens its trace in the other views.

The traces are written straight with the store's writer (a manifest as a dataset run writes it:
``metrics``, ``reference``, ``dataset``; the English example clip as audio), so the store costs
milliseconds and the Overview still opens each trace.  AppTest checks what the page shows and
what picking a row does; one real browser clicks a row and lands on that trace's Overview.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import probe.dashboards
from tests.conftest import EXAMPLES
from tests.test_browser import CHROMIUM, check, free_port, page, screenshots, settle, shows_text  # noqa: F401 (fixtures)
from tests.test_browser import wait_until_healthy

FLAC = (EXAMPLES / "en_fox.flac").read_bytes()
MODEL = "embedded:base"
# name, transcript, reference, language, dataset split (None: not from a dataset), avg log-prob, duration
ROWS = [
    ("fox_exact", "The quick brown fox jumps over the lazy dog.", "The quick brown fox jumps over the lazy dog.",
     "en", "test", -0.12, 3.1),
    ("fox_two_wrong", "The quick brown box jumps over a lazy dog.", "The quick brown fox jumps over the lazy dog.",
     "en", "test", -0.55, 3.1),
    ("hello_zh", "你好欢迎来到语音识别课程", "你好，欢迎来到语音识别课", "zh", "train", -0.31, 4.2),
    ("lecture_no_reference", "Today we look inside a speech recognizer.", None, "en", None, -0.2, 6.5),
]


def write_trace(store, name: str, transcript: str, reference: str | None, language: str, split: str | None,
                avg_logprob: float, duration: float, row: int = 0) -> str:
    """One trace as ``probe run --dataset ... --text-column text`` writes its manifest (without
    records), scored with :func:`probe.metrics.error_rates` as the runner scores it.  Returns its id."""
    from probe.metrics import error_rates

    metrics = {"duration": duration, "windows": 1, "tokens": len(transcript.split()) + 5, "avg_logprob": avg_logprob,
               "compression_ratio": 1.2, "no_speech_probability": 0.01, "language_probability": 0.97,
               "language": language}
    if reference is not None:
        rates = error_rates(reference, transcript, language)
        metrics.update(rates.to_dict(), error_rate=rates.cer if rates.headline == "cer" else rates.wer)
    fields = {"model": {"id": MODEL, "device": "cpu", "dtype": "float32"}, "language": language,
              "decode": {"task": "transcribe", "language": None, "num_beams": 1},
              "prompt": [{"id": 50258, "token": "<|startoftranscript|>"}], "transcript": transcript,
              "windows": [{"index": 0, "start": 0.0, "end": duration, "language": language}],
              "timings": {"total": 0.5}, "metrics": metrics}
    if split is not None:
        fields["dataset"] = {"name": "examples/dataset", "config": None, "split": split, "row": row,
                             "key": f"{split}-{row}", "key_column": None}
    if reference is not None:
        fields["reference"] = {"text": reference, "column": "text"}
    with store.writer(name) as writer:
        writer.update_manifest(**fields)
        writer.add_audio(FLAC, source=f"{name}.flac", sha256="0" * 64, duration=duration)
    return writer.id


def dataset_store(path: Path, rows=ROWS):
    """A store at ``path`` holding ``rows`` (oldest first): name → trace id."""
    from probe.store import Store

    store = Store(path)
    return store, {row[0]: write_trace(store, *row, row=i) for i, row in enumerate(rows)}


# --------------------------------------------------------------------------- AppTest

APP = Path(probe.dashboards.__file__).with_name("app.py")
ROW_HEIGHT = 35  # pixels of a header or row of st.dataframe's grid


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The store of :data:`ROWS`: (store, name → trace id)."""
    return dataset_store(tmp_path_factory.mktemp("dataset") / "store")


@pytest.fixture
def open_dataset(monkeypatch):
    """open_dataset(store) → AppTest of the Dataset page after its first run."""
    def run(store) -> AppTest:
        monkeypatch.setenv("WHISPER_PROBE_STORE", str(store.path))
        st.cache_data.clear()
        st.cache_resource.clear()
        return AppTest.from_file(str(APP), default_timeout=60).switch_page("views/dataset.py").run()

    yield run
    st.cache_data.clear()
    st.cache_resource.clear()


def shown_rows(app: AppTest) -> pd.DataFrame:
    no_exception(app)
    return app.dataframe(key=table_key(app)).value.set_index("name")


def table_key(app: AppTest) -> str:
    return next(frame.key for frame in app.dataframe if frame.key and frame.key.startswith("dataset_table:"))


def no_exception(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]


def test_each_trace_shows_its_wer_or_cer_against_the_reference(open_dataset, references):
    from probe.metrics import error_rates

    app = open_dataset(references[0])
    rows = shown_rows(app)
    assert list(rows.index) == [row[0] for row in reversed(ROWS)]  # newest first
    for name, transcript, reference, language, *_ in ROWS:
        if reference is None:
            assert pd.isna(rows.loc[name, "error_rate"]) and pd.isna(rows.loc[name, "headline"])
            continue
        rates = error_rates(reference, transcript, language)
        assert rows.loc[name, "headline"] == rates.headline.upper()
        assert rows.loc[name, "error_rate"] == pytest.approx(rates.cer if rates.headline == "cer" else rates.wer)
        assert rows.loc[name, "wer"] == pytest.approx(rates.wer)
    assert rows.loc["fox_two_wrong", "error_rate"] == pytest.approx(2 / 9)  # box for fox, a for the
    assert rows.loc["hello_zh", "headline"] == "CER"  # Chinese is scored by characters
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["traces"] == "4" and metrics["with a reference"] == "3"
    assert metrics["WER"] == f"{(0 + 2 + 1) / (9 + 9 + 11):.1%}"  # every word edit over every reference word


PLUGIN = '''
from probe import hookimpl

name = "length"
__version__ = "0.1"


@hookimpl
def probe_summary_columns(trace):
    return {"length.chars": len(trace.transcript)}


@hookimpl
def probe_summary_reduce(table):
    return {"longest": int(table["length.chars"].max())}
'''


def test_plugin_columns_and_reductions_are_shown(open_dataset, references, tmp_path, monkeypatch):
    plugin = tmp_path / "length_plugin.py"
    plugin.write_text(PLUGIN)
    monkeypatch.setenv("WHISPER_PROBE_PLUGINS", str(plugin))
    app = open_dataset(references[0])
    rows = shown_rows(app)
    assert rows.loc["hello_zh", "length.chars"] == len(ROWS[2][1])
    results = next(frame.value for frame in app.dataframe if frame.key != table_key(app))
    assert dict(zip(results["result"], results["value"])) == {"length.longest": str(max(len(r[1]) for r in ROWS))}


def test_filters_narrow_the_rows(open_dataset, references):
    app = open_dataset(references[0])
    app.multiselect(key="dataset_language").select("zh").run()
    assert list(shown_rows(app).index) == ["hello_zh"]
    app.multiselect(key="dataset_language").unselect("zh").run()
    app.text_input(key="dataset_search").input("LAZY").run()  # transcripts and references, any case
    assert set(shown_rows(app).index) == {"fox_exact", "fox_two_wrong"}
    app.text_input(key="dataset_search").input("").run()
    app.checkbox(key="dataset_scored").check().run()
    assert "lecture_no_reference" not in shown_rows(app).index and len(shown_rows(app)) == 3
    app.checkbox(key="dataset_scored").uncheck().run()
    app.slider(key="dataset_error_range:100").set_range(0, 10).run()
    assert set(shown_rows(app).index) == {"fox_exact", "hello_zh"}  # 0 % and 9.1 %
    app.multiselect(key="dataset_split").select("examples/dataset · test").run()
    assert list(shown_rows(app).index) == ["fox_exact"]
    assert "1 of 4 traces" in app.caption[0].value
    assert {m.label: m.value for m in app.metric}["traces"] == "1"  # the reductions follow the filters


def test_picking_a_row_opens_that_trace_in_every_view(open_dataset, references):
    store, ids = references
    app = open_dataset(store)
    picked = ids["fox_two_wrong"]
    assert app.session_state["trace"] != picked
    position = list(shown_rows(app).index).index("fox_two_wrong")
    pick(app, [position])
    assert app.session_state["trace"] == picked  # the sidebar's picker
    assert app.sidebar.selectbox(key="trace").value == picked
    assert app.query_params["trace"] == picked
    assert any("WER **22.2%**" in markdown.value for markdown in app.markdown)
    assert "fox" in app.get("html")[0].proto.body  # the word diff against the reference
    links = {link.proto.label: link.proto for link in app.get("page_link")}
    assert links["Open in Windows and retries"].page == "windows"
    assert links["Open in Overview"].query_string == f"trace={picked}"  # a link to share, too
    app.sidebar.selectbox(key="trace").select(ids["fox_exact"]).run()
    assert app.session_state["trace"] == ids["fox_exact"]  # the row still picked does not take it back
    pick(app, [])
    pick(app, [position])  # but picking it again does
    assert app.session_state["trace"] == picked
    app.switch_page("views/overview.py").run()
    no_exception(app)
    assert any("box jumps over a lazy dog" in markdown.value for markdown in app.markdown)
    assert app.session_state["trace"] == picked


def pick(app: AppTest, rows: list[int]) -> None:
    """Pick ``rows`` of the table as a click would (AppTest sets a table's selection through its state)."""
    app.session_state[table_key(app)] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    app.run()
    no_exception(app)


def test_an_empty_store_and_one_without_references_say_what_to_do(open_dataset, tmp_path):
    from probe.store import Store

    app = open_dataset(Store(tmp_path / "empty"))
    no_exception(app)
    assert "No traces in" in app.info[0].value and "--dataset" in app.info[0].value
    store, _ = dataset_store(tmp_path / "plain", rows=[ROWS[-1]])
    app = open_dataset(store)
    assert list(shown_rows(app).index) == ["lecture_no_reference"]
    assert "no WER/CER" in app.info[0].value and "--text-column" in app.info[0].value


# --------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def served(references):
    """``probe dashboard`` serving the store of :data:`ROWS` (its process group killed at the end)."""
    assert CHROMIUM.exists(), "needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it)"
    port = free_port()
    script = Path(sys.executable).with_name("probe")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "probe"]
    server = subprocess.Popen([*command, "dashboard", "--store", str(references[0].path), "--port", str(port)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.browser
@pytest.mark.integration
def test_a_clicked_row_opens_its_trace_in_the_overview(served, references, page, screenshots):
    store, ids = references
    picked = ids["fox_two_wrong"]
    page.goto(f"{served}/dataset")
    settle(page)
    shows_text(page, "4 of 4 traces", "dataset")
    grid = page.locator('[data-testid="stDataFrame"]').first
    # the grid is drawn on a canvas; its accessible copy (filled once drawn) holds the cells' values
    grid.locator("td", has_text="fox_two_wrong").wait_for(state="attached")
    cells = grid.locator("td").all_inner_texts()
    assert "WER" in cells and "CER" in cells and any(cell.startswith("0.2222") for cell in cells)
    box = grid.bounding_box()
    row = [name for name, *_ in reversed(ROWS)].index("fox_two_wrong")  # newest first
    page.mouse.click(box["x"] + 18, box["y"] + ROW_HEIGHT * (row + 1.5))  # noqa  # its row's checkbox, under the header
    settle(page, after_input=True)
    shows_text(page, "Picked fox_two_wrong · WER 22.2%", "dataset")
    page.wait_for_url(f"**trace={picked}*")
    assert picked in page.locator('[data-testid="stSidebar"]').inner_text()  # the sidebar's trace now
    check(page, "dataset", screenshots, "dataset-picked-row")
    with page.expect_download() as download:  # the page probe summary --html writes, of the rows shown
        page.get_by_role("button", name="Download summary (HTML)").click()
    summary = Path(download.value.path()).read_text(encoding="utf-8")
    assert "fox_two_wrong" in summary and "Across the traces" in summary and "4 traces" in summary
    page.get_by_role("link", name="Open in Overview").click()
    settle(page, after_input=True)
    shows_text(page, "The quick brown box jumps over a lazy dog.", "overview")
    assert f"trace={picked}" in page.url and page.locator("h1").first.inner_text() == "Overview"
