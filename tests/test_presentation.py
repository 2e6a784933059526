"""The presentation hooks (probe_describe_records, probe_figures, probe_dashboard_views,
probe_export_sections, probe_lesson_steps) on the tiny random model: what plugins register is
collected once, named, ordered and offered only for traces holding its records; a third-party
plugin's figure and section reach the export; ``-p no:NAME`` removes a built-in's; every hookspec
is documented.  Fast: no real weights (the real-trace checks are in test_plugin_features.py)."""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import probe
from probe import contributions, figures, hookspecs
from probe.errors import PluginError
from probe.export import export_tables, render_html
from probe.plugin_manager import DEFAULT_PLUGINS, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent


class Shower:
    """A third-party plugin that records one tensor and shows it every way a plugin can."""

    name = "shower"

    @probe.hookimpl
    def probe_run_end(self, run, writer):
        writer.add_tensor("shower.grid", np.arange(12, dtype=np.float32).reshape(3, 4), plugin=self.name)

    @probe.hookimpl
    def probe_describe_records(self):
        return {"shower.*": {"dims": ["row", "column"], "units": "counts", "description": "a grid"}}

    @probe.hookimpl
    def probe_figures(self, register):
        def grid(trace, scale: float = 1.0):
            fig = figures.new_figure(4, 3)
            fig.add_subplot().imshow(np.asarray(trace.tensor("shower.grid")) * scale)
            return fig

        register("shower_grid", grid, requires="shower.grid", caption="The shower's grid.")

    @probe.hookimpl
    def probe_dashboard_views(self, register):
        register("Shower", lambda trace, st: st.write("grid"), requires="shower.grid")

    @probe.hookimpl
    def probe_export_sections(self, register):
        register("Shower section", lambda trace, windows: "<p>the grid is <b>3 × 4</b></p>", requires="shower.grid",
                 order=30, tables=lambda trace: {"shower": [{"rows": 3, "columns": 4}]})

    @probe.hookimpl
    def probe_lesson_steps(self, register):
        register("Look at the grid", lambda trace, st, window: None, requires="shower.grid", order=45)


@pytest.fixture(autouse=True)
def only_these_plugins(monkeypatch):
    """No entry-point plugins of the machine, and the presentation collected afresh for each test."""
    monkeypatch.setenv("WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    contributions.configure()
    yield
    contributions.configure()


@pytest.fixture(scope="module")
def shown_trace(tiny, tmp_path_factory):
    """A real trace of the tiny model with every built-in and the Shower plugin."""
    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return probe.run(tone, model=tiny, plugins=[Shower()], store=tmp_path_factory.mktemp("store"),
                     max_new_tokens=4, name="shower")


def test_the_core_and_the_builtins_contribute_through_the_hooks(monkeypatch):
    found = contributions.current()
    assert found.plugins[0] == "core" and found.plugins[1:] == list(DEFAULT_PLUGINS)
    assert list(found.figures)[:3] == ["waveform", "log_mel", "windows"]
    assert {f.plugin for f in found.figures.values()} == {"core", *DEFAULT_PLUGINS}
    assert {v.plugin for v in found.views} == set(DEFAULT_PLUGINS)  # every built-in has a page; the core none
    assert [s.order for s in found.sections] == sorted(s.order for s in found.sections)
    assert found.lesson_steps[0].title == "The sound" and found.lesson_steps[0].plugin == "core"
    assert found.describe("cross_attention.weights")["dims"] == ["layer", "head", "token", "frame"]
    assert found.describe("activations.encoder.hook_conv2")["dims"] == ["window", "channel", "frame"]
    # a figure of one rejected attempt, one per window, and one drawable from the trace alone
    assert found.figures["rejected_attention"].per_attempt and not found.figures["rejected_attention"].by_default
    assert found.figures["log_mel"].per_window and found.figures["waveform"].by_default


def test_presentation_loads_no_torch():
    import subprocess

    script = ("import sys\nfrom probe import contributions\nfound = contributions.current()\n"
              "assert len(found.figures) > 10 and found.views and found.sections\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120,
                   env={**__import__("os").environ, "WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_a_plugins_contributions_are_offered_only_for_traces_with_its_records(shown_trace):
    found = contributions.collect(get_plugin_manager(plugins=[Shower()], presentation=True))
    figure, = [f for f in found.figures.values() if f.plugin == "shower"]
    view, = [v for v in found.views if v.plugin == "shower"]
    assert figure.available(shown_trace) and view.available(shown_trace) and view.url_path == "shower"
    other = types.SimpleNamespace(records={"token_probs.tokens": {}}, manifest={}, id="other")
    assert not figure.available(other) and not view.available(other)
    assert contributions.holds(other, ["token_probs.*"]) and not contributions.holds(other, ["shower.*"])
    assert found.describe("shower.grid", shown_trace.records["shower.grid"])["units"] == "counts"


def test_a_third_party_figure_and_section_are_in_the_html_and_json_exports(shown_trace):
    contributions.configure([Shower()])
    page = render_html(shown_trace)
    assert 'id="figure-shower_grid"' in page and "The shower&#x27;s grid." in page
    assert '<section id="shower-section"><h2>Shower section</h2><p>the grid is <b>3 × 4</b></p></section>' in page
    assert page.index('id="shower-section"') < page.index('id="windows"')  # order 30 < the core's 40
    assert export_tables(shown_trace)["shower"] == [{"rows": 3, "columns": 4}]
    assert figures.figure("shower_grid")(shown_trace, scale=2.0).axes
    assert "shower_grid" in figures.FIGURES and figures.shower_grid is figures.FIGURES["shower_grid"]


def test_without_the_plugin_its_section_and_figure_are_simply_absent(shown_trace):
    page = render_html(shown_trace)  # the Shower plugin is not presented: its records stay, unshown
    assert "shower" not in re.sub(r"data:[^\"']*", "", page).split("<footer>")[0].split("</header>", 1)[1]
    assert "Not drawn" not in page


@pytest.mark.parametrize("name", DEFAULT_PLUGINS)
def test_no_name_presents_nothing_of_a_builtin(name, shown_trace):
    contributions.configure(disabled=[name])
    found = contributions.current()
    assert name not in found.plugins
    assert not any(item.plugin == name for item in [*found.figures.values(), *found.views, *found.sections,
                                                     *found.lesson_steps])
    page = render_html(shown_trace)
    assert "Not drawn" not in page and "<section" in page
    for anchor, body in re.findall(r'<section id="([^"]+)"><h2>[^<]*</h2>(.*?)</section>', page, flags=re.S):
        assert body.strip(), anchor


def test_two_plugins_registering_one_figure_name_is_an_error():
    class Clash:
        name = "clash"

        @probe.hookimpl
        def probe_figures(self, register):
            register("waveform", lambda trace: None)

    with pytest.raises(PluginError, match="'core' and 'clash' both register a figure named 'waveform'"):
        contributions.collect(get_plugin_manager(plugins=[Clash()], presentation=True))


def test_a_malformed_registration_names_the_plugin():
    class Sloppy:
        name = "sloppy"

        @probe.hookimpl
        def probe_dashboard_views(self, register):
            register("Page", lambda trace, st: None, colour="red")

    with pytest.raises(PluginError, match="plugin 'sloppy' called register\\(\\) of views wrongly"):
        contributions.collect(get_plugin_manager(plugins=[Sloppy()], presentation=True))


def test_a_hook_wrapper_sees_and_can_change_what_others_register():
    class Wrapper:
        name = "renamer"

        @probe.hookimpl(wrapper=True)
        def probe_dashboard_views(self, register):
            def renamed(title, render, **options):
                register(f"★ {title}", render, **options)

            # a wrapper runs around the other plugins' calls; here it only counts them
            result = yield
            renamed("Summary of the others", lambda trace, st: None)
            return result

    found = contributions.collect(get_plugin_manager(plugins=[Wrapper()], presentation=True))
    assert found.views[-1].title == "★ Summary of the others" and found.views[-1].plugin == "renamer"


def test_a_plugin_section_that_raises_stops_the_export_naming_it(shown_trace):
    class Broken:
        name = "broken"

        @probe.hookimpl
        def probe_export_sections(self, register):
            register("Broken", lambda trace, windows: 1 / 0)

    contributions.configure([Broken()])
    with pytest.raises(PluginError, match="plugin 'broken' raised in its export section 'Broken'.*no:broken"):
        render_html(shown_trace)


def test_word_timings_are_found_by_their_description_not_their_name(shown_trace):
    described = [name for name, info in contributions.current().records.items() if info.get("role") == "words"]
    assert described == ["cross_attention.words"]
    assert shown_trace.words() == shown_trace.json("cross_attention.words")
    contributions.configure(disabled=["cross_attention"])
    assert shown_trace.words() == []  # nothing presented says which record holds words


def test_every_hookspec_is_documented_versioned_and_in_the_plugin_guide():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    specs = [name for name, value in vars(hookspecs).items() if name.startswith("probe_") and callable(value)]
    assert len(specs) == 18
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 80 and ".. versionadded::" in doc, name
        assert f"### `{name}(" in guide, f"{name} is not in docs/plugins.md"
    assert hookspecs.PROBE_API_VERSION == "1.4" and "(1.4)" in guide


def test_the_example_plugin_file_registers_all_five_parts():
    sys.path.insert(0, str(ROOT / "examples" / "plugins" / "encoder_change"))
    try:
        pm = get_plugin_manager(plugins=["encoder_change"], presentation=True)
    finally:
        sys.path.pop(0)
    found = contributions.collect(pm)
    assert "encoder_change" in found.figures and found.figures["encoder_change"].per_window
    assert [v.title for v in found.views if v.plugin == "encoder_change"] == ["Encoder change"]
    assert [s.title for s in found.sections if s.plugin == "encoder_change"] == ["Where the encoder sees change"]
    assert found.describe("encoder_change.change")["dims"] == ["window", "frame"]
    hooks = {row["name"]: row["hooks"] for row in probe.plugin_manager.describe(pm)}["encoder_change"]
    assert "probe_addoption" in hooks and "probe_capture" in hooks
    json.dumps(found.records)  # descriptions are plain data


def test_a_plugin_figure_that_raises_stops_the_export_in_one_line_naming_it(shown_trace):
    class BadFigure:
        name = "bad_figure"

        @probe.hookimpl
        def probe_figures(self, register):
            register("bad", lambda trace: {}["missing"])

    contributions.configure([BadFigure()])
    with pytest.raises(PluginError, match=r"plugin 'bad_figure' raised drawing figure 'bad': KeyError.*-p no:bad_figure"):
        render_html(shown_trace)


def test_a_plugin_given_as_a_file_can_be_switched_off_by_name(tmp_path):
    path = tmp_path / "my_shower.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_figures(register):\n"
                    "    register('mine', lambda trace: None)\n")
    assert "mine" in contributions.collect(get_plugin_manager([str(path)], presentation=True)).figures
    off = get_plugin_manager([str(path), "no:my_shower"], presentation=True)
    assert not off.has_plugin("my_shower")
    with pytest.raises(PluginError, match="cannot disable unknown plugin"):
        get_plugin_manager(["no:nothing_by_that_name"])


def test_a_misspelt_hook_is_refused_with_a_suggestion(tmp_path):
    path = tmp_path / "typo_hook.py"
    path.write_text("from probe import hookimpl\n\n@hookimpl\ndef probe_replay_point(run):\n    return []\n")
    with pytest.raises(PluginError, match="did you mean probe_replay_points for probe_replay_point"):
        get_plugin_manager([str(path)])
