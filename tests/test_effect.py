"""An intervention's effect, and the cross-attention time-span block.

- ``block`` equals cross-attention over the encoder output with those frames cut out (the reference
  computed another way), and lands on the right frames of every long-form window, in decoding and
  in the replay;
- an intervened trace recorded into a store holding the clean one is measured against it: an
  identity intervention changes nothing (Δ log-prob exactly 0, equal cross-attention, WER 0), the
  clean pass gives the log-probabilities decoding gave, a real change shows; ``--clean`` naming
  a wrong trace is a one-line error with nothing written;
- WER/CER after Whisper's normalisation, the word diff, and the effect in the export and the
  Compare view.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

import probe
from probe import hooks as hooks_mod
from probe.errors import OptionError
from probe.hooks import hooks_left
from probe.interventions import Ablate, Block, Steer, apply, blocked_frames, resolve
from probe.metrics import error_rates, normalize, word_diff
from tests.conftest import store_snapshot

RUN = dict(max_new_tokens=8, language="en", seed=0)
APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"


def test_blocked_frames_follow_the_window_start():
    block = Block(31.0, 33.0)
    assert blocked_frames(block, seek=3000, frames=1500) == (50, 150)  # window from 30 s: 1–3 s into it
    assert blocked_frames(block, seek=0, frames=1500) == (1500, 1500)  # past the first window's end
    assert blocked_frames(Block(0.01, 0.03), seek=0, frames=1500) == (0, 2)  # frames touched at all
    assert blocked_frames(Block(29.0, 45.0), seek=0, frames=1500) == (1450, 1500)


def test_block_equals_attending_to_the_encoder_output_without_those_frames(tiny):
    """Masking frames 50–150 of every cross-attention is the decoder run on the encoder output with
    those frames removed (its positions were added in the encoder, so nothing else moves)."""
    model = tiny.model
    torch.manual_seed(0)
    features = torch.randn(1, model.config.num_mel_bins, 3000)
    ids = torch.tensor([[50258, 50259, 50359, 50363, 400, 401, 402]])
    block = resolve(model.config, [{"kind": "block", "start": 1.0, "end": 3.0}])
    with torch.inference_mode():
        encoded = model.model.encoder(features).last_hidden_state  # [1, frame, d_model]
        keep = torch.ones(encoded.shape[1], dtype=torch.bool)
        keep[50:150] = False
        reference = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded[:, keep]).last_hidden_state
        with hooks_mod.Hooks(model) as hooks:
            apply(hooks, model, block)
            blocked = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
        clean = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
    torch.testing.assert_close(blocked, reference, rtol=1e-5, atol=1e-5)
    assert (blocked - clean).abs().max() > 1e-3
    assert hooks_left(model) == 0


def test_block_lands_on_each_long_form_windows_own_frames(tiny, tmp_path):
    """42 s, blocked 31–33 s: only the second window (from 30 s) loses frames 50–150, in the
    patterns seen while decoding and in the replay the cross_attention plugin records."""
    t = np.arange(42 * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    trace = probe.run(audio, model=tiny, store=tmp_path / "s", language="en", seed=0, max_new_tokens=6,
                      points=["decoder.blocks.0.cross_attn.hook_pattern"],
                      interventions=[{"kind": "block", "start": 31.0, "end": 33.0}])
    windows = trace.manifest["windows"]
    assert [w["seek"] for w in windows][:2] == [0, 3000]
    decoding = np.asarray(trace.record("activations.decoder.blocks.0.cross_attn.hook_pattern"),
                          dtype=np.float64)[0]  # [head, query, frame], windows one after another
    on_span = decoding[..., 50:150].sum(-1).max(0)  # [query]
    blind = on_span < 1e-6
    assert 0 < blind.sum() < len(blind)
    assert blind[-int(blind.sum()):].all()  # the second window's queries, which come last
    replay = np.asarray(trace.record("cross_attention.weights"), dtype=np.float64)  # [layer, head, token, frame]
    rows = trace.table("cross_attention.tokens")
    second = np.array([row["window"] == 1 for row in rows])
    span = replay[..., 50:150].sum(-1).max(axis=(0, 1))  # [token]
    assert second.any() and (span[second] < 1e-3).all() and (span[~second] > 1e-3).all()
    assert hooks_left(tiny.model) == 0


@pytest.mark.parametrize("spec, message", [
    ({"kind": "block", "start": 3.0, "end": 2.0}, "is not a span of the clip"),
    ({"kind": "block", "start": -1, "end": 2.0}, "is not a span of the clip"),
    ({"kind": "block", "start": 1, "end": 2, "layers": [2]}, "decoder layer 2 is out of range; this model has layers 0–1"),
    ({"kind": "block", "start": "a", "end": 2}, "start and end numbers"),
    ({"kind": "block", "start": 1}, "missing field 'end'"),
])
def test_bad_block_specs_are_one_line_errors(tiny, spec, message):
    with pytest.raises(OptionError, match=message) as caught:
        resolve(tiny.model.config, [spec])
    assert "\n" not in str(caught.value)


def test_an_identity_intervention_has_no_effect_on_the_clean_transcript(tiny, tone, tmp_path):
    store = tmp_path / "store"
    clean = probe.run(tone, model=tiny, store=store, **RUN)
    same = probe.run(tone, model=tiny, store=store, **RUN,
                     interventions=[Steer("decoder.blocks.0.hook_resid_post", tuple(np.ones(64)), alpha=0.0)])
    effect = same.manifest["effect"]
    assert effect["clean"] == clean.id and effect["tokens_equal"]
    assert effect["wer"] == 0.0 and effect["delta_logprob_total"] == 0.0 and effect["cross_attention_change"] == 0.0
    rows = same.table("effect.logprobs")
    assert len(rows) == len(clean.manifest["windows"][0]["tokens"]) and all(row["delta"] == 0.0 for row in rows)
    weights = np.asarray(same.record("effect.cross_attention"), dtype=np.float32)  # [arm, token, frame]
    assert weights.shape[:2] == (2, len(rows)) and np.array_equal(weights[0], weights[1])
    # the clean pass is the model decoding gave: each token's log-probability as token_probs recorded it
    decoded = [row["logprob"] for row in clean.table("token_probs.tokens")]
    np.testing.assert_allclose([row["clean"] for row in rows], decoded, atol=2e-3)
    assert hooks_left(tiny.model) == 0


def test_an_ablation_is_measured_against_the_newest_clean_trace(tiny, tone, tmp_path):
    store = tmp_path / "store"
    probe.run(tone, model=tiny, store=store, **RUN, name="older")
    clean = probe.run(tone, model=tiny, store=store, **RUN)
    probe.run(tone, model=tiny, store=store, max_new_tokens=4, language="en", seed=0)  # other options: not a match
    ablated = probe.run(tone, model=tiny, store=store, **RUN,
                        interventions=[Ablate("decoder.cross_attn", 0, (0, 1, 2, 3))])  # layer 1 listens otherwise
    effect = ablated.manifest["effect"]
    assert effect["clean"] == clean.id
    rows = ablated.table("effect.logprobs")
    assert any(abs(row["delta"]) > 1e-3 for row in rows)
    assert effect["delta_logprob_total"] == pytest.approx(sum(r["delta"] for r in rows if r["in_transcript"]), abs=1e-4)
    assert effect["cross_attention_change"] > 0
    assert effect["clean_transcript"] == clean.transcript
    none = probe.run(tone, model=tiny, store=store, **RUN, clean=None,
                     interventions=[Ablate("decoder.cross_attn", 1, (0,))])
    assert "effect" not in none.manifest and "effect.logprobs" not in none.records


def test_a_clean_trace_of_other_audio_is_refused_with_nothing_written(tiny, tone, tmp_path):
    store = tmp_path / "store"
    other = probe.run(tone * 0.5, model=tiny, store=store, **RUN)
    before = store_snapshot(store)
    with pytest.raises(OptionError, match="was recorded from other audio") as caught:
        probe.run(tone, model=tiny, store=store, **RUN, clean=other.id,
                  interventions=[Ablate("decoder.self_attn", 0, (1,))])
    assert "\n" not in str(caught.value)
    assert store_snapshot(store) == before and hooks_left(tiny.model) == 0


def test_clean_without_intervene_exits_2(tmp_path, en_clip):
    run = subprocess.run([sys.executable, "-m", "probe", "run", str(en_clip), "--store", str(tmp_path / "s"),
                          "--clean", "abc"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "add --intervene SPEC" in run.stderr and run.stderr.count("\n") == 1


def test_error_rates_normalise_as_whisper_does():
    assert error_rates("Hello, world! It's 10 percent.", "hello world it is 10%").wer == 0.0
    rates = error_rates("the cat sat on the mat", "the cat sat on a hat")
    assert rates.wer == pytest.approx(2 / 6) and rates.substitutions == 2 and rates.headline == "wer"
    chinese = error_rates("你好世界", "你好时界。", "zh")
    assert chinese.headline == "cer" and chinese.wer == pytest.approx(0.25) and chinese.cer == pytest.approx(0.25)
    assert error_rates("", "").wer == 0.0 and error_rates("", "hello").wer == 1.0
    assert error_rates("a b c", "").deletions == 3
    assert normalize("Colour, MR. Smith!") == "colour mister smith"


def test_word_diff_matches_words_as_normalised_and_shows_them_as_written():
    runs = word_diff("Whisper is a speech model.", "whisper is a fast speech Model")
    assert runs == [("equal", "Whisper is a", "whisper is a"), ("insert", "", "fast"),
                    ("equal", "speech model.", "speech Model")]
    assert word_diff("你好世界", "你好时界", "zh") == [("equal", "你好", "你好"), ("replace", "世", "时"),
                                                      ("equal", "界", "界")]


@pytest.fixture(scope="module")
def effect_store(tmp_path_factory, tiny):
    """A store with a clean trace of a tone and an ablated one measured against it."""
    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    store = tmp_path_factory.mktemp("effect")
    clean = probe.run(tone, model=tiny, store=store, name="clean", **RUN)
    ablated = probe.run(tone, model=tiny, store=store, name="ablated", **RUN,
                        interventions=[Ablate("decoder.cross_attn", 0, (0, 1, 2, 3))])
    return store, clean, ablated


def test_the_export_shows_the_effect(effect_store, tmp_path):
    store, clean, ablated = effect_store
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "probe", "export", ablated.id, "--store", str(store), "-f", "html,png",
                          "-o", f"{out}/"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    page = (out / f"{ablated.id}.html").read_text(encoding="utf-8")
    assert '<section id="effect">' in page and "ablate decoder.cross_attn layer 0 heads [0, 1, 2, 3]" in page
    assert clean.id in page
    for name in ("effect_logprobs", "effect_cross_attention"):
        assert (out / f"{ablated.id}-{name}.png").stat().st_size > 10_000
    plain = subprocess.run([sys.executable, "-m", "probe", "export", clean.id, "--store", str(store), "-f", "html",
                            "-o", f"{out}/"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and 'id="effect"' not in (out / f"{clean.id}.html").read_text(encoding="utf-8")


def test_the_compare_view_opens_an_intervened_trace_against_its_clean_one(effect_store, monkeypatch):
    store, clean, ablated = effect_store
    monkeypatch.setenv("WHISPER_PROBE_STORE", str(store))
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.query_params["trace"] = ablated.id
    app = app.switch_page("views/compare.py").run()
    assert not app.exception
    assert app.selectbox(key="compare_trace").value == clean.id
    assert "Effect of the intervention" in [h.value for h in app.subheader]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["WER vs clean"] == f"{ablated.manifest['effect']['wer']:.1%}"
    assert metrics["Δ log-prob (clean transcript)"] == f"{ablated.manifest['effect']['delta_logprob_total']:+.2f}"
    assert len(app.image) >= 3  # the chosen figure for each trace, the log-prob and cross-attention figures
    st.cache_data.clear()
