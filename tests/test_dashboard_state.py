"""Interactive state that follows the window, and the Lesson's encoder chapter, on a two-window trace.

Under Streamlit's AppTest on the session store's ``two_windows`` trace (35.7 s, speech in both
windows): switching the cross-attention window resets the picked token and word, the word picker
and table hold that window's words only, and every token's playback span lies inside its window,
on its DTW word timing (or, for tokens of no word, between the neighbouring words).  The Lesson
shows the encoder output itself ([1500, d_model] over seconds, speech and padding apart), names the
transformers call behind each step, and does the window arithmetic of a clip longer than 30 s.
The encoder output the lecture set records is checked against ``model.model.encoder(...)`` on the
tiny random model, also when a long run spills it to disk.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import probe
from probe import figures
from probe.plugins.activations.encoder_output import ENCODER_OUTPUT, audio_frames, speech_and_padding
from probe.plugins.cross_attention.figures import attended_span, cross_attention_rows, timed_words, token_word
from probe.plugins.cross_attention.views import token_key, word_key
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)
from tests.test_dashboard import open_view, texts  # noqa: F401  (open_view: fixture)

MARGIN = 0.06  # attended_span's default widening, seconds


@pytest.fixture(scope="module")
def two_windows(dashboard_store):
    trace = dashboard_store.two_windows
    windows = trace.manifest["windows"]
    assert len(windows) == 2 and not any(w.get("skipped") for w in windows)
    assert {w["window"] for w in trace.words()} == {0, 1}  # speech (timed words) in both windows
    return trace


def token_options(app, window: int) -> list:
    return app.selectbox(key=token_key(window)).options


@pytest.mark.integration
def test_switching_the_cross_attention_window_resets_token_and_word(open_view, two_windows):
    app = open_view("cross_attention", two_windows.id)
    assert not app.exception
    first_window = token_options(app, 0)
    app.selectbox(key=token_key(0)).set_value(_steps(two_windows, 0)[5]).run()
    app.selectbox(key=word_key(0)).set_value(4).run()
    assert app.selectbox(key=token_key(0)).value == _steps(two_windows, 0)[5]
    assert app.selectbox(key=word_key(0)).value == 4

    app.selectbox(key="cross_window").set_value(1).run()
    assert not app.exception
    assert app.selectbox(key=token_key(1)).value == _steps(two_windows, 1)[0]  # the first token of window 2
    assert app.selectbox(key=word_key(1)).value == 0
    assert token_options(app, 1) != first_window and len(token_options(app, 1)) == len(_steps(two_windows, 1))
    words = timed_words(two_windows, 1)
    assert app.selectbox(key=word_key(1)).options == [f"{w['word'].strip()} ({w['start']:.2f}–{w['end']:.2f} s)"
                                                       for w in words]
    table = app.dataframe[0].value
    assert list(table["window"]) == [2] * len(words)  # numbered from 1, as the picker shows
    assert list(table["start (s)"]) == [w["start"] for w in words]
    first_word = words[0]
    assert (f"Part of the word “{first_word['word'].strip()}”, which DTW on the alignment heads places at "
            f"{first_word['start']:.2f}–{first_word['end']:.2f} s") in texts(app)
    assert f"{len(words)} words of window 2" in texts(app)

    app.selectbox(key=token_key(1)).set_value(_steps(two_windows, 1)[3]).run()
    app.selectbox(key="cross_window").set_value(0).run()  # and back: window 1's first token again
    assert app.selectbox(key=token_key(0)).value == _steps(two_windows, 0)[0]


@pytest.mark.integration
def test_the_picked_token_survives_a_change_of_attention_source(open_view, two_windows):
    app = open_view("cross_attention", two_windows.id)
    text_step = _steps(two_windows, 0)[6]
    app.selectbox(key=token_key(0)).set_value(text_step).run()
    app.selectbox(key="cross_source").set_value(2).run()  # a layer: every token, timestamps too
    assert not app.exception
    assert app.selectbox(key=token_key(0)).value == text_step
    assert len(token_options(app, 0)) > len(_steps(two_windows, 0))


def _steps(trace, window: int, layer: int | None = None) -> list[int]:
    return [token["step"] for token in cross_attention_rows(trace, layer, None, window)[1]]


@pytest.mark.integration
@pytest.mark.parametrize("layer", [None, 2])
def test_every_token_span_lies_in_its_window_on_its_word_timing(two_windows, layer):
    for window in range(2):
        start, end = figures.window_span(two_windows, window)
        words = timed_words(two_windows, window)
        assert words and all(word["window"] == window for word in words)
        _, tokens = cross_attention_rows(two_windows, layer, None, window)
        timed = 0
        for index, token in enumerate(tokens):
            low, high = attended_span(two_windows, index, layer, None, window)
            assert start <= low < high <= end, (window, token)
            word = token_word(two_windows, tokens, index, window)
            if word is not None:
                timed += 1
                assert token["is_text"] and token["token_id"] in word["tokens"]
                assert low == pytest.approx(max(start, word["start"] - MARGIN))
                assert high == pytest.approx(min(end, word["end"] + MARGIN))
            elif token["step"] < two_windows.manifest["windows"][window]["kept"]:
                # a timestamp or special token: its span lies between the words around it
                before = [w for w in map(lambda j: token_word(two_windows, tokens, j, window), range(index)) if w]
                after = [w for w in map(lambda j: token_word(two_windows, tokens, j, window),
                                        range(index + 1, len(tokens))) if w]
                assert low >= (before[-1]["start"] if before else start) - MARGIN - 1e-6, (window, token)
                assert high <= (after[0]["end"] if after else end) + MARGIN + 1e-6, (window, token)
        assert timed == sum(token["is_text"] for token in tokens)


@pytest.mark.integration
def test_the_encoder_output_figure_shows_the_matrix_over_seconds(two_windows):
    d_model = two_windows.manifest["model"]["config"]["d_model"]
    assert two_windows.records[ENCODER_OUTPUT]["shape"] == [2, 1500, d_model]
    start, end = figures.window_span(two_windows, 1)
    fig = figures.figure("encoder_output")(two_windows, window=1)
    heatmap, norms = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
    image = heatmap.get_images()[0]
    assert image.get_array().shape == (d_model, 1500)
    assert image.get_extent()[:2] == pytest.approx([start, start + 30])  # seconds of the clip, 30 s of input
    audio_end = start + audio_frames(two_windows, 1) / 50
    assert audio_end == pytest.approx(end, abs=0.02)
    dashed = [line.get_xdata()[0] for line in heatmap.get_lines() if line.get_linestyle() == "--"]
    assert dashed == [pytest.approx(audio_end)]
    assert "time in the clip (s)" in norms.get_xlabel()
    assert {"audio", "zero padding"} <= {text.get_text() for text in heatmap.texts}
    speech, padding = speech_and_padding(two_windows, 1)
    output = np.asarray(two_windows.tensor(ENCODER_OUTPUT)[1], dtype=np.float32)  # [frame, d_model]
    frames = audio_frames(two_windows, 1)
    # speech and padding are visibly different: their mean vectors are far apart
    apart = np.linalg.norm(output[:frames].mean(0) - output[frames:].mean(0))
    assert apart > 0.25 * min(speech, padding)
    full = figures.figure("encoder_output")(two_windows, window=0)  # window 1 is all audio: no padding marked
    assert not [line for ax in full.axes for line in ax.get_lines() if line.get_linestyle() == "--"]


def lesson_texts(app) -> dict[str, str]:
    """Every step's title → its text, walking the lesson with its Next button."""
    seen = {app.subheader[0].value: texts(app)}
    while not app.button(key="lesson_next").disabled:
        app.button(key="lesson_next").click().run()
        assert not app.exception
        seen[app.subheader[0].value] = texts(app)
    return seen


@pytest.mark.integration
def test_lesson_names_the_transformers_calls_and_shows_the_encoder_output(open_view, two_windows):
    app = open_view("lesson", two_windows.id)
    steps = lesson_texts(app)
    assert "processor.feature_extractor(" in steps["The sound"]
    assert "processor.feature_extractor(" in steps["The log-Mel spectrogram"]
    assert "model.model.encoder" in steps["The conv stem: 3000 → 1500"]
    assert "model.model.encoder(input_features).last_hidden_state" in steps["The encoder's output"]
    assert "processor.get_decoder_prompt_ids(" in steps["The special-token prompt"]
    assert "model.generate(" in steps["Cross-attention: listening while writing"]
    assert "model.detect_language(input_features)" in steps["Which language?"]
    assert "model.compute_transition_scores(" in steps["Tokens and their probabilities"]
    d_model = two_windows.manifest["model"]["config"]["d_model"]
    assert f"[1500, {d_model}]" in steps["The encoder's output"]
    while app.subheader[0].value != "The encoder's output":
        app.button(key="lesson_previous").click().run()
    assert len(app.image) == 1 and not app.error  # the encoder_output figure
    app.selectbox(key="lesson_window").set_value(1).run()
    frames = audio_frames(two_windows, 1)
    shown = texts(app)
    assert f"The first **{frames} frames ({frames / 50:.2f} s)** encode audio, the other {1500 - frames}" in shown
    speech, padding = speech_and_padding(two_windows, 1)
    assert f"{speech:.1f}, padding frames {padding:.1f}" in shown
    assert len(app.image) == 1 and not app.error


@pytest.mark.integration
def test_lesson_window_arithmetic_of_a_two_window_clip(open_view, two_windows):
    first, second = two_windows.manifest["windows"]
    seconds = two_windows.manifest["audio"]["duration"]
    assert 30 < seconds < 60
    app = open_view("lesson", two_windows.id)
    app.selectbox(key="lesson_window").set_value(0).run()
    shown = texts(app)
    assert f"This clip is **{seconds:.2f} s**" in shown
    assert f"needs at least **{math.ceil(seconds / 30)} windows**" in shown and "decoded it in **2 windows**" in shown
    assert "of one and the rest is silence" not in shown and "fills 100% of one" not in shown
    assert f"**Window 1** runs from **{first['start']:.2f} s to {first['end']:.2f} s**: 30.00 s of audio fill 100%" \
        in shown
    last = second["end"] - second["start"]
    assert f"The last, window 2, holds {last:.2f} s of audio ({last / 30 * 100:.0f}% of it); the rest is zero " \
           "padding." in shown
    app.selectbox(key="lesson_window").set_value(1).run()
    shown = texts(app)
    assert f"**Window 2** runs from **{second['start']:.2f} s to {second['end']:.2f} s**: {last:.2f} s of audio " \
           f"fill {last / 30 * 100:.0f}% of it; the rest is silence (zeros)." in shown


def test_the_lecture_set_records_the_encoder_output_of_every_window(tiny, tone, store, monkeypatch):
    import torch

    from probe.tracer import run as run_module

    def encoder_output(samples: np.ndarray) -> np.ndarray:  # [1500, d_model] of 30 s
        features = tiny.processor.feature_extractor(samples, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            return tiny.model.model.encoder(features).last_hidden_state[0].numpy()

    trace = probe.run(tone, model=tiny, store=store, max_new_tokens=3, language="en")
    expected = encoder_output(tone)
    recorded = trace.record(ENCODER_OUTPUT)
    assert recorded.shape == (1, 1500, tiny.model.config.d_model) and recorded.dtype == np.float16
    np.testing.assert_allclose(recorded[0].astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    assert trace.records["activations.encoder.hook_conv1"]["shape"][0] == 1

    monkeypatch.setattr(run_module, "SPILL_SECONDS", 1.0)  # a "long" run: the output goes to disk per window
    samples = np.tile(tone, 16)  # 32 s
    long = probe.run(samples, model=tiny, store=store, max_new_tokens=3, language="en")
    windows = len(long.manifest["windows"])
    assert windows >= 2
    assert long.records[ENCODER_OUTPUT]["shape"] == [windows, 1500, tiny.model.config.d_model]
    assert long.records["activations.encoder.hook_conv1"]["shape"][0] == 1  # the conv stem: first window only
    # (the last frame differs: the whole clip's log-Mel frames near 30 s see the audio after it)
    np.testing.assert_allclose(long.record(ENCODER_OUTPUT)[0, :-2].astype(np.float32),
                               encoder_output(samples[:480000])[:-2], rtol=1e-2, atol=1e-2)
