"""The dashboard under Streamlit's AppTest, one test (or a few) per view, on a real trace store.

Each test opens a view the way a browser would (``?trace=`` in the URL, then the page), checks
what it shows against the trace (transcript, language, tokens, words, shapes), drives its widgets
and checks the output changes.  Traces missing records, a damaged trace and bad URLs must show an
error inside the view while the sidebar and the rest keep working, never an exception.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import probe.dashboards
from probe.dashboards import context
from probe.plugin_manager import DEFAULT_PLUGINS
from probe.plugins.cross_attention.views import token_key, word_key
from probe.store import Store
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration

APP = Path(probe.dashboards.__file__).with_name("app.py")
VIEWS = ["overview", "audio", "multitask", "tokens", "windows", "conv_stem", "attention", "cross_attention", "logit_lens",
         "lesson", "compare", "plugin_records", "new_trace"]
# the built-in plugins' pages (registered through probe_dashboard_views) by their URL path
PLUGIN_PAGES = {"multitask": "multitask-prompt", "tokens": "token-probabilities", "conv_stem": "conv-stem",
                "attention": "attention-explorer", "cross_attention": "cross-attention", "logit_lens": "logit-lens",
                "loudness": "loudness", "encoder_change": "encoder-change"}


def open_page(app: AppTest, view: str) -> AppTest:
    """Point ``app`` at a core view script, or at a plugin's page by ``?page=<its URL path>`` (the
    app switches to it: AppTest's switch_page reaches only pages that are files)."""
    if view in PLUGIN_PAGES:
        app.query_params["page"] = PLUGIN_PAGES[view]
        return app
    return app.switch_page(f"views/{view}.py")


def listed(app: AppTest) -> set[str]:
    """Titles of the plugin pages the navigation lists for the picked trace."""
    return set(app.session_state["plugin_pages"])


@pytest.fixture
def open_view(dashboard_store, monkeypatch):
    """open_view(view, trace=None) → the AppTest after its first run, as from ``/view?trace=...``."""
    monkeypatch.setenv("WHISPER_PROBE_STORE", str(dashboard_store.path))
    monkeypatch.syspath_prepend(str(dashboard_store.plugin_dir))  # the loudness plugin's entry point
    st.cache_data.clear()
    st.cache_resource.clear()

    def run(view: str, trace: str | None = None) -> AppTest:
        app = AppTest.from_file(str(APP), default_timeout=120)
        if trace is not None:
            app.query_params["trace"] = trace
        return open_page(app, view).run()

    yield run
    st.cache_data.clear()
    st.cache_resource.clear()


def texts(app: AppTest) -> str:
    """Every piece of text the page shows (markdown, captions, html, metrics, alerts), joined."""
    parts = [element.value for kind in ("markdown", "caption", "title", "subheader", "error", "info")
             for element in getattr(app, kind)]
    parts += [f"{metric.label} {metric.value}" for metric in app.metric]
    parts += [html.unescape(element.proto.body) for element in app.get("html")]
    return "\n".join(str(part) for part in parts)


def no_exception(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]


def image_urls(app: AppTest) -> list[str]:
    return [url for image in app.image for url in image.value]


# --------------------------------------------------------------------------- picker and router


def test_every_view_opens_on_a_damaged_trace_without_exceptions(open_view, dashboard_store):
    # Complete traces, and one missing records, are opened view by view below.
    for view in VIEWS:
        app = open_view(view, dashboard_store.damaged_id)
        no_exception(app)
        assert app.title, f"{view} shows no title"


def test_trace_comes_from_the_url_by_id_prefix_or_name(open_view, dashboard_store):
    english, translate = dashboard_store.english, dashboard_store.translate
    assert open_view("overview", "en_fox").sidebar.selectbox(key="trace").value == english.id
    app = open_view("overview", translate.id[:-2])
    assert app.sidebar.selectbox(key="trace").value == translate.id
    assert app.query_params["trace"] == translate.id


@pytest.mark.parametrize("ref", ["../../etc", "/etc/passwd", "no-such-trace"])
def test_url_outside_the_store_is_refused_in_the_sidebar(open_view, ref):
    app = open_view("overview", ref)
    no_exception(app)
    assert app.sidebar.error and "store" in app.sidebar.error[0].value
    assert app.title[0].value == "Overview"  # the newest trace is shown instead


def test_sidebar_picker_changes_what_every_view_shows(open_view, dashboard_store):
    app = open_view("overview", "en_fox")
    assert dashboard_store.english.transcript in texts(app)
    app.sidebar.selectbox(key="trace").select(dashboard_store.translate.id).run()
    assert dashboard_store.translate.transcript in texts(app)
    assert app.query_params["trace"] == dashboard_store.translate.id


def test_a_trace_with_a_corrupt_manifest_is_reported_in_the_view(open_view, dashboard_store):
    broken = dashboard_store.path / "20000101-000000-broken-000000"
    broken.mkdir()
    try:
        (broken / "manifest.json").write_text("{not json")
        app = open_view("audio", broken.name)
        no_exception(app)
        assert app.error and "corrupt" in app.error[0].value
        assert "(broken)" in app.sidebar.selectbox(key="trace").options[-1]
    finally:
        shutil.rmtree(broken)


# --------------------------------------------------------------------------- views


def test_overview_shows_model_prompt_transcript_language_and_timings(open_view, dashboard_store):
    trace = dashboard_store.english
    app = open_view("overview", trace.id)
    shown = texts(app)
    assert trace.transcript in shown
    assert f"**Model** `{trace.model_id}`" in shown
    assert f"Language <|{trace.language}|>" in shown
    assert "No-speech probability" in shown
    for entry in trace.manifest["prompt"]:
        assert entry["token"] in shown and str(entry["id"]) in shown
    tables = [frame.value for frame in app.dataframe]
    assert any("total" in set(table.get("stage", [])) for table in tables)
    assert any("task" in set(table.get("option", [])) for table in tables)


def test_audio_view_plays_and_draws_waveform_and_log_mel(open_view, dashboard_store):
    app = open_view("audio", dashboard_store.english.id)
    no_exception(app)
    assert len(app.get("audio")) == 1
    assert len(app.image) == 2
    assert "80 Mel bins × 3000 frames" in texts(app)


def test_conv_stem_view_redraws_for_more_channels_and_explains_shapes(open_view, dashboard_store):
    app = open_view("conv_stem", dashboard_store.english.id)
    assert "[512, 1500]" in texts(app) and "[80, 3000]" in texts(app)
    before = image_urls(app)
    app.slider(key="conv_channels").set_value(32).run()
    no_exception(app)
    assert len(image_urls(app)) == 1 and image_urls(app) != before


def test_attention_explorer_switches_side_layer_and_head(open_view, dashboard_store):
    app = open_view("attention", dashboard_store.english.id)
    assert len(app.image) == 2  # the explorer and the per-head summary
    first = image_urls(app)[0]
    app.selectbox(key="attn_layer_encoder_attention").select(4)
    app.selectbox(key="attn_head_encoder_attention").select(3).run()
    assert image_urls(app)[0] != first
    app.radio(key="attn_side").set_value("Decoder self-attention").run()
    app.selectbox(key="attn_layer_decoder_attention").select(2).run()
    no_exception(app)
    assert len(app.image) == 2 and not app.error


def test_cross_attention_lists_tokens_and_words_and_plays_their_spans(open_view, dashboard_store):
    trace = dashboard_store.english
    app = open_view("cross_attention", trace.id)
    no_exception(app)
    tokens = app.selectbox(key=token_key(0)).options
    assert any(option.endswith(": fox") for option in tokens)
    words = app.selectbox(key=word_key(0)).options
    assert len(words) == len(trace.words()) and any(option.startswith("fox (") for option in words)
    assert len(app.get("audio")) == 2  # the token's span and the word's span
    span = app.caption[0].value
    app.selectbox(key=token_key(0)).set_value(tokens.index(next(o for o in tokens if o.endswith(": fox")))).run()
    assert app.caption[0].value != span
    first = image_urls(app)
    app.selectbox(key="cross_source").set_value(3).run()
    app.selectbox(key="cross_head").set_value(1).run()
    no_exception(app)
    assert image_urls(app) != first and not app.error


def test_cross_attention_of_a_damaged_trace_errors_in_the_view_only(open_view, dashboard_store):
    app = open_view("cross_attention", dashboard_store.damaged_id)
    assert len(app.image) == 1  # the alignment-head average does not need the deleted file
    app.selectbox(key="cross_source").set_value(2).run()
    no_exception(app)
    assert app.error and "cross_attention.weights" in app.error[0].value
    assert app.sidebar.selectbox(key="trace").value == dashboard_store.damaged_id  # the sidebar still works


def test_token_view_colours_the_transcript_and_lists_every_token(open_view, dashboard_store):
    trace = dashboard_store.english
    app = open_view("tokens", trace.id)
    shown = texts(app)
    assert "background:rgb(" in shown and " fox" in shown
    assert len(app.image) == 1
    assert len(app.dataframe[0].value) == len(trace.table("token_probs.tokens"))


def test_token_view_of_long_audio_shows_one_window_at_a_time(open_view, dashboard_store):
    """Long audio: a window picker (first spoken window first); transcript, figure and table are
    that window's, so an hour-long trace does not draw all of its tokens at once."""
    trace = dashboard_store.retried
    rows = trace.table("token_probs.tokens")
    app = open_view("tokens", trace.id)
    no_exception(app)
    assert app.selectbox(key="tokens_window").value == 1  # window 1 was skipped as no speech
    assert list(app.dataframe[0].value["window"]) == [2] * sum(r["window"] == 1 for r in rows)
    assert len(app.image) == 1
    app.selectbox(key="tokens_window").select(0).run()
    no_exception(app)
    assert list(app.dataframe[0].value["window"]) == [1] * sum(r["window"] == 0 for r in rows)


def test_windows_view_shows_each_window_its_attempts_and_why(open_view, dashboard_store):
    trace = dashboard_store.retried
    windows = trace.manifest["windows"]
    assert len(windows) == 2 and windows[0]["skipped"] and not windows[1]["skipped"]
    app = open_view("windows", trace.id)
    no_exception(app)
    table = app.dataframe[0].value
    assert list(table["window"]) == [1, 2] and list(table["skipped"]) == ["no speech", ""]
    assert "1 skipped as no speech" in texts(app) or len(app.image) == 1
    assert any("skipped" in e.label for e in app.expander)  # window 1 of 2 is picked first
    assert "no speech: p=" in texts(app)
    app.selectbox(key="windows_window").select(1).run()
    no_exception(app)
    assert windows[1]["text"][:20] in texts(app) and any("kept" in e.label for e in app.expander)
    app.button(key="windows_to_cross-attention").click().run()
    no_exception(app)
    assert app.session_state["cross_window"] == 1


def test_html_export_has_the_windows_and_their_attempts(dashboard_store, tmp_path):
    from probe.export import render_html

    page = render_html(dashboard_store.retried)
    assert 'id="windows"' in page and "skipped: no speech" in page and "no speech: p=" in page
    assert page.count('<tr><td class="num">') >= 2


def test_logit_lens_page_is_listed_only_for_traces_with_its_records(open_view, dashboard_store):
    app = open_view("logit_lens", dashboard_store.english.id)
    assert len(app.image) == 1 and "Logit lens" in listed(app)
    app = open_view("logit_lens", dashboard_store.transcribe.id)  # traced with -p no:logit_lens
    no_exception(app)
    assert "Logit lens" not in listed(app) and app.title[0].value == "Overview" and not app.error


def test_pages_of_plugins_a_trace_ran_without_are_not_listed(open_view, dashboard_store):
    """The transcribe trace ran without attention, logit_lens and activations: their pages are
    gone, every other page opens with no error."""
    app = open_view("overview", dashboard_store.transcribe.id)
    assert listed(app) == {"Cross-attention", "Multitask prompt", "Token probabilities"}
    assert listed(open_view("overview", dashboard_store.english.id)) >= {
        "Conv stem", "Attention explorer", "Cross-attention", "Multitask prompt", "Token probabilities",
        "Logit lens", "Loudness"}
    for view in ("lesson", "compare", "cross_attention", "tokens", "windows", "plugin_records"):
        app = open_view(view, dashboard_store.transcribe.id)
        no_exception(app)
        assert app.title and not app.error, view


def test_multitask_view_shows_language_no_speech_and_the_task_pair(open_view, dashboard_store):
    trace = dashboard_store.translate
    app = open_view("multitask", trace.id)
    shown = texts(app)
    assert f"Language token <|{trace.language}|>" in shown
    assert f"{trace.manifest['no_speech_probability']:.3f}" in shown
    assert "<|translate|>" in shown and "<|transcribe|>" in shown  # both prompts, side by side
    assert dashboard_store.transcribe.transcript in shown
    assert len(app.image) == 1
    app.slider(key="multitask_top").set_value(5).run()
    no_exception(app)
    english = open_view("multitask", dashboard_store.english.id)
    assert "Only the task token changes" in texts(english)


def test_compare_view_starts_from_the_other_task_of_the_same_audio(open_view, dashboard_store):
    app = open_view("compare", dashboard_store.translate.id)
    assert app.selectbox(key="compare_trace").value == dashboard_store.transcribe.id
    shown = texts(app)
    assert dashboard_store.translate.transcript in shown and dashboard_store.transcribe.transcript in shown
    assert len(app.image) == 2
    app.selectbox(key="compare_figure").select("language_probs").run()
    no_exception(app)
    assert len(app.image) == 2


def test_lesson_walks_every_step_forward_and_back(open_view, dashboard_store):
    app = open_view("lesson", dashboard_store.english.id)
    seen = [app.subheader[0].value]
    for _ in range(7):
        app.button(key="lesson_next").click().run()
        no_exception(app)
        seen.append(app.subheader[0].value)
    assert seen == ["The sound", "The log-Mel spectrogram", "The conv stem: 3000 → 1500", "The encoder's output",
                    "The special-token prompt", "Which language?", "Cross-attention: listening while writing",
                    "Tokens and their probabilities"]
    assert len(app.image) == 1
    assert app.button(key="lesson_next").disabled
    app.button(key="lesson_previous").click().run()
    assert app.subheader[0].value == seen[-2]
    assert not app.error


def test_lesson_of_a_short_clip_has_one_window_and_no_picker(open_view, dashboard_store):
    trace = dashboard_store.english
    app = open_view("lesson", trace.id)
    share = trace.manifest["audio"]["duration"] / 30 * 100
    assert f"this clip fills {share:.0f}% of one and the rest is silence" in texts(app)
    assert "lesson_window" not in [box.key for box in app.selectbox]


def test_lesson_of_long_audio_shows_the_picked_window_in_every_step(open_view, dashboard_store):
    trace = dashboard_store.retried
    first, second = trace.manifest["windows"]
    app = open_view("lesson", trace.id)
    no_exception(app)
    assert app.selectbox(key="lesson_window").value == 1  # the first window with speech; window 1 is noise
    shown = texts(app)
    assert "in **2 windows**" in shown and f"from **{second['start']:.2f} s to {second['end']:.2f} s**" in shown
    assert "of one and the rest" not in shown
    app.selectbox(key="lesson_window").select(0).run()
    assert f"from **{first['start']:.2f} s to {first['end']:.2f} s**" in texts(app)
    assert "skipped as no speech" in texts(app)
    for _ in range(2):  # this trace ran without activations: no conv stem or encoder steps
        app.button(key="lesson_next").click().run()
    assert app.subheader[0].value == "The special-token prompt"
    by_window = {}
    for index, window in enumerate((first, second)):
        app.selectbox(key="lesson_window").select(index).run()
        no_exception(app)
        by_window[index] = texts(app)
        assert f"**Window {index + 1}**: language token `<|{window['language']}|>`" in by_window[index]
        assert f"p = {window['language_probability']:.3f}; no-speech p = " \
               f"{window['no_speech_probability']:.3f}" in by_window[index]
        assert all(token in by_window[index] for token in window["prompt_tokens"])
    assert f"{first['no_speech_probability']:.3f}" not in by_window[1]
    app.button(key="lesson_next").click().run()
    assert app.subheader[0].value == "Which language?"
    languages = image_urls(app)
    app.selectbox(key="lesson_window").select(0).run()
    assert image_urls(app) != languages  # each window's own language distribution
    app.selectbox(key="lesson_window").select(1).run()
    app.button(key="lesson_next").click().run()
    cross = image_urls(app)
    app.selectbox(key="lesson_window").select(0).run()
    assert image_urls(app) != cross and not app.error
    app.button(key="lesson_next").click().run()
    first_tokens = texts(app)
    app.selectbox(key="lesson_window").select(1).run()
    second_tokens = texts(app)
    assert " Whis" in second_tokens and " Whis" not in first_tokens
    assert "not in the transcript" in first_tokens and "not in the transcript" not in second_tokens


def test_plugin_records_view_browses_every_record_and_a_plugin_page_of_its_own(open_view, dashboard_store):
    trace = dashboard_store.english
    app = open_view("plugin_records", trace.id)
    no_exception(app)
    records = app.selectbox(key="plugin_record").options
    assert len(records) == len(trace.records)
    assert records[0].startswith("conv_energy.rms")  # the README's plugin: no page of its own, so first
    assert len(app.image) == 1  # its [window, frame] tensor as a heatmap
    app.selectbox(key="plugin_record").set_value("loudness.rms").run()
    assert app.get("arrow_line_chart") or app.get("vega_lite_chart") or app.get("arrow_vega_lite_chart")
    app.selectbox(key="plugin_record").set_value("loudness.summary").run()
    assert list(app.dataframe[0].value["statistic"]) == ["peak", "mean"]
    app.selectbox(key="plugin_record").set_value("cross_attention.weights").run()
    no_exception(app)
    assert "[layer, head, token, frame]" in texts(app) and "units: attention probability" in texts(app)
    assert [s.label for s in app.slider] == ["layer", "head"] and len(app.image) == 1
    page = open_view("loudness", trace.id)  # the loudness plugin's page, in the navigation
    peak = trace.table("loudness.summary")[0]["value"]
    assert [(m.label, m.value) for m in page.metric] == [("Peak RMS loudness", f"{peak:.4f}")]
    without = open_view("overview", dashboard_store.translate.id)
    assert "Loudness" not in listed(without)


def test_new_trace_records_an_upload_and_selects_it(open_view, dashboard_store):
    app = open_view("new_trace")
    assert app.button(key="new_run").disabled
    clip = Path(dashboard_store.english.audio_source)
    app.file_uploader(key="new_upload").set_value((clip.name, clip.read_bytes(), "audio/flac"))
    app.multiselect(key="new_plugins").set_value(["token_probs"])
    app.text_input(key="new_name").input("uploaded fox")
    app.run()
    assert not app.button(key="new_run").disabled
    before = set(Store(dashboard_store.path))
    app.button(key="new_run").click().run()
    no_exception(app)
    new = set(Store(dashboard_store.path)) - before
    assert len(new) == 1
    trace = Store(dashboard_store.path).open(new.pop())
    assert trace.name == "uploaded fox"
    assert set(trace.manifest["plugins"]) & set(DEFAULT_PLUGINS) == {"token_probs"}
    assert app.title[0].value == "Overview" and trace.transcript in texts(app)
    assert app.sidebar.selectbox(key="trace").value == trace.id
    Store(dashboard_store.path).delete(trace.id)


def test_export_download_appears_after_preparing(open_view, dashboard_store):
    assert context.export_available()
    app = open_view("overview", dashboard_store.english.id)
    app.sidebar.selectbox(key="export_format").select("json").run()
    app.sidebar.button(key="export_prepare").click().run()
    no_exception(app)
    assert app.get("download_button")
