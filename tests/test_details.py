"""The small things a user meets first (issue #16, item 7): language names as openai-whisper takes
them, an upload named by its file name rather than its deleted temporary copy, the model's load
time beside the trace time, trace labels that say what a trace is, and Compare marking the
prompt tokens that differ.

Tracing uses the tiny random model with two new tokens (a few seconds); the dashboard checks of
Compare and the picker read the session's real store (``tests/dashboard_fixtures.py``).
"""

from __future__ import annotations

import dataclasses
import html
import re
import time
import types
import wave
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import probe
from probe.metrics import error_rates
import probe.dashboards
import probe.models
from probe import runner
from probe.cli import main
from probe.errors import OptionError
from probe.store import Store
from probe.tracer import DecodeOptions, language_code, language_codes
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)

APP = Path(probe.dashboards.__file__).with_name("app.py")
HIGHLIGHT = "#ffd54f"  # the colour context.prompt_chips gives highlighted tokens

# openai-whisper's tokenizer.py: names and the aliases its transcribe(language=...) accepts
NAMES = {"zh": "zh", "chinese": "zh", "Chinese": "zh", " MANDARIN ": "zh", "castilian": "es", "flemish": "nl",
         "haitian": "ht", "haitian creole": "ht", "letzeburgesch": "lb", "moldavian": "ro", "moldovan": "ro",
         "pushto": "ps", "panjabi": "pa", "sinhalese": "si", "valencian": "ca", "burmese": "my", "German": "de"}


def _wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture
def fresh_loads(tiny, monkeypatch):
    """probe.models.load_model hands out a fresh copy of the tiny model (sharing its weights) after
    0.2 s, a load runner.load() times; the copies never touch the session's ``tiny``."""
    def load(*args, **kwargs):
        time.sleep(0.2)
        return dataclasses.replace(tiny)

    monkeypatch.setattr(probe.models, "load_model", load)


# --------------------------------------------------------------------------- language names


@pytest.mark.parametrize("name", sorted(NAMES))
def test_language_names_and_aliases_become_the_models_code(tiny, name):
    assert language_code(name, language_codes(tiny)) == NAMES[name]


@pytest.mark.parametrize("typed, nearest", [("chinse", "chinese"), ("germn", "german"), ("Castillian", "castilian")])
def test_a_misspelt_language_is_one_line_naming_the_nearest(tiny, typed, nearest):
    with pytest.raises(OptionError) as err:
        language_code(typed, language_codes(tiny))
    message = str(err.value)
    assert message.startswith(f"unknown language {typed!r}; use an ISO code") and "\n" not in message
    assert message.endswith(f"did you mean {nearest!r}?")
    with pytest.raises(OptionError, match="unknown language 'klingon'; use an ISO code") as err:
        language_code("klingon", language_codes(tiny))
    assert "did you mean" not in str(err.value)


def test_english_only_models_take_english_by_any_name_and_refuse_others(tiny):
    english_only = types.SimpleNamespace(model=tiny.model, model_id="tiny.en", is_multilingual=False)
    for name in ("en", "English", " ENGLISH"):
        options = DecodeOptions(language=name)
        options.validate(english_only)
        assert options.language is None  # an English-only model's prompt has no language token
    with pytest.raises(OptionError, match="tiny.en is English-only; drop --language"):
        DecodeOptions(language="Chinese").validate(english_only)


def test_the_command_line_takes_a_language_name(tiny, tmp_path, capsys, tone):
    model = tmp_path / "tiny"
    tiny.model.save_pretrained(model)
    tiny.processor.save_pretrained(model)
    clip = _wav(tmp_path / "tone.wav", tone)
    code = main(["run", str(clip), "--model", str(model), "--device", "cpu", "--language", "Mandarin",
                 "--max-new-tokens", "2", "-p", "no:activations", "-p", "no:logit_lens",
                 "--store", str(tmp_path / "store")])
    assert code == 0, capsys.readouterr().err
    (trace,) = Store(tmp_path / "store")
    trace = Store(tmp_path / "store").open(trace)
    assert trace.manifest["decode"]["language"] == "zh"
    assert [t["token"] for t in trace.manifest["prompt"]][1] == "<|zh|>"


# --------------------------------------------------------------------------- source name and load time


def test_a_named_source_and_the_load_time_reach_the_manifest_once(fresh_loads, tmp_path, tone, capsys):
    loaded = runner.load("tiny")
    store = Store(tmp_path / "store")
    quick = {"store": store, "max_new_tokens": 2, "disable": ["activations", "logit_lens", "attention"]}
    first = probe.run(tone, model=loaded, source="lecture.mp3", language="chinese", **quick)
    again = probe.run(tone, model=loaded, **quick)
    assert first.audio_source == "lecture.mp3" and first.name == "lecture"
    assert first.manifest["timings"]["load"] >= 0.2  # this trace waited for the load
    assert again.manifest["timings"]["load"] == 0.0 and again.audio_source == "array"
    assert first.manifest["timings"]["load"] not in (first.manifest["timings"]["total"], 0)
    with pytest.raises(TypeError, match="is about one input"):
        probe.run([tone, tone], model=loaded, source="lecture.mp3", **quick)
    said = probe.run(tone, model=loaded, reference="a tone", **quick)  # a reference: WER/CER in the metrics
    assert said.manifest["reference"] == {"text": "a tone", "column": None}
    assert said.manifest["metrics"]["wer"] == round(error_rates("a tone", said.transcript, said.language).wer, 4)

    for trace, said in ((first, "(model loaded in "), (again, "(model already loaded)")):
        assert main(["show", trace.id, "--store", str(store.path)]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("traced in"))
        assert re.fullmatch(r"traced in \d+\.\d s " + re.escape(said) + r"(\d+\.\d s\))?", line), line


# --------------------------------------------------------------------------- dashboard


@pytest.fixture
def app_on(monkeypatch):
    """app_on(store, view, trace=None) → the AppTest of ``view`` on ``store`` after its first run."""
    st.cache_data.clear()
    st.cache_resource.clear()

    def run(store: Path, view: str, trace: str | None = None) -> AppTest:
        monkeypatch.setenv("WHISPER_PROBE_STORE", str(store))
        app = AppTest.from_file(str(APP), default_timeout=120)
        if trace is not None:
            app.query_params["trace"] = trace
        return app.switch_page(f"views/{view}.py").run()

    yield run
    st.cache_data.clear()
    st.cache_resource.clear()


def _metric(app: AppTest, label: str):
    return next(metric for metric in app.metric if metric.label == label)


def test_an_upload_is_named_by_its_file_name_and_still_plays(fresh_loads, app_on, tmp_path, tone):
    store = tmp_path / "store"
    app = app_on(store, "new_trace")
    upload = _wav(tmp_path / "upload.wav", tone)
    app.file_uploader(key="new_upload").set_value(("lecture.wav", upload.read_bytes(), "audio/wav"))
    app.multiselect(key="new_plugins").set_value(["token_probs"])
    app.text_input(key="new_language").input("Mandarin")
    app.run()
    app.button(key="new_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    (trace_id,) = Store(store)
    trace = Store(store).open(trace_id)
    assert (trace.audio_source, trace.name, trace.language) == ("lecture.wav", "lecture", "zh")
    samples, rate = trace.audio()
    assert rate == 16000 and len(samples) == len(tone)
    assert app.title[0].value == "Overview"
    assert any("audio: `lecture.wav`" in caption.value for caption in app.main.caption)
    assert _metric(app, "Traced in").proto.delta.startswith("model loaded in ")  # the page loaded it


def test_overview_says_when_the_model_was_already_loaded(app_on, dashboard_store):
    app = app_on(dashboard_store.path, "overview", dashboard_store.english.id)
    traced = _metric(app, "Traced in")
    assert traced.value == f"{dashboard_store.english.manifest['timings']['total']:.1f} s"
    assert traced.proto.delta == "model already loaded"  # the fixture traced with a loaded model


def test_the_picker_label_says_name_task_language_and_model(app_on, dashboard_store):
    translate = dashboard_store.translate
    app = app_on(dashboard_store.path, "overview", translate.id)
    picker = app.sidebar.selectbox(key="trace")
    label = picker.format_func(translate.id)
    assert label.startswith(f"{translate.name} · translate <|zh|> · base · ")
    assert label.endswith(translate.id.rsplit("-", 1)[-1]) and label in picker.options
    assert len(set(picker.options)) == len(picker.options)
    details = " ".join(caption.value for caption in app.sidebar.caption)
    assert translate.id in details and translate.transcript[:40] in details


def _chips(app: AppTest) -> list[dict[str, str]]:
    """Each prompt of the page: token → its chip's background colour."""
    prompts = []
    for element in app.get("html"):
        body = html.unescape(element.proto.body)
        if "probe-prompt" in body:
            prompts.append(dict((token, colour) for colour, token in
                                re.findall(r"background:(#[0-9a-f]{6});[^>]*>(<\|[^<]*\|>)<br>", body)))
    return prompts


def test_compare_highlights_the_prompt_tokens_that_differ(app_on, dashboard_store):
    app = app_on(dashboard_store.path, "compare", dashboard_store.translate.id)
    assert app.selectbox(key="compare_trace").value == dashboard_store.transcribe.id
    mine, other = _chips(app)
    assert mine["<|translate|>"] == HIGHLIGHT and other["<|transcribe|>"] == HIGHLIGHT
    for prompt in (mine, other):
        assert prompt["<|startoftranscript|>"] != HIGHLIGHT and prompt["<|zh|>"] != HIGHLIGHT
    assert "Highlighted: prompt tokens the other trace does not have." in [c.value for c in app.caption]
