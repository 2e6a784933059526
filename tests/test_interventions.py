"""Interventions during real decoding (probe.interventions): identity changes leave every token and
record as the clean trace has it, a head ablation and a steer equal the same change made in the
weights, they hold through long-form and beam search, bad specs are one-line errors with nothing
written, and no hook outlives a failing intervention.

The tiny random-initialised model decodes noise, deterministically: what is compared is that two
ways of making one change give the same trace, and that the change changes it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import probe
from probe.errors import OptionError
from probe.hooks import Hooks, hooks_left
from probe.interventions import ATTENTION, Ablate, Local, Patch, Replace, Steer, load_spec, resolve
from probe.models import tiny_random_model
from tests.conftest import store_snapshot

HEAD_DIM = 16  # the tiny model: d_model 64, 4 heads


def records(trace) -> dict:
    """Every record of ``trace`` as numbers: tensors as arrays, tables as their rows."""
    found = {}
    for name, entry in trace.records.items():
        if entry.get("kind") == "table":
            found[name] = trace.table(name)
        elif entry.get("kind") == "json":
            found[name] = trace.record(name)
        else:
            found[name] = np.asarray(trace.record(name), dtype=np.float64)
    return found


def close(one, other, rel: float = 1e-4, abs_: float = 1e-5) -> bool:
    """Equal, numbers to within float32 rounding, through lists, dicts and arrays."""
    if isinstance(one, np.ndarray) or isinstance(other, np.ndarray):
        return np.shape(one) == np.shape(other) and bool(np.allclose(one, other, rtol=rel, atol=abs_))
    if isinstance(one, bool) or isinstance(other, bool) or isinstance(one, str) or one is None:
        return one == other
    if isinstance(one, (int, float)) and isinstance(other, (int, float)):
        return bool(np.isclose(one, other, rtol=rel, atol=abs_))
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(close(one[k], other[k], rel, abs_) for k in one)
    if isinstance(one, (list, tuple)) and isinstance(other, (list, tuple)):
        return len(one) == len(other) and all(close(a, b, rel, abs_) for a, b in zip(one, other))
    return one == other


def assert_same_trace(one, other, rel: float = 1e-4, abs_: float = 1e-5, skip: tuple[str, ...] = ()):
    """Same tokens, and every record but those named in ``skip`` equal within ``rel`` / ``abs_``."""
    assert one.manifest["sequence"] == other.manifest["sequence"]
    assert [w["tokens"] for w in one.manifest["windows"]] == [w["tokens"] for w in other.manifest["windows"]]
    first, second = records(one), records(other)
    assert first.keys() == second.keys()
    for name, value in first.items():
        if name not in skip:
            assert close(value, second[name], rel, abs_), name


def differs(one, other) -> bool:
    """Whether any record of the two traces differs (the tiny model may emit the same tokens)."""
    first, second = records(one), records(other)
    return any(not close(value, second[name]) for name, value in first.items())


def zeroed_heads(kind: str, layer: int, heads: list[int]):
    """The tiny model with those heads' columns of out_proj zeroed: the ablation made in the weights."""
    loaded = tiny_random_model()
    attention = loaded.model.get_submodule(ATTENTION[kind][0].format(layer=layer))
    with torch.no_grad():
        for head in heads:
            attention.out_proj.weight[:, head * HEAD_DIM:(head + 1) * HEAD_DIM] = 0
    return loaded


RUN = dict(max_new_tokens=8, language="en", seed=0)


@pytest.mark.parametrize("kind", list(ATTENTION))
def test_head_ablation_equals_zeroing_the_heads_columns_of_out_proj(tiny, tone, tmp_path, kind):
    clean = probe.run(tone, model=tiny, store=tmp_path / "clean", **RUN)
    ablated = probe.run(tone, model=tiny, store=tmp_path / "ablated", **RUN,
                        interventions=[Ablate(kind, 1, (0, 2))])
    reference = probe.run(tone, model=zeroed_heads(kind, 1, [0, 2]), store=tmp_path / "reference", **RUN)
    assert_same_trace(ablated, reference)
    assert differs(ablated, clean)
    assert ablated.manifest["interventions"] == [{"kind": "ablate", "attention": kind, "layer": 1, "heads": [0, 2]}]
    assert "interventions" not in clean.manifest
    assert hooks_left(tiny.model) == 0


def test_identity_interventions_leave_the_trace_as_it_was(tiny, tone, tmp_path):
    clean = probe.run(tone, model=tiny, store=tmp_path / "clean", **RUN)
    zero = [0.0] * 64
    same = probe.run(tone, model=tiny, store=tmp_path / "same", **RUN, interventions=[
        Steer("decoder.blocks.0.hook_resid_post", tuple(np.linspace(-1, 1, 64)), alpha=0.0),
        Steer("encoder.blocks.1.hook_mlp_out", tuple(zero)),
        Replace("decoder.blocks.1.hook_attn_out", lambda point, tensor: tensor, name="identity")])
    assert_same_trace(same, clean)


def test_steering_equals_shifting_the_bias_it_adds_to(tiny, tone, tmp_path):
    """alpha·v added to decoder block 0's MLP output is fc2's bias moved by alpha·v."""
    vector = np.random.default_rng(1).standard_normal(64)
    steered = probe.run(tone, model=tiny, store=tmp_path / "steered", **RUN,
                        interventions=[{"kind": "steer", "point": "decoder.blocks.0.hook_mlp_out",
                                        "vector": vector.tolist(), "alpha": 3.0}])
    shifted = tiny_random_model()
    with torch.no_grad():
        shifted.model.model.decoder.layers[0].fc2.bias += torch.tensor(3.0 * vector, dtype=torch.float32)
    reference = probe.run(tone, model=shifted, store=tmp_path / "reference", **RUN)
    # the bias is added inside the matmul there, after it here: float32 rounding apart, which can
    # move a float16-stored record by one of its steps (~1e-3 relative)
    assert_same_trace(steered, reference, rel=2e-3, abs_=2e-3)
    clean = probe.run(tone, model=tiny, store=tmp_path / "clean", **RUN)
    assert differs(steered, clean)


def test_an_encoder_steer_reaches_the_recorded_encoder_output(tiny, tone, tmp_path):
    """Records see the intervened tensors: the encoder output recorded under a steer at the final
    layer norm is the clean one plus alpha·v."""
    vector = np.arange(64, dtype=np.float64) / 64
    points = ["encoder.hook_ln_final"]
    clean = probe.run(tone, model=tiny, store=tmp_path / "clean", points=points, **RUN)
    steered = probe.run(tone, model=tiny, store=tmp_path / "steered", points=points, **RUN,
                        interventions=[Steer("encoder.hook_ln_final", tuple(vector), alpha=0.5)])
    name = "activations.encoder.hook_ln_final"
    np.testing.assert_allclose(np.asarray(steered.record(name), dtype=np.float64),
                               np.asarray(clean.record(name), dtype=np.float64) + 0.5 * vector, atol=2e-3)


def test_local_attention_keeps_each_frame_to_its_neighbours(tiny, tone, tmp_path):
    """Encoder self-attention of layer 0 limited to ±3 frames: its recorded pattern has no weight
    outside the band and rows that still sum to 1; layer 1, left alone, attends beyond it; a band
    wider than the window changes nothing."""
    points = ["encoder.blocks.0.attn.hook_pattern", "encoder.blocks.1.attn.hook_pattern"]
    local = probe.run(tone, model=tiny, store=tmp_path / "local", points=points, **RUN,
                      interventions=[{"kind": "local", "k": 3, "layers": [0]}])
    first = np.asarray(local.record("activations.encoder.blocks.0.attn.hook_pattern"), dtype=np.float64)
    second = np.asarray(local.record("activations.encoder.blocks.1.attn.hook_pattern"), dtype=np.float64)
    frames = np.arange(first.shape[-1])
    outside = np.abs(frames[:, None] - frames[None, :]) > 3  # [frame, frame]
    assert first[..., outside].max() < 1e-6
    assert (second * outside).sum(-1).mean() > 0.5  # most of each row's weight lies beyond ±3 frames
    np.testing.assert_allclose(first.sum(-1), 1.0, atol=5e-3)
    assert local.manifest["interventions"] == [{"kind": "local", "k": 3, "layers": [0]}]
    clean = probe.run(tone, model=tiny, store=tmp_path / "clean", points=points, **RUN)
    wide = probe.run(tone, model=tiny, store=tmp_path / "wide", points=points, **RUN, interventions=[Local(1500)])
    assert_same_trace(wide, clean)
    assert differs(local, clean)


@pytest.mark.parametrize("options", [dict(num_beams=2, max_new_tokens=6), dict(long=True, max_new_tokens=6)],
                         ids=["beam", "long-form"])
def test_ablation_holds_through_beam_search_and_long_form(tiny, tmp_path, options):
    options = dict(options)
    seconds = 42 if options.pop("long", False) else 2
    t = np.arange(seconds * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    ablated = probe.run(audio, model=tiny, store=tmp_path / "ablated", language="en", seed=0, **options,
                        interventions=[Ablate("decoder.cross_attn", 0, (1, 3))])
    reference = probe.run(audio, model=zeroed_heads("decoder.cross_attn", 0, [1, 3]), store=tmp_path / "reference",
                          language="en", seed=0, **options)
    assert_same_trace(ablated, reference)
    if seconds > 30:
        assert len(ablated.manifest["windows"]) >= 2


@pytest.mark.parametrize("spec, message", [
    ({"kind": "mask"}, "unknown kind 'mask'"),
    ({"kind": "ablate", "attention": "encoder.cross_attn", "layer": 0, "heads": [0]}, "unknown attention"),
    ({"kind": "ablate", "attention": "decoder.self_attn", "layer": 2, "heads": [0]}, "layer 2 is out of range; this model has layers 0–1"),
    ({"kind": "ablate", "attention": "decoder.self_attn", "layer": 0, "heads": [4]}, "head 4 is out of range; this model has heads 0–3"),
    ({"kind": "ablate", "attention": "decoder.self_attn", "layer": 0}, "missing field 'heads'"),
    ({"kind": "ablate", "attention": "decoder.self_attn", "layer": 0.5, "heads": [0]}, "whole numbers"),
    ({"kind": "steer", "point": "decoder.blocks.9.hook_resid_post", "vector": [0.0] * 64}, "unknown hook point"),
    ({"kind": "steer", "point": "decoder.blocks.0.hook_resid_post", "vector": [0.0] * 3}, r"has 3 numbers; this point.s last axis \(d_model\) has 64"),
    ({"kind": "steer", "point": "decoder.blocks.0.attn.hook_pattern", "vector": [0.0] * 64}, "is an attention pattern"),
    ({"kind": "steer", "point": "encoder.hook_conv1", "vector": [0.0] * 64}, "after a GELU"),
    ({"kind": "steer", "point": "decoder.blocks.0.hook_resid_post", "vector": [0.0] * 64, "beta": 1}, "unknown field 'beta'"),
    ({"kind": "local", "k": -1}, "k = -1"),
    ({"kind": "local", "k": 5, "layers": [2]}, "encoder layer 2 is out of range; this model has layers 0–1"),
])
def test_bad_specs_are_one_line_errors(tiny, spec, message):
    with pytest.raises(OptionError, match=message) as caught:
        resolve(tiny.model.config, [spec])
    assert "\n" not in str(caught.value)


def test_bad_specs_on_the_cli_exit_2_with_nothing_written(tmp_path, en_clip):
    store = tmp_path / "store"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"kind": "ablate", "attention": "decoder.self_attn", "layer": 99, "heads": [0]}]))
    for spec, message in ((str(bad), "layer 99 is out of range"), ("{nope", "not JSON"),
                          (str(tmp_path / "missing.json"), "no such file")):
        run = subprocess.run([sys.executable, "-m", "probe", "run", str(en_clip), "--store", str(store),
                              "--intervene", spec], capture_output=True, text=True, timeout=600)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("probe: error: ") and message in run.stderr and run.stderr.count("\n") == 1
        assert store_snapshot(store) == []


def test_a_failing_intervention_leaves_no_hook_and_no_trace(tiny, tone, tmp_path):
    def broken(point, tensor):
        raise RuntimeError("broken steer")

    store = tmp_path / "store"
    with pytest.raises(RuntimeError, match="broken steer"):
        probe.run(tone, model=tiny, store=store, **RUN, interventions=[Replace("decoder.blocks.0.hook_mlp_out", broken)])
    assert hooks_left(tiny.model) == 0
    assert [info for info in probe.Store(store).list() if not info.error] == []
    with pytest.raises(OptionError, match=r"returned \(2,\), not a tensor of shape"):
        probe.run(tone, model=tiny, store=store, **RUN,
                  interventions=[Replace("decoder.blocks.0.hook_mlp_out", lambda point, tensor: tensor[0, 0, :2])])
    assert hooks_left(tiny.model) == 0


def test_load_spec_takes_files_inline_json_and_wrapped_lists(tmp_path):
    one = {"kind": "ablate", "attention": "decoder.self_attn", "layer": 0, "heads": [1]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"interventions": [one, one]}))
    assert load_spec(path) == [one, one]
    assert load_spec(json.dumps(one)) == [one]
    with pytest.raises(OptionError, match="each intervention is a JSON object"):
        load_spec("[1, 2]")


@pytest.mark.integration
def test_cli_intervened_trace_says_so_in_show(tmp_path, en_clip):
    """The real base model on real speech: ablating every decoder self-attention head of the last
    block changes the transcript, the manifest lists the ablation and ``probe show`` says so."""
    store = tmp_path / "store"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"kind": "ablate", "attention": "decoder.self_attn", "layer": 5,
                                 "heads": list(range(8))}]))
    run = subprocess.run([sys.executable, "-m", "probe", "run", str(en_clip), "--store", str(store), "--intervene",
                          str(spec), "-p", "no:attention", "-p", "no:logit_lens", "-p", "no:activations"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    trace = probe.Store(store).list()[0]
    shown = subprocess.run([sys.executable, "-m", "probe", "show", trace.id, "--store", str(store)],
                           capture_output=True, text=True, timeout=300)
    assert "INTERVENED: ablate decoder.self_attn layer 5 heads [0, 1, 2, 3, 4, 5, 6, 7]" in shown.stdout
    opened = probe.Store(store).open(trace.id)
    assert opened.manifest["interventions"][0]["layer"] == 5


class HalvingPlugin:
    """A plugin's own intervention (probe_interventions): decoder block 0's MLP output halved."""

    @probe.hookimpl
    def probe_interventions(self, config, options):
        assert config.decoder_layers == 2 and isinstance(options, dict)
        return [Replace("decoder.blocks.0.hook_mlp_out", lambda point, tensor: 0.5 * tensor, name="halve")]


def test_a_plugins_intervention_is_applied_like_the_users(tiny, tone, tmp_path):
    from_plugin = probe.run(tone, model=tiny, store=tmp_path / "plugin", plugins=[HalvingPlugin()], **RUN)
    given = probe.run(tone, model=tiny, store=tmp_path / "given", **RUN, interventions=[
        Replace("decoder.blocks.0.hook_mlp_out", lambda point, tensor: 0.5 * tensor, name="halve")])
    assert_same_trace(from_plugin, given)
    assert from_plugin.manifest["interventions"] == [
        {"kind": "replace", "point": "decoder.blocks.0.hook_mlp_out", "function": "halve"}]
    clean = probe.run(tone, model=tiny, store=tmp_path / "clean", **RUN)
    assert differs(from_plugin, clean)


def test_a_plugin_whose_interventions_raise_is_named(tiny, tone, tmp_path):
    from probe.errors import PluginError

    class Broken:
        @probe.hookimpl
        def probe_interventions(self, config, options):
            raise ValueError("no vector file")

    with pytest.raises(PluginError, match="no vector file") as caught:
        probe.run(tone, model=tiny, store=tmp_path / "s", plugins=[Broken()], **RUN)
    assert "\n" not in str(caught.value) and hooks_left(tiny.model) == 0
    assert not (tmp_path / "s").exists() or [i for i in probe.Store(tmp_path / "s").list() if not i.error] == []


FLOAT32 = {"activations_dtype": "float32"}


def test_patching_a_clip_into_itself_changes_nothing(tiny, tone, tmp_path):
    store = tmp_path / "store"
    point = "encoder.blocks.0.hook_resid_post"
    source = probe.run(tone, model=tiny, store=store, points=[point], plugin_options=FLOAT32, **RUN)
    patched = probe.run(tone, model=tiny, store=store, points=[point], plugin_options=FLOAT32, clean=None, **RUN,
                        interventions=[{"kind": "patch", "point": point, "source": source.id}])
    assert_same_trace(patched, source)
    assert patched.manifest["interventions"][0]["source"] == str(source.path)
    assert hooks_left(tiny.model) == 0


def test_patching_the_encoder_output_decodes_what_the_source_clip_decodes(tiny, tone, tmp_path):
    """The decoder sees only the encoder output: patched whole from clip B into clip A, A decodes
    as B does (tokens, probabilities, the decoder's output); patched over its first 10 frames only,
    as neither."""
    store = tmp_path / "store"
    point = "encoder.hook_ln_final"
    t = np.arange(32000) / 16000
    other = (0.3 * np.sign(np.sin(2 * np.pi * 97 * t))).astype(np.float32)  # a square wave
    decoder = "decoder.hook_ln_final"  # what the decoder makes of what it hears: [batch, query, d_model]
    source = probe.run(other, model=tiny, store=store, points=[point, decoder], plugin_options=FLOAT32, **RUN)
    clean = probe.run(tone, model=tiny, store=store, points=[decoder], plugin_options=FLOAT32, **RUN)
    heard = {trace: np.asarray(trace.record(f"activations.{decoder}"), dtype=np.float64) for trace in (source, clean)}
    assert np.abs(heard[source] - heard[clean]).max() > 1e-3  # the two clips are heard differently
    patched = probe.run(tone, model=tiny, store=store, points=[decoder], plugin_options=FLOAT32, clean=None, **RUN,
                        interventions=[Patch(point, source.id)])
    assert patched.manifest["sequence"] == source.manifest["sequence"]
    np.testing.assert_allclose(np.asarray(patched.record(f"activations.{decoder}"), dtype=np.float64),
                               heard[source], atol=1e-5)
    np.testing.assert_allclose([row["prob"] for row in patched.table("token_probs.tokens")],
                               [row["prob"] for row in source.table("token_probs.tokens")], atol=1e-5)
    part = probe.run(tone, model=tiny, store=store, points=[decoder], plugin_options=FLOAT32, clean=None, **RUN,
                     interventions=[Patch(point, source.id, (0, 10))])
    assert part.manifest["interventions"][0]["frames"] == [0, 10]
    between = np.asarray(part.record(f"activations.{decoder}"), dtype=np.float64)
    assert min(np.abs(between - heard[source]).max(), np.abs(between - heard[clean]).max()) > 1e-5


def square_wave(seconds: float = 2.0) -> np.ndarray:
    """Clip B of the patching tests: a 97 Hz square wave, heard otherwise than the tone."""
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sign(np.sin(2 * np.pi * 97 * t))).astype(np.float32)


def activation(trace, point: str) -> np.ndarray:
    """``activations.<point>`` of ``trace`` as float64: [batch, query, width] at a decoder point."""
    return np.asarray(trace.record(f"activations.{point}"), dtype=np.float64)


DECODER_POINTS = ["decoder.blocks.0.hook_resid_post", "decoder.blocks.1.attn.hook_z",
                  "decoder.blocks.1.cross_attn.hook_z", "decoder.hook_ln_final"]


@pytest.mark.parametrize("options", [dict(), dict(long=True, max_new_tokens=6)], ids=["short", "long-form"])
def test_patching_decoder_points_from_the_clip_itself_changes_nothing(tiny, tmp_path, options):
    """Whole, over positions, or some heads of an attention: the clip's own records put back where
    they came from, step by step (long-form windows by their seek), and in the replay all at once,
    leave every token and every generation step's activation as it was, byte
    for byte.  The replay's records (token probabilities, alignment) move by float32 rounding only:
    it computes all positions at once, and gets the values the steps computed one at a time.  (The
    logit lens is left out: over the random model's near-uniform vocabulary its top ids are ties
    that such rounding may reorder.)"""
    options = {**RUN, **options}
    seconds = 42 if options.pop("long", False) else 2
    t = np.arange(seconds * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    store = tmp_path / "store"
    options["plugins"] = ["no:logit_lens"]
    source = probe.run(audio, model=tiny, store=store, points=DECODER_POINTS, plugin_options=FLOAT32, **options)
    if seconds > 30:
        assert len(source.manifest["windows"]) >= 2
    for spec in ({"point": "decoder.blocks.0.hook_resid_post"},
                 {"point": "decoder.blocks.0.hook_resid_post", "positions": [2, 7]},
                 {"point": "decoder.blocks.1.hook_cross_attn_out", "heads": [1, 3]},
                 {"point": "decoder.blocks.1.attn.hook_z", "heads": [0]}):
        patched = probe.run(audio, model=tiny, store=store, points=DECODER_POINTS, plugin_options=FLOAT32, clean=None,
                            **options, interventions=[{"kind": "patch", "source": source.id, **spec}])
        assert_same_trace(patched, source, abs_=1e-4)
        for point in DECODER_POINTS:
            np.testing.assert_array_equal(activation(patched, point), activation(source, point))
    assert patched.manifest["interventions"] == [{"kind": "patch", "point": "decoder.blocks.1.attn.hook_z",
                                                  "source": str(source.path), "positions": None, "heads": [0]}]
    assert hooks_left(tiny.model) == 0


@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beam"])
def test_a_decoder_patch_equals_running_the_later_blocks_on_the_sources_residual(tiny, tone, tmp_path, beams):
    """Block 0's residual patched from clip B into clip A at every position: what A's decoder makes
    of it, step by step while generating (every beam alike) and teacher-forced on A's clean tokens
    (probe.effect), is block 1 and the final norm run by hand on B's recorded residual,
    cross-attending to A's encoder output.  A position misplaced by one would compare B's residual
    at the wrong step."""
    store = tmp_path / "store"
    point, out = "decoder.blocks.0.hook_resid_post", "decoder.hook_ln_final"
    source = probe.run(square_wave(), model=tiny, store=store, points=[point], plugin_options=FLOAT32, **RUN)
    clean = probe.run(tone, model=tiny, store=store, points=["encoder.hook_ln_final", point, out],
                      plugin_options=FLOAT32, **RUN, num_beams=beams)
    residual = torch.tensor(activation(source, point), dtype=torch.float32)  # [1, position, d_model]
    assert np.abs(activation(source, point) - activation(clean, point)[:, :residual.shape[1]]).max() > 1e-4
    encoded = torch.tensor(activation(clean, "encoder.hook_ln_final"), dtype=torch.float32)  # [1, frame, d_model]
    model = tiny.model
    with torch.inference_mode(), Hooks(model) as hooks:
        hooks.forward(model.model.decoder.layers[0], lambda module, args, output: residual)
        ids = torch.zeros(1, residual.shape[1], dtype=torch.long)  # any tokens: block 0's output is replaced
        by_hand = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state[0].numpy()
    patched = probe.run(tone, model=tiny, store=store, points=[out], plugin_options=FLOAT32, clean=clean.id, **RUN,
                        num_beams=beams, interventions=[{"kind": "patch", "point": point, "source": source.id}])
    seen = activation(patched, out)  # [beam, position, d_model], every generation step's positions in turn
    shared = min(seen.shape[1], len(by_hand))
    assert shared >= 5 and len(seen) == beams
    for row in seen:
        np.testing.assert_allclose(row[:shared], by_hand[:shared], atol=1e-5)
    window = clean.manifest["windows"][0]
    prompt, tokens = len(window["prompt"]), window["tokens"]
    logprobs = torch.log_softmax(torch.tensor(by_hand) @ model.proj_out.weight.detach().T, -1)  # [position, vocab]
    expected = [float(logprobs[prompt - 1 + i, token]) for i, token in enumerate(tokens)
                if prompt - 1 + i < len(by_hand)]
    rows = patched.table("effect.logprobs")
    assert len(expected) == len(tokens) == len(rows)
    np.testing.assert_allclose([row["intervened"] for row in rows], expected, atol=1e-4)
    assert max(abs(row["clean"] - row["intervened"]) for row in rows) > 1e-4
    assert patched.manifest["effect"]["clean"] == clean.id


@pytest.mark.parametrize("first", [2, 5], ids=["within-the-prompt", "at-a-generated-step"])
def test_patching_decoder_positions_changes_those_positions_and_none_before(tiny, tone, tmp_path, first):
    """positions [first, first + 3): the patched point itself holds B's residual exactly there and A's
    everywhere before (byte for byte), and nothing before ``first`` changes downstream either."""
    store = tmp_path / "store"
    point, out = "decoder.blocks.0.hook_resid_post", "decoder.hook_ln_final"
    source = probe.run(square_wave(), model=tiny, store=store, points=[point], plugin_options=FLOAT32, **RUN)
    clean = probe.run(tone, model=tiny, store=store, points=[point, out], plugin_options=FLOAT32, **RUN)
    patched = probe.run(tone, model=tiny, store=store, points=[point, out], plugin_options=FLOAT32, clean=None, **RUN,
                        interventions=[{"kind": "patch", "point": point, "source": source.id,
                                        "positions": [first, first + 3]}])
    last = first + 3
    assert activation(patched, point).shape[1] >= last
    np.testing.assert_array_equal(activation(patched, point)[:, first:last], activation(source, point)[:, first:last])
    for name in (point, out):
        np.testing.assert_array_equal(activation(patched, name)[:, :first], activation(clean, name)[:, :first])
        assert np.abs(activation(patched, name)[:, first] - activation(clean, name)[:, first]).max() > 1e-5
    assert patched.manifest["interventions"][0]["positions"] == [first, last]


def test_a_greedy_source_patches_every_beam_and_a_beam_source_is_refused(tiny, tone, tmp_path):
    """The prompt's positions are the same in a greedy and a beam-search run of one clip: patched
    from the greedy trace into every beam, they leave the beam search as it was.  A beam-search
    trace is no source: its rows are beams generate() reorders at every step."""
    store = tmp_path / "store"
    point = "decoder.blocks.0.hook_resid_post"
    options = dict(points=[point], plugin_options=FLOAT32, **RUN, plugins=["no:logit_lens"])
    greedy = probe.run(tone, model=tiny, store=store, **options)
    beam = probe.run(tone, model=tiny, store=store, num_beams=2, **options)
    prompt = len(beam.manifest["windows"][0]["prompt"])
    patched = probe.run(tone, model=tiny, store=store, num_beams=2, clean=None, **options, interventions=[
        {"kind": "patch", "point": point, "source": greedy.id, "positions": [0, prompt]}])
    assert_same_trace(patched, beam, abs_=1e-4)
    with pytest.raises(OptionError, match=r"decoded with beam search \(2 beams\).*--num-beams 1") as caught:
        resolve(tiny.model.config, [Patch(point, beam.id, store=str(store))])
    assert "\n" not in str(caught.value)


HEAD_PATCHES = [("encoder.blocks.1.hook_attn_out", "encoder.blocks.1.attn.hook_z"),
                ("decoder.blocks.1.hook_attn_out", "decoder.blocks.1.attn.hook_z"),
                ("decoder.blocks.0.hook_cross_attn_out", "decoder.blocks.0.cross_attn.hook_z")]


@pytest.mark.parametrize("output, heads_point", HEAD_PATCHES, ids=["encoder", "decoder", "cross"])
def test_patching_every_head_equals_patching_the_attention_output(tiny, tone, tmp_path, output, heads_point):
    """Every head of an attention patched from clip B (its out_proj input) is that attention's
    output patched whole from B (all but the heads' input itself, which only the first patches);
    some of its heads only are neither, and take exactly B's columns where nothing before them changed."""
    store = tmp_path / "store"
    recorded = [output, heads_point, "decoder.hook_ln_final"]
    source = probe.run(square_wave(), model=tiny, store=store, points=recorded, plugin_options=FLOAT32, **RUN)
    clean = probe.run(tone, model=tiny, store=store, points=recorded, plugin_options=FLOAT32, **RUN)

    def patched(**spec):
        return probe.run(tone, model=tiny, store=store, points=recorded, plugin_options=FLOAT32, clean=None, **RUN,
                         interventions=[{"kind": "patch", "source": source.id, **spec}])

    by_heads = patched(point=output, heads=[0, 1, 2, 3])
    whole = patched(point=output)
    assert_same_trace(by_heads, whole, skip=(f"activations.{heads_point}",))
    assert differs(whole, clean)
    assert by_heads.manifest["interventions"][0]["point"] == heads_point
    some = patched(point=heads_point, heads=[1, 2])
    mixed, theirs, ours = (activation(trace, heads_point) for trace in (some, source, clean))
    span = 1500 if heads_point.startswith("encoder") else len(clean.manifest["windows"][0]["prompt"])  # the first step
    columns = np.arange(64) // HEAD_DIM  # each column's head
    patched_columns = np.isin(columns, [1, 2])
    np.testing.assert_array_equal(mixed[:, :span][..., patched_columns], theirs[:, :span][..., patched_columns])
    np.testing.assert_array_equal(mixed[:, :span][..., ~patched_columns], ours[:, :span][..., ~patched_columns])
    assert differs(some, whole) and differs(some, clean)


def test_patching_some_heads_of_the_encoder_from_the_clip_itself_changes_nothing(tiny, tone, tmp_path):
    store = tmp_path / "store"
    point = "encoder.blocks.0.attn.hook_z"
    source = probe.run(tone, model=tiny, store=store, points=[point], plugin_options=FLOAT32, **RUN)
    patched = probe.run(tone, model=tiny, store=store, points=[point], plugin_options=FLOAT32, clean=None, **RUN,
                        interventions=[Patch("encoder.blocks.0.hook_attn_out", source.id, heads=(0, 2),
                                             frames=(0, 700))])
    assert_same_trace(patched, source)
    assert patched.manifest["interventions"][0] == {"kind": "patch", "point": point, "source": str(source.path),
                                                    "frames": [0, 700], "heads": [0, 2]}
    from probe.interventions import describe

    assert describe(patched.manifest["interventions"]) == \
        f"patch {point} heads [0, 2] frames 0–700 from {source.id}"


def test_a_decoder_patch_leaves_the_encoder_alone(tiny):
    from probe.interventions import touches_encoder

    config = tiny.model.config
    assert not touches_encoder([Patch("decoder.blocks.0.hook_resid_post", "x")], config)
    assert not touches_encoder([Patch("decoder.blocks.0.cross_attn.hook_z", "x", heads=(1,))], config)
    assert touches_encoder([Patch("encoder.blocks.0.attn.hook_z", "x", heads=(1,))], config)


@pytest.mark.parametrize("spec, message", [
    ({"point": "encoder.hook_ln_final", "source": "nope"}, "patch source nope: "),
    ({"point": "encoder.blocks.0.hook_resid_post", "source": "SOURCE"}, r"has no record activations.encoder.blocks.0"),
    ({"point": "encoder.hook_ln_final", "source": "SOURCE", "frames": [10, 5]}, r"give \[start, end\) within"),
    ({"point": "encoder.hook_ln_final", "source": "SOURCE", "frames": [0]}, "frames and positions \\[start, end\\]"),
    ({"point": "decoder.blocks.9.hook_resid_post", "source": "SOURCE"}, "unknown hook point"),
    ({"point": "decoder.blocks.1.hook_resid_post", "source": "SOURCE"},
     r"has no record activations.decoder.blocks.1.hook_resid_post; record it with probe run CLIP --points"),
    ({"point": "decoder.blocks.0.hook_resid_post", "source": "SOURCE", "positions": [0, 99]},
     r"patch positions \[0, 99\]: give \[start, end\) within the source's 11 positions"),
    ({"point": "decoder.blocks.0.hook_resid_post", "source": "SOURCE", "positions": [4, 4]}, "within the source's"),
    ({"point": "decoder.blocks.0.hook_resid_post", "source": "SOURCE", "positions": "all"},
     "positions \\[start, end\\]"),
    ({"point": "decoder.blocks.0.hook_resid_post", "source": "SOURCE", "frames": [0, 2]},
     "frames are for encoder points"),
    ({"point": "encoder.hook_ln_final", "source": "SOURCE", "positions": [0, 2]}, "positions are for decoder points"),
    ({"point": "decoder.blocks.0.hook_resid_post", "source": "SOURCE", "heads": [0]},
     "heads are patched at an attention"),
    ({"point": "decoder.blocks.0.hook_attn_out", "source": "SOURCE", "heads": [4]},
     "decoder.blocks.0.attn.hook_z: head 4 is out of range; this model has heads 0–3"),
    ({"point": "decoder.blocks.0.attn.hook_z", "source": "SOURCE", "heads": []}, r"head \(none\) is out of range"),
    ({"point": "decoder.blocks.0.hook_cross_attn_out", "source": "SOURCE", "heads": [0]},
     "has no record activations.decoder.blocks.0.cross_attn.hook_z"),
    ({"point": "decoder.blocks.0.cross_attn.hook_pattern", "source": "SOURCE"}, "is an attention pattern"),
])
def test_bad_patches_are_one_line_errors_with_nothing_written(tiny, tone, tmp_path, spec, message):
    store = tmp_path / "store"
    recorded = ["encoder.hook_ln_final", "decoder.blocks.0.hook_resid_post", "decoder.blocks.0.attn.hook_z"]
    source = probe.run(tone, model=tiny, store=store, points=recorded, **RUN)
    assert len(source.manifest["windows"][0]["prompt"]) + len(source.manifest["windows"][0]["tokens"]) - 1 == 11
    before = store_snapshot(store)
    spec = {"kind": "patch", **{k: (source.id if v == "SOURCE" else v) for k, v in spec.items()}}
    with pytest.raises(OptionError, match=message) as caught:
        probe.run(tone, model=tiny, store=store, **RUN, interventions=[spec])
    assert "\n" not in str(caught.value)
    assert store_snapshot(store) == before and hooks_left(tiny.model) == 0


def test_a_patch_source_from_another_model_is_refused(tiny, tone, tmp_path):
    store = tmp_path / "store"
    point = "decoder.blocks.0.hook_resid_post"
    source = probe.run(tone, model=tiny, store=store, points=["encoder.hook_ln_final", point], **RUN)
    for patch in (Patch("encoder.hook_ln_final", source.id, store=str(store)),
                  Patch(point, source.id, store=str(store))):
        with pytest.raises(OptionError, match="recorded with another model"):
            resolve(tiny.model.config, [patch], model_id="other/model")


def test_a_decoder_source_that_does_not_line_up_is_refused(tiny, tone, tmp_path):
    """The source's record must have the point's width, and its activations.steps must say where
    every one of its positions belongs; a trace whose manifest says otherwise is refused."""
    store = tmp_path / "store"
    point = "decoder.blocks.0.hook_resid_post"
    source = probe.run(tone, model=tiny, store=store, points=[point], **RUN)
    manifest_file = source.path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    for change, message in ((lambda m: m["records"][f"activations.{point}"].update(shape=[1, 11, 32]),
                             r"has shape \[1, 11, 32\], not \[batch, query, 64\]"),
                            (lambda m: m["records"].pop("activations.steps"), "has no record activations.steps"),
                            (lambda m: m["records"][f"activations.{point}"].update(shape=[1, 12, 64]),
                             "has 12 positions but its activations.steps 11")):
        edited = json.loads(json.dumps(manifest))
        change(edited)
        manifest_file.write_text(json.dumps(edited))
        with pytest.raises(OptionError, match=message) as caught:
            resolve(tiny.model.config, [Patch(point, source.id, store=str(store))])
        assert "\n" not in str(caught.value)


def test_a_steering_vector_from_records_is_the_mean_difference_of_two_sets(tiny, tone, tmp_path):
    store = tmp_path / "store"
    point = "encoder.blocks.1.hook_resid_post"
    t = np.arange(32000) / 16000
    square = (0.3 * np.sign(np.sin(2 * np.pi * 97 * t))).astype(np.float32)
    first = probe.run(tone, model=tiny, store=store, points=[point], plugin_options=FLOAT32, name="a", **RUN)
    second = probe.run(square, model=tiny, store=store, points=[point], plugin_options=FLOAT32, name="b", **RUN)
    means = [np.asarray(trace.record(f"activations.{point}"), dtype=np.float64).reshape(-1, 64).mean(0)
             for trace in (first, second)]
    spec = {"kind": "steer", "point": point, "alpha": 2.0, "vector": {"traces": ["a"], "minus": [second.id]}}
    from_records = probe.run(tone, model=tiny, store=store, clean=None, **RUN, interventions=[spec])
    by_hand = probe.run(tone, model=tiny, store=tmp_path / "by_hand", **RUN,
                        interventions=[Steer(point, tuple(means[0] - means[1]), alpha=2.0)])
    assert_same_trace(from_records, by_hand, rel=1e-4, abs_=1e-4)
    np.testing.assert_allclose(from_records.manifest["interventions"][0]["vector"], means[0] - means[1], atol=1e-6)
    with pytest.raises(OptionError, match="has no record activations.decoder.blocks.0.hook_resid_post"):
        probe.run(tone, model=tiny, store=store, **RUN, interventions=[
            {"kind": "steer", "point": "decoder.blocks.0.hook_resid_post", "vector": {"traces": ["a"]}}])
    with pytest.raises(OptionError, match="a vector from records is"):
        probe.run(tone, model=tiny, store=store, **RUN,
                  interventions=[{"kind": "steer", "point": point, "vector": {"runs": ["a"]}}])


@pytest.mark.parametrize("kind", ["encoder.self_attn", "decoder.self_attn"])
def test_mean_ablation_equals_moving_the_heads_mean_into_out_projs_bias(tiny, tone, tmp_path, kind):
    """A head held at its mean m over reference traces writes W[:, head]·m whatever it attends to:
    that head's columns of out_proj zeroed and W[:, head]·m added to its bias."""
    from probe.interventions import prepare

    store = tmp_path / "store"
    t = np.arange(32000) / 16000
    square = (0.3 * np.sign(np.sin(2 * np.pi * 97 * t))).astype(np.float32)
    probe.run(square, model=tiny, store=store, name="reference", **RUN)
    spec = {"kind": "ablate", "attention": kind, "layer": 0, "heads": [1, 3], "mean_of": ["reference"],
            "store": str(store)}
    ablate = prepare(tiny, resolve(tiny.model.config, [spec], model_id=tiny.model_id))[0]
    assert len(ablate.means) == 2 and len(ablate.means[0]) == HEAD_DIM and any(abs(v) > 1e-3 for v in ablate.means[0])
    mean_ablated = probe.run(tone, model=tiny, store=tmp_path / "mean", **RUN, interventions=[spec])
    shifted = zeroed_heads(kind, 0, [1, 3])
    weight = tiny.model.get_submodule(ATTENTION[kind][0].format(layer=0)).out_proj.weight
    with torch.no_grad():
        bias = shifted.model.get_submodule(ATTENTION[kind][0].format(layer=0)).out_proj.bias
        for head, mean in zip((1, 3), ablate.means):
            bias += weight[:, head * HEAD_DIM:(head + 1) * HEAD_DIM] @ torch.tensor(mean)
    reference = probe.run(tone, model=shifted, store=tmp_path / "reference", **RUN)
    assert_same_trace(mean_ablated, reference, rel=2e-3, abs_=2e-3)
    zeroed = probe.run(tone, model=tiny, store=tmp_path / "zero", **RUN, interventions=[{**spec, "mean_of": []}])
    assert differs(mean_ablated, zeroed)
    assert mean_ablated.manifest["interventions"][0]["mean_of"][0].endswith(probe.Store(store).list()[0].id)
    with pytest.raises(OptionError, match="ablate mean_of nope: "):
        resolve(tiny.model.config, [{**spec, "mean_of": ["nope"]}])


@pytest.mark.integration
def test_real_speech_last_residual_patched_from_another_clip_decodes_that_clip(base, tmp_path):
    """base on the two English example clips: the last block's residual decides every logit, so
    the fox clip with the lecture clip's ``decoder.blocks.5.hook_resid_post`` at every position
    decodes the lecture's tokens; the lecture's own cross-attention heads patched into itself
    change nothing."""
    from tests.conftest import EXAMPLES

    store = tmp_path / "store"
    points = ["decoder.blocks.5.hook_resid_post", "decoder.blocks.3.cross_attn.hook_z"]
    options = dict(language="en", disable=["attention", "logit_lens"], plugin_options=FLOAT32)
    lecture = probe.run(EXAMPLES / "en_lecture.flac", model=base, store=store, points=points, name="lecture", **options)
    fox = probe.run(EXAMPLES / "en_fox.flac", model=base, store=store, name="fox", **options)
    patched = probe.run(EXAMPLES / "en_fox.flac", model=base, store=store, **options, interventions=[
        {"kind": "patch", "point": "decoder.blocks.5.hook_resid_post", "source": "lecture"}])
    assert fox.transcript == "The quick brown fox jumps over the lazy dog."
    assert patched.manifest["sequence"] == lecture.manifest["sequence"]
    assert patched.transcript == lecture.transcript
    itself = probe.run(EXAMPLES / "en_lecture.flac", model=base, store=store, **options, interventions=[
        {"kind": "patch", "point": "decoder.blocks.3.hook_cross_attn_out", "source": "lecture", "heads": [1, 4]}])
    assert itself.manifest["sequence"] == lecture.manifest["sequence"]
    assert itself.manifest["interventions"][0]["point"] == "decoder.blocks.3.cross_attn.hook_z"
    assert abs(itself.manifest["effect"]["delta_logprob_total"]) < 1e-3
    assert hooks_left(base.model) == 0
