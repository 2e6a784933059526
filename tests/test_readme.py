"""The README's promises: two set-up commands first, and a plugin example that really works."""

import json
import re
from pathlib import Path

import pytest

from probe.cli import main
from tests.conftest import EXAMPLES, ROOT

README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def plugin_example() -> str:
    section = README.split("## Write your own plugin", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_plugin_example_is_short():
    assert len(plugin_example().strip().splitlines()) <= 25


@pytest.mark.integration
def test_plugin_example_records_appear_in_show_json(tmp_path, capsys):
    path = tmp_path / "conv_energy.py"
    path.write_text(plugin_example())
    store = str(tmp_path / "store")
    assert main(["run", str(EXAMPLES / "en_fox.flac"), "-p", str(path), "--store", store, "--json"]) == 0
    trace_id = json.loads(capsys.readouterr().out)["trace"]
    assert main(["show", trace_id, "--store", store, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    record = shown["records"]["conv_energy.rms"]
    assert record["plugin"] == "conv_energy" and record["shape"] == [1, 1500]
    assert shown["plugins"]["conv_energy"] == "0.1"


@pytest.mark.integration
def test_plugin_example_renders_in_the_dashboard(tmp_path, capsys, monkeypatch):
    """The README's plugin writes a [window, frame] tensor: Plugin records draws it as a heatmap
    (a 2-D plugin tensor used to raise TypeError in show_figure)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import probe.dashboards

    path = tmp_path / "conv_energy.py"
    path.write_text(plugin_example())
    store = tmp_path / "store"
    assert main(["run", str(EXAMPLES / "en_fox.flac"), "-p", str(path), "--store", str(store), "--json",
                 "-p", "no:attention", "-p", "no:logit_lens"]) == 0
    trace_id = json.loads(capsys.readouterr().out)["trace"]
    monkeypatch.setenv("WHISPER_PROBE_STORE", str(store))
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(Path(probe.dashboards.__file__).with_name("app.py")), default_timeout=120)
    app.query_params["trace"] = trace_id
    app.switch_page("views/plugin_records.py")
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox(key="plugin_record").value == "conv_energy.rms"
    assert len(app.image) == 1  # the heatmap of conv_energy.rms
    st.cache_data.clear()
    st.cache_resource.clear()
