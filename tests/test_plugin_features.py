"""Plugins at full standing, checked on real traces: each built-in switched off with ``-p no:NAME``
leaves a dashboard and an HTML export with nothing of it and nothing broken, and the worked
example plugin (``examples/plugins/encoder_change``, installed with pip) shows its option, record,
figure, page and export section in the CLI, the dashboard and the export.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import probe.dashboards
from probe import contributions
from probe.export import render_html
from probe.plugin_manager import DEFAULT_PLUGINS, get_plugin_manager
from tests.conftest import EXAMPLES
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)
from tests.test_dashboard import PLUGIN_PAGES, listed, no_exception, open_page

pytestmark = pytest.mark.integration

APP = Path(probe.dashboards.__file__).with_name("app.py")
# the core pages that draw plugins' figures, pages and records (audio and compare draw only the
# core's, or any figure the trace has, and are opened for every trace in test_dashboard.py)
CORE_VIEWS = ["overview", "windows", "lesson", "plugin_records"]


@pytest.fixture
def dashboard(dashboard_store, monkeypatch):
    """dashboard(trace_id, view) → the AppTest of that view, with the installed plugins on sys.path."""
    monkeypatch.setenv("WHISPER_PROBE_STORE", str(dashboard_store.path))
    monkeypatch.syspath_prepend(str(dashboard_store.plugin_dir))
    st.cache_data.clear()
    st.cache_resource.clear()

    def run(trace_id: str, view: str = "overview") -> AppTest:
        app = AppTest.from_file(str(APP), default_timeout=120)
        app.query_params["trace"] = trace_id
        return open_page(app, view).run()

    yield run
    st.cache_data.clear()
    st.cache_resource.clear()


def presented(plugin_dir: Path) -> contributions.Contributions:
    """What the built-ins and the installed plugins contribute (as the dashboard collects it)."""
    sys.path.insert(0, str(plugin_dir))
    try:
        return contributions.collect(get_plugin_manager(presentation=True))
    finally:
        sys.path.remove(str(plugin_dir))


def sections(page: str) -> dict[str, str]:
    """Section id → its inner HTML after the heading."""
    return {m.group(1): m.group(2) for m in re.finditer(r'<section id="([^"]+)"><h2>[^<]*</h2>(.*?)</section>',
                                                        page, flags=re.S)}


# --------------------------------------------------------------------------- -p no:NAME


@pytest.mark.parametrize("name", DEFAULT_PLUGINS)
def test_a_builtin_switched_off_leaves_no_page_and_nothing_broken(name, dashboard, dashboard_store):
    trace = dashboard_store.without[name]
    assert name not in trace.manifest["plugins"] and not trace.records_of(name)
    everything = presented(dashboard_store.plugin_dir)
    ours = {view.title for view in everything.views if view.plugin == name}
    assert ours, f"{name} registers no page"
    app = dashboard(trace.id)
    shown = listed(app)
    assert not shown & ours
    others = {view.title for view in everything.views
              if view.plugin in DEFAULT_PLUGINS and view.plugin != name}
    assert others <= shown  # the other built-ins' pages are all there
    paths = {view.url_path for view in everything.views if view.title in shown}
    pages = [key for key, path in PLUGIN_PAGES.items() if path in paths]
    for view in CORE_VIEWS + pages:
        app = dashboard(trace.id, view)
        no_exception(app)
        assert app.title and not app.error, (name, view, [e.value for e in app.error])
        assert not any("missing" in str(e.value) or "no record" in str(e.value) for e in app.info), (name, view)
    app = dashboard(trace.id, "lesson")  # walk every lesson step
    while not app.button(key="lesson_next").disabled:
        app.button(key="lesson_next").click().run()
        no_exception(app)
        assert not app.error, (name, app.subheader[0].value)


@pytest.mark.parametrize("name", DEFAULT_PLUGINS)
def test_a_builtin_switched_off_leaves_an_html_export_without_its_sections(name, dashboard_store):
    trace = dashboard_store.without[name]
    everything = presented(dashboard_store.plugin_dir)
    page = render_html(trace)
    parts = sections(page)
    assert {"listen", "task", "windows", "figures"} <= set(parts)
    for anchor, body in parts.items():
        assert body.strip(), f"section {anchor} is empty"
    assert "Not drawn" not in page and "missing" not in page.lower() and "no record" not in page
    theirs = [f.name for f in everything.figures.values() if f.plugin == name and f.by_default]
    assert theirs and not any(f'id="figure-{figure}' in page for figure in theirs)
    assert not any(s.anchor in parts for s in everything.sections if s.plugin == name and s.render)
    others = [f.name for f in everything.figures.values()
              if f.plugin in DEFAULT_PLUGINS and f.plugin != name and f.by_default]
    assert all(f'id="figure-{figure}"' in page for figure in others), name


# --------------------------------------------------------------------------- the worked example


def probe_cli(*args: str, plugin_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "probe", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_example_plugin_installed_with_pip_adds_its_option_and_record_to_the_cli(dashboard_store, tmp_path):
    plugin_dir = dashboard_store.plugin_dir
    listing = probe_cli("plugins", "--json", plugin_dir=plugin_dir)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert {"probe_addoption", "probe_figures", "probe_dashboard_views", "probe_export_sections",
            "probe_describe_records", "probe_capture"} <= set(rows["encoder_change"]["hooks"])
    helped = probe_cli("run", "--help", plugin_dir=plugin_dir)
    assert "options of plugin encoder_change" in helped.stdout and "--change-layer" in helped.stdout
    store = tmp_path / "store"
    ran = probe_cli("run", str(EXAMPLES / "en_fox.flac"), "--change-layer", "2", "--store", str(store),
                    "-p", "no:attention", "-p", "no:logit_lens", "-p", "no:activations", plugin_dir=plugin_dir)
    assert ran.returncode == 0, ran.stderr
    shown = json.loads(probe_cli("show", "--json", "--store", str(store), "en_fox", plugin_dir=plugin_dir).stdout)
    record = shown["records"]["encoder_change.change"]
    assert record["shape"][0] == 1 and record["shape"][1] > 100 and record["meta"]["encoder_block"] == 2
    out = tmp_path / "page.html"
    exported = probe_cli("export", "en_fox", "--store", str(store), "-o", str(out), plugin_dir=plugin_dir)
    assert exported.returncode == 0, exported.stderr
    page = out.read_text()
    assert 'id="figure-encoder_change"' in page and "Where the encoder sees change" in page
    assert len(re.findall(r'<span data-start="[\d.]+" data-end="[\d.]+">▶', page)) == 5
    wrong = probe_cli("run", str(EXAMPLES / "en_fox.flac"), "--change-layer", "x", "--store", str(store),
                      plugin_dir=plugin_dir)
    assert wrong.returncode == 2 and "--change-layer" in wrong.stderr and "Traceback" not in wrong.stderr


def test_example_plugin_shows_its_page_figure_and_export_section(dashboard, dashboard_store):
    trace = dashboard_store.english
    assert {"encoder_change.change", "encoder_change.peaks"} <= set(trace.records)  # loaded by its entry point
    app = dashboard(trace.id)
    assert "Encoder change" in listed(app)
    app = dashboard(trace.id, "encoder_change")
    no_exception(app)
    assert app.title[0].value == "Encoder change" and len(app.image) == 1 and not app.error
    moments = app.selectbox(key="change_moment").options
    assert len(moments) == 5 and len(app.get("audio")) == 1
    app = dashboard(trace.id, "plugin_records")
    app.selectbox(key="plugin_record").set_value("encoder_change.change").run()
    assert "[window, frame]" in "\n".join(c.value for c in app.caption)
    assert "units: 1 - cosine similarity" in "\n".join(c.value for c in app.caption)
    sys.path.insert(0, str(dashboard_store.plugin_dir))
    try:
        page = render_html(trace)
    finally:
        sys.path.remove(str(dashboard_store.plugin_dir))
    assert 'id="figure-encoder_change"' in page and sections(page)["where-the-encoder-sees-change"].strip()
    assert "Encoder change" not in listed(dashboard(dashboard_store.translate.id))  # traced without it
