"""whisper-probe in notebooks: a trace's HTML, ``trace.figure`` / ``trace.show``, ``probe.dashboard``
with a real Streamlit process, and the course notebook ``examples/course.ipynb`` executed end to
end (nbclient, a kernel running this interpreter, no network)."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import urllib.request

import pytest
from matplotlib.figure import Figure

from probe.errors import ProbeError, StoreError
from tests.conftest import EXAMPLES
from tests.dashboard_fixtures import DAMAGED_RECORD, dashboard_store  # noqa: F401  (session fixture)

COURSE = EXAMPLES / "course.ipynb"


# --- a trace in a notebook -----------------------------------------------------------------------

def test_trace_html_shows_summary_prompt_audio_transcript_and_figures(dashboard_store):
    trace = dashboard_store.english
    started = time.perf_counter()
    html = trace._repr_html_()
    took = time.perf_counter() - started
    for fact in ("model", trace.model_id, "language", f"{trace.language} (p = ", "task", "transcribe",
                 "duration", "windows", "no-speech probability"):
        assert fact in html, fact
    assert html.count('<code class="tok">') == len(trace.manifest["prompt"]) >= 3
    assert "&lt;|startoftranscript|&gt;" in html and "&lt;|en|&gt;" in html
    assert re.search(r'<audio controls [^>]*src="data:audio/flac;base64,[A-Za-z0-9+/=]{1000,}"', html)
    assert "probe-transcript" in html and "background:" in html  # coloured by token_probs, not plain
    assert "fox" in html
    assert 2 <= len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) <= 3
    assert "http://" not in html and "https://" not in html  # nothing loads from the network
    assert took < 20, f"the repr took {took:.1f} s"
    started = time.perf_counter()
    assert trace._repr_html_() == html and time.perf_counter() - started < 0.5  # drawn once per trace


def test_trace_html_escapes_what_the_trace_says(dashboard_store, tmp_path):
    import shutil

    from probe.store import Trace

    copy = tmp_path / "escaped"
    shutil.copytree(dashboard_store.translate.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(name="<script>alert(1)</script>", transcript="<b>bold</b> & co", language="<i>zh</i>")
    manifest["model"]["id"] = "<img src=x onerror=alert(2)>"
    manifest["prompt"][0]["token"] = "<|start\"of'<x>|>"
    first = str(manifest["prompt"][0]["id"])  # prompt chips read each window's token bytes
    for window in manifest["windows"]:
        assert first in window["token_bytes"]
        window["token_bytes"][first] = "<|start\"of'<x>|>".encode().hex()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    html = Trace(copy)._repr_html_()
    for raw in ("<script>alert", "<b>bold", "<i>zh", "<img src=x", "<x>"):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html


def test_trace_html_without_plugins_records_or_audio(dashboard_store, tmp_path):
    import shutil

    from probe.store import Trace

    copy = tmp_path / "bare"
    shutil.copytree(dashboard_store.without["token_probs"].path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("audio")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    html = Trace(copy)._repr_html_()
    assert "kept no audio" in html and "<audio" not in html
    assert "probe-transcript" not in html and 'class="transcript"' in html  # the plain transcript
    # no audio: the figures drawn over the sound give way to the next one, and nothing is broken
    assert re.findall(r'<img alt="(\w+)"', html) == ["windows"] and "Not drawn" not in html


def test_figure_returns_the_registered_figure(dashboard_store):
    trace = dashboard_store.english
    fig = trace.figure("cross_attention")
    assert isinstance(fig, Figure) and fig.axes
    assert isinstance(trace.figure("log_mel", window=0), Figure)


def test_figure_errors_are_one_line(dashboard_store):
    trace = dashboard_store.english
    with pytest.raises(ProbeError) as unknown:
        trace.figure("cross_atention")
    message = str(unknown.value)
    assert "\n" not in message and "'cross_atention'" in message and "cross_attention" in message and "waveform" in message
    with pytest.raises(ProbeError, match=r"figure 'log_mel' has no option 'layr'; its options: .*window"):
        trace.figure("log_mel", layr=2)
    with pytest.raises(ProbeError, match=r"needs name="):
        trace.figure("record_heatmap")
    without = dashboard_store.without["token_probs"]
    with pytest.raises(StoreError, match="token_probs"):
        without.figure("token_probs")


def test_figure_whose_record_file_is_gone_raises_store_error(dashboard_store):
    from probe.store import Store

    damaged = Store(dashboard_store.path).open(dashboard_store.damaged_id)
    assert DAMAGED_RECORD == "cross_attention.weights"  # read when one layer is asked for
    assert isinstance(damaged.figure("cross_attention"), Figure)  # the alignment heads' average is intact
    with pytest.raises(StoreError, match=f"missing its record {DAMAGED_RECORD} file"):
        damaged.figure("cross_attention", layer=2)


def test_show_without_ipython_returns_the_figure(dashboard_store):
    assert "IPython" not in sys.modules or __import__("IPython").get_ipython() is None
    fig = dashboard_store.english.show("waveform")
    assert isinstance(fig, Figure)


# --- the dashboard from a notebook ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dashboard_starts_answers_and_stops(dashboard_store):
    import probe

    port = _free_port()
    board = probe.dashboard(dashboard_store.path, port=port)
    try:
        assert str(board) == board.url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(board.url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        assert f'<iframe src="{board.url}"' in board._repr_html_()
        with pytest.raises(ProbeError, match=f"port {port} on 127.0.0.1 is in use"):
            probe.dashboard(dashboard_store.path, port=port)
    finally:
        board.stop()
    assert board.process.poll() is not None and not board.running
    with pytest.raises(OSError):
        urllib.request.urlopen(board.url, timeout=2)
    assert "stopped" in board._repr_html_() and "<iframe" not in board._repr_html_()
    board.stop()  # twice is fine


# --- the course notebook -------------------------------------------------------------------------

def test_course_notebook_is_committed_without_outputs():
    notebook = json.loads(COURSE.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)
    assert COURSE.stat().st_size < 40_000


@pytest.mark.integration
def test_course_notebook_runs_end_to_end(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # a kernel spec of our own that runs this interpreter (the venv's), offline; found first on JUPYTER_PATH
    spec = tmp_path / "jupyter" / "kernels" / "whisper-probe-test"
    spec.mkdir(parents=True)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "whisper-probe test", "language": "python", "env": offline}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for key, value in offline.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(COURSE, as_version=4)
    client = NotebookClient(notebook, kernel_name="whisper-probe-test", timeout=180,
                            resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()

    def text(cell) -> str:
        parts = []
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
        return "".join(parts)

    every = "\n".join(text(cell) for cell in notebook.cells)
    assert "encoder: 6 layers, 8 heads" in every and "d_model = 512" in every
    assert "log-Mel: (1, 80, 3000)" in every
    assert "conv stem: 3000 -> 1500 frames" in every
    assert "encoder output: (1500, 512) = (1500, d_model)" in every
    assert "forced prompt: <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>" in every
    by_hand = re.search(r"<\|zh\|>  p = (0\.\d+)", every)  # detected first, on the Mandarin clip
    nospeech = re.search(r"<\|no(?:speech|captions)\|> p = (0\.\d+)", every)
    traced = re.search(r"language zh p = (0\.\d+), no-speech p = (0\.\d+)", every)
    assert by_hand and nospeech and traced and float(by_hand.group(1)) > 0.5
    # the notebook's hand-made first step and probe's trace of generate() agree
    assert abs(float(by_hand.group(1)) - float(traced.group(1))) < 0.01
    assert abs(float(nospeech.group(1)) - float(traced.group(2))) < 0.01
    assert "<|startoftranscript|><|zh|><|translate|><|notimestamps|>" in every
    assert "transcript: The quick brown fox jumps over the lazy dog." in every
    assert "prompt: <|startoftranscript|><|en|><|transcribe|><|notimestamps|>" in every
    html = [output["data"]["text/html"] for cell in notebook.cells for output in cell.get("outputs", [])
            if "text/html" in output.get("data", {})]
    assert any("probe-trace" in part and "<audio" in part for part in html)  # the trace showed itself
    assert any("<iframe src=\"http://127.0.0.1:" in part for part in html)  # and the dashboard
    images = [cell for cell in notebook.cells if any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))]
    assert len(images) >= 3  # trace.show(...) displayed its figures
    assert not any(output.get("output_type") == "error" for cell in notebook.cells for output in cell.get("outputs", []))
