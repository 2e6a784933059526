"""Long-form decoding, traced faithfully: real base weights on a > 60 s recording the project makes.

The traced tokens must equal plain transformers ``model.generate(long_features, attention_mask=...,
return_timestamps=True, ...)`` token for token — greedy, with conditioning on previous text, with
seeded temperature fallback, with a prompt — and the trace must say where everything came from:
each window's seek, its attempts and why one was kept, its segments, words in order inside the clip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from probe.audio import audio_from_array
from probe.hooks import hooks_left
from probe.tracer import OPENAI_DEFAULTS
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

sys.path.insert(0, str(ROOT / "scripts"))
from make_examples import LECTURE_SENTENCES, Espeak, code_switching_recording, lecture_recording  # noqa: E402


@pytest.fixture(scope="module")
def espeak():
    return Espeak()


@pytest.fixture(scope="module")
def lecture(espeak):
    """About 74 s of English speech: 16 distinct sentences with pauses (three windows)."""
    return audio_from_array(lecture_recording(espeak), 16000, source="lecture-74s")


def plain_long_form(loaded, samples: np.ndarray, seed: int | None = None, **kwargs) -> list[int]:
    """What a transformers user runs on long audio (its docs' recipe), without any hook."""
    inputs = loaded.processor(samples, sampling_rate=16000, return_tensors="pt", truncation=False,
                              padding="longest", return_attention_mask=True)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = loaded.model.generate(inputs.input_features, attention_mask=inputs.attention_mask,
                                    return_timestamps=True, **kwargs)
    tokens = out[0].tolist()
    pad = loaded.model.generation_config.pad_token_id
    while tokens and tokens[-1] == pad:
        tokens.pop()
    return tokens


def traced(base, store, clip, **options):
    trace = probe.run(clip, model=base, store=store, disable=["attention", "logit_lens"], timestamps=True,
                      **options)
    assert hooks_left(base.model) == 0
    return trace


def assert_windows_chain(trace, duration: float) -> None:
    """Windows start where the previous one's transcript ended (seek), and cover the clip."""
    windows = trace.manifest["windows"]
    assert len(windows) >= 3
    assert windows[0]["seek"] == 0
    for before, after in zip(windows, windows[1:]):
        assert after["seek"] == before["next_seek"] > before["seek"]
        assert after["start"] == pytest.approx(after["seek"] / 100)
    assert windows[-1]["end"] == pytest.approx(duration, abs=0.02)


def assert_words_in_order_inside(trace, duration: float, at_least: int = 100) -> None:
    words = trace.words()
    assert len(words) > at_least
    for before, after in zip(words, words[1:]):
        assert after["start"] >= before["end"] - 1e-6
    assert all(0 <= w["start"] <= w["end"] <= duration + 1e-6 for w in words)
    windows = {w["index"] for w in trace.manifest["windows"]}
    assert {w["window"] for w in words} == windows  # every window's words are tagged with it


def test_greedy_long_form_equals_plain_generate(base, store, lecture):
    trace = traced(base, store, lecture, language="en")
    assert trace.manifest["sequence"] == plain_long_form(base, lecture.samples, language="en")
    assert_windows_chain(trace, lecture.duration)
    assert_words_in_order_inside(trace, lecture.duration)
    segments = [s["text"] for w in trace.manifest["windows"] for s in w["segments"]]
    assert len(segments) == len(set(segments)) >= len(LECTURE_SENTENCES) - 2  # no sentence twice
    first = trace.manifest["windows"][0]["segments"][0]
    assert first["text"].startswith("Whisper is a speech recognition model")
    # every per-token record knows its window
    tokens = trace.table("cross_attention.tokens")
    assert {row["window"] for row in tokens} == {w["index"] for w in trace.manifest["windows"]}
    assert trace.manifest["decode"]["timestamps"] is True


def test_conditioning_on_previous_text_equals_plain_generate(base, store, lecture):
    trace = traced(base, store, lecture, language="en", condition_on_prev_tokens=True)
    assert trace.manifest["sequence"] == plain_long_form(base, lecture.samples, language="en",
                                                         condition_on_prev_tokens=True)
    windows = trace.manifest["windows"]
    startofprev = base.processor.tokenizer.convert_tokens_to_ids("<|startofprev|>")
    assert windows[0]["prompt"][0] != startofprev
    later = windows[1]
    assert later["prompt"][0] == startofprev and later["sot_index"] > 1
    assert_words_in_order_inside(trace, lecture.duration)


def test_seeded_temperature_fallback_equals_plain_generate(base, store, lecture):
    """A compression-ratio threshold below what greedy gives here forces sampled retries."""
    options = dict(language="en", temperature=(0.0, 0.4, 0.8), compression_ratio_threshold=0.96,
                   logprob_threshold=-1.0)
    trace = traced(base, store, lecture, seed=7, **options)
    assert trace.manifest["sequence"] == plain_long_form(base, lecture.samples, seed=7, **options)
    attempts = [a for w in trace.manifest["windows"] for a in w["attempts"]]
    rejected = [a for a in attempts if a["verdict"] == "rejected"]
    assert rejected, "the threshold should have rejected a greedy attempt"
    for attempt in rejected:
        assert "compression ratio" in attempt["reason"] or "log-probability" in attempt["reason"]
        assert len(attempt["token_logprobs"]) == len(attempt["tokens"]) > 0
        assert all(p <= 0 for p in attempt["token_logprobs"])
    for window in trace.manifest["windows"]:
        assert window["attempts"][-1]["verdict"] in ("kept", "skipped")
        assert [a["attempt"] for a in window["attempts"]] == list(range(len(window["attempts"])))
        assert window["attempts"][-1]["tokens"] == window["tokens"]
    assert any(a["temperature"] > 0 for a in attempts)


def test_initial_prompt_equals_plain_generate(base, store, lecture):
    text = "A lecture about Whisper, timestamps and cross attention."
    trace = traced(base, store, lecture, language="en", initial_prompt=text)
    prompt_ids = base.processor.get_prompt_ids(text, return_tensors="pt")
    assert trace.manifest["sequence"] == plain_long_form(base, lecture.samples, language="en", prompt_ids=prompt_ids)
    first = trace.manifest["windows"][0]
    assert first["prompt"][: len(prompt_ids)] == prompt_ids.tolist() and first["sot_index"] == len(prompt_ids)


def test_a_full_30_second_window_with_timestamps_equals_plain_generate(base, store, lecture):
    """Exactly 30 s: short-form, yet generate() seeks inside the window by its timestamps."""
    clip = audio_from_array(lecture.samples[: 30 * 16000], 16000, source="lecture-30s")
    trace = traced(base, store, clip, language="en")
    features = base.processor(clip.samples, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        plain = base.model.generate(features, language="en", return_timestamps=True)[0].tolist()
    pad = base.model.generation_config.pad_token_id
    while plain and plain[-1] == pad:
        plain.pop()
    assert trace.manifest["sequence"] == plain
    segments = [s["text"] for w in trace.manifest["windows"] for s in w["segments"]]
    assert len(segments) == len(set(segments))


def speech_after_noise(espeak) -> np.ndarray:
    """31 s of faint noise, then one spoken sentence: the first window holds no speech."""
    noise = 0.01 * np.random.default_rng(0).standard_normal(31 * 16000).astype(np.float32)
    speech = audio_from_array(espeak.speak("Whisper is a speech recognition model.", "en-us+m3", 160),
                              sample_rate=espeak.sample_rate).samples
    return np.concatenate([noise, speech])


def test_a_window_without_speech_is_skipped_as_plain_generate_skips_it(base, store, espeak):
    samples = speech_after_noise(espeak)
    clip = audio_from_array(samples, 16000, source="noise-then-speech")
    trace = traced(base, store, clip, openai_defaults=True, seed=0)
    plain = plain_long_form(base, samples, seed=0, **OPENAI_DEFAULTS)
    assert trace.manifest["sequence"] == plain
    first, second = trace.manifest["windows"][:2]
    assert first["skipped"] and first["kept"] == 0 and first["segments"] == [] and first["text"] == ""
    assert first["no_speech_probability"] > OPENAI_DEFAULTS["no_speech_threshold"]
    skipped = first["attempts"][-1]
    assert skipped["verdict"] == "skipped" and "no speech" in skipped["reason"] and skipped["tokens"]
    assert second["seek"] == first["seek"] + 3000  # a skipped window moves seek a whole window on
    assert not second["skipped"] and "speech recognition model" in trace.transcript
    assert all(w["window"] != first["index"] for w in trace.words())


@pytest.fixture(scope="module")
def beam_fallback(base, tmp_path_factory):
    """The Mandarin clip translated with 3 beams under openai-whisper's fallback settings, keeping
    the cross-attention of rejected attempts: (clip, trace)."""
    from probe.store import Store
    from tests.conftest import EXAMPLES

    clip = probe.load_audio(EXAMPLES / "zh_hello.flac")
    trace = probe.run(clip, model=base, store=Store(tmp_path_factory.mktemp("beam") / "store"),
                      disable=["attention", "logit_lens"], num_beams=3, task="translate", language="zh",
                      openai_defaults=True, seed=0, plugin_options={"rejected_cross_attention": True})
    return clip, trace


def test_fallback_on_a_short_clip_under_beam_search(base, beam_fallback):
    """openai-whisper's settings reject the beam-search attempt and retry sampled, as plain
    generate() does with the same settings and seed; the trace keeps both attempts and why."""
    clip, trace = beam_fallback
    features = base.processor(clip.samples, sampling_rate=16000, return_tensors="pt").input_features
    torch.manual_seed(0)
    with torch.inference_mode():
        plain = base.model.generate(features, num_beams=3, task="translate", language="zh", **OPENAI_DEFAULTS)
    pad = base.model.generation_config.pad_token_id
    assert trace.manifest["sequence"] == [t for t in plain[0].tolist() if t != pad]
    (window,) = trace.manifest["windows"]
    first, *rest = window["attempts"]
    assert first["verdict"] == "rejected" and first["num_beams"] == 3 and first["temperature"] == 0.0
    assert "log-probability" in first["reason"] or "compression ratio" in first["reason"]
    assert rest and rest[-1]["verdict"] == "kept" and rest[-1]["temperature"] > 0 and rest[-1]["num_beams"] == 1
    assert window["tokens"] == rest[-1]["tokens"]
    # token_probs recorded the kept attempt only
    assert len(trace.table("token_probs.tokens")) == len(window["tokens"])
    # what the rejected attempt attended to (asked for): the alignment heads' mean, equal to the
    # softmax(q·kᵀ) of those heads computed by hand from each layer's cross-attention input.
    # (Not output_attentions=True: transformers leaves its recording hooks on the shared model.)
    rows = trace.table("cross_attention.rejected_tokens")
    assert [r["token_id"] for r in rows] == first["tokens"] and {r["attempt"] for r in rows} == {0}
    kept = trace.tensor("cross_attention.rejected")  # [token, frame]
    assert kept.shape[0] == len(first["tokens"])
    prompt, decoder = window["prompt"], base.model.model.decoder
    layers = sorted({layer for layer, _ in base.alignment_heads})
    queries = {}

    def keep_query_input(layer):
        def keep(module, args, kwargs):
            queries[layer] = kwargs.get("hidden_states", args[0] if args else None)  # [1, query, d_model]
        return keep

    handles = [decoder.layers[layer].encoder_attn.register_forward_pre_hook(keep_query_input(layer), with_kwargs=True)
               for layer in layers]
    try:
        with torch.inference_mode():
            encoded = base.model.model.encoder(features).last_hidden_state  # [1, frame, d_model]
            decoder(input_ids=torch.tensor([prompt + first["tokens"]]), encoder_hidden_states=encoded,
                    use_cache=False)
            heads = []
            for layer, head in base.alignment_heads:
                attn = decoder.layers[layer].encoder_attn
                size = attn.head_dim
                q = (attn.q_proj(queries[layer]) * attn.scaling)[0, :, head * size:(head + 1) * size]  # [query, d]
                k = attn.k_proj(encoded)[0, :, head * size:(head + 1) * size]  # [frame, d]
                heads.append((q @ k.T).softmax(-1))  # [query, frame]
    finally:
        for handle in handles:
            handle.remove()
    reference = torch.stack(heads).mean(0)[len(prompt) - 1: len(prompt) - 1 + len(first["tokens"]), :kept.shape[1]]
    assert np.abs(reference.numpy() - kept.astype(np.float32)).max() < 1e-3
    assert hooks_left(base.model) == 0


def test_a_clip_that_loops_under_beam_search_is_rejected_by_its_compression_ratio(base, store):
    """6 s of 120 Hz mains hum: beam search loops ("I'm sorry. I'm sorry. ..."); openai-whisper's
    settings reject that attempt by its compression ratio, as plain generate() with the same
    settings and seed does, and the trace shows both attempts and why."""
    hum = (0.05 * np.sin(2 * np.pi * 120 * np.arange(16000 * 6) / 16000)).astype(np.float32)
    options = dict(num_beams=3, task="translate", language="zh", max_new_tokens=60)
    trace = probe.run(hum, model=base, store=store, disable=["attention", "logit_lens", "activations"],
                      openai_defaults=True, seed=0, **options)
    features = base.processor(hum, sampling_rate=16000, return_tensors="pt").input_features
    torch.manual_seed(0)
    with torch.inference_mode():
        plain = base.model.generate(features, **options, **OPENAI_DEFAULTS)
    assert trace.manifest["sequence"] == plain[0].tolist()
    (window,) = trace.manifest["windows"]
    looping, *rest = window["attempts"]
    assert looping["num_beams"] == 3 and looping["verdict"] == "rejected"
    assert looping["compression_ratio"] > OPENAI_DEFAULTS["compression_ratio_threshold"]
    assert "compression ratio" in looping["reason"] and "retried" in looping["reason"]
    text = looping["text"]
    assert len(text) > 40 and text.count(text.split(".")[0] + ".") >= 4  # one sentence, over and over
    assert rest and rest[0]["temperature"] > 0 and rest[-1]["verdict"] in ("kept", "skipped")
    assert rest[-1]["tokens"] != looping["tokens"]


def test_dashboard_draws_where_the_rejected_attempt_listened(beam_fallback, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import probe.dashboards

    _, trace = beam_fallback
    monkeypatch.setenv("WHISPER_PROBE_STORE", str(trace.path.parent))
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(Path(probe.dashboards.__file__).with_name("app.py")), default_timeout=120)
    app.query_params["trace"] = trace.id
    app.switch_page("views/windows.py")
    app.run()
    assert not app.exception and not app.error
    assert [e.label.endswith("rejected") for e in app.expander] == [True, False]
    assert len(app.image) == 2  # the windows timeline, then the rejected attempt's cross-attention
    st.cache_data.clear()
    st.cache_resource.clear()


def test_cli_openai_defaults_and_show_list_attempts(capsys, tmp_path):
    from probe.cli import main
    from tests.conftest import EXAMPLES

    store = tmp_path / "store"
    code = main(["run", str(EXAMPLES / "zh_hello.flac"), "--store", str(store), "--num-beams", "3",
                 "--task", "translate", "--openai-defaults", "--seed", "0", "-p", "no:attention"])
    out = capsys.readouterr().out
    assert code == 0 and "attempts)" in out
    assert main(["show", "zh_hello", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "windows (seek, attempts and hallucination signals):" in shown
    assert "attempt 0 T=0.0: rejected" in shown and "attempt 1 T=0.2: kept" in shown


def test_batched_long_form_equals_plain_batched_generate(base, store, lecture):
    """Two long clips in one generate() call (transformers' batched long-form, attention mask)."""
    shorter = audio_from_array(lecture.samples[16000 * 20: 16000 * 62], 16000, source="lecture-42s")
    traces = probe.run([lecture, shorter], model=base, store=store, disable=["attention", "logit_lens"],
                       language="en", timestamps=True, batch_size=2)
    inputs = base.processor([lecture.samples, shorter.samples], sampling_rate=16000, return_tensors="pt",
                            truncation=False, padding="longest", return_attention_mask=True)
    with torch.inference_mode():
        out = base.model.generate(inputs.input_features, attention_mask=inputs.attention_mask,
                                  return_timestamps=True, language="en")
    pad = base.model.generation_config.pad_token_id
    for trace, row in zip(traces, out.tolist()):
        while row and row[-1] == pad:
            row.pop()
        assert trace.manifest["sequence"] == row
        assert_words_in_order_inside(trace, trace.manifest["audio"]["duration"], at_least=40)
    assert traces[1].manifest["windows"][-1]["end"] == pytest.approx(shorter.duration, abs=0.02)


def test_multilingual_gives_each_window_the_language_detected_on_it(base, store, espeak):
    """faster-whisper's multilingual=True: an English-then-German recording keeps <|en|> for both
    windows by default (transformers detects once, and translates the German half), and gets
    <|de|> for the German window with --multilingual — the language generate()'s own
    detect_language finds on that window's features."""
    samples = code_switching_recording(espeak)
    clip = audio_from_array(samples, 16000, source="en-then-de")
    once = traced(base, store, clip)
    each = traced(base, store, clip, multilingual=True)
    assert once.manifest["sequence"] == plain_long_form(base, samples)
    assert [w["language"] for w in once.manifest["windows"]] == ["en", "en"]
    assert [w["language"] for w in each.manifest["windows"]] == ["en", "de"]
    first_once, first_each = once.manifest["windows"][0], each.manifest["windows"][0]
    assert first_each["tokens"] == first_once["tokens"]  # same language detected: same decoding
    german = each.manifest["windows"][1]
    assert "Vorlesung" in german["text"] and "Vorlesung" not in once.manifest["windows"][1]["text"]
    assert german["language_probability"] > 0.5 and german["prompt_tokens"][german["sot_index"] + 1] == "<|de|>"
    # the reference: detect_language on the window generate() cut at seek (zero-padded to 3000)
    features = base.processor(samples, sampling_rate=16000, return_tensors="pt", truncation=False,
                              padding="longest").input_features
    window = features[..., german["seek"]: german["seek"] + 3000]
    window = torch.nn.functional.pad(window, (0, 3000 - window.shape[-1]))
    with torch.inference_mode():
        detected = base.model.detect_language(input_features=window)
    assert base.processor.tokenizer.convert_ids_to_tokens(detected.tolist()) == ["<|de|>"]
    assert hooks_left(base.model) == 0


def test_prefix_equals_plain_generate_with_the_forced_tokens(base, store):
    """--prefix forces text after the start tokens (openai-whisper's " " + prefix), as plain
    generate(decoder_input_ids=...) does; the language is detected first as generate() detects it."""
    from tests.conftest import EXAMPLES

    clip = probe.load_audio(EXAMPLES / "en_fox.flac")
    trace = probe.run(clip, model=base, store=store, disable=["attention", "logit_lens"], prefix="The quick")
    features = base.processor(clip.samples, sampling_rate=16000, return_tensors="pt").input_features
    gen, tokenizer = base.model.generation_config, base.processor.tokenizer
    forced = tokenizer.encode(" The quick", add_special_tokens=False)
    with torch.inference_mode():
        language = int(base.model.detect_language(input_features=features)[0])
        ids = [gen.decoder_start_token_id, language, gen.task_to_id["transcribe"], gen.no_timestamps_token_id] + forced
        plain = base.model.generate(features, decoder_input_ids=torch.tensor([ids]), task="transcribe")
    assert trace.manifest["sequence"] == plain[0].tolist()
    (window,) = trace.manifest["windows"]
    assert window["prompt"] == ids  # the prefix is part of the forced prompt, not of the decoded text
    assert trace.transcript.startswith("brown fox")
    assert len(trace.table("token_probs.tokens")) == len(window["tokens"])


def test_prefix_refuses_timestamps_and_long_audio_in_one_line(capsys, tmp_path):
    from probe.cli import main
    from tests.conftest import EXAMPLES

    store = tmp_path / "store"
    code = main(["run", str(EXAMPLES / "en_fox.flac"), "--store", str(store), "--prefix", "The", "--timestamps"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--prefix works without timestamps" in err[0]
    long_clip = tmp_path / "long.wav"
    import soundfile

    soundfile.write(long_clip, np.zeros(16000 * 31, np.float32), 16000)
    code = main(["run", str(long_clip), "--store", str(store), "--prefix", "The"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "up to 30 s" in err[0]
    assert main(["run", str(EXAMPLES / "en_fox.flac"), "--store", str(store), "--multilingual",
                 "--language", "en"]) == 2
    assert "drop --language" in capsys.readouterr().err
    assert not store.exists() or not list(store.glob("*/manifest.json"))  # nothing half-written
