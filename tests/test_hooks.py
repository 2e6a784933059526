"""Hooks observe without changing anything, are always removed, and patterns equal eager attention."""

import copy

import numpy as np
import pytest
import torch

from probe import hookimpl
from probe.audio import audio_from_array
from probe.hooks import attach, hooks_left
from probe.plugin_manager import DEFAULT_PLUGINS, get_plugin_manager
from probe.points import select_points
from probe.tracer import DecodeOptions, Tracer


def _features(loaded, tone):
    extractor = loaded.processor.feature_extractor
    return extractor(tone, sampling_rate=16000, return_tensors="pt").input_features


def _forward(model, features, decoder_ids, **kwargs):
    with torch.inference_mode():
        return model(input_features=features, decoder_input_ids=decoder_ids, **kwargs)


def _eager_copy(loaded):
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    return eager


DECODER_IDS = torch.tensor([[50258, 50259, 50359, 50363, 440, 1702, 6292, 21026]])


def test_hooks_do_not_change_outputs_and_are_removed(tiny, tone):
    model = tiny.model
    features = _features(tiny, tone)
    before = hooks_left(model)
    plain = _forward(model, features, DECODER_IDS).logits
    seen = {}
    points = select_points(model.config, ["*"])
    with attach(model, points, lambda point, tensor: seen.setdefault(point.name, tensor.shape)):
        assert hooks_left(model) > before
        hooked = _forward(model, features, DECODER_IDS).logits
    assert hooks_left(model) == before == 0
    assert torch.equal(plain, hooked)
    assert set(seen) == {p.name for p in points}
    assert seen["encoder.hook_conv1"][-1] == 3000 and seen["encoder.hook_conv2"][-1] == 1500
    heads = model.config.decoder_attention_heads
    assert seen["decoder.blocks.0.cross_attn.hook_pattern"] == (1, heads, DECODER_IDS.shape[1], 1500)


def test_hooks_removed_when_the_block_raises(tiny, tone):
    model = tiny.model
    points = select_points(model.config, ["encoder.*", "decoder.blocks.*.cross_attn.hook_pattern"])

    def explode(point, tensor):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attach(model, points, explode):
            _forward(model, _features(tiny, tone), DECODER_IDS)
    assert hooks_left(model) == 0
    assert model.model.decoder.layers[0].encoder_attn.config is model.config


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_patterns_equal_eager_attention(tiny, tone, implementation):
    model = copy.deepcopy(tiny.model)
    model.set_attn_implementation(implementation)
    features = _features(tiny, tone)
    eager = _forward(_eager_copy(tiny), features, DECODER_IDS, output_attentions=True)
    seen = {}
    points = select_points(model.config, ["*.hook_pattern"])
    with attach(model, points, lambda point, tensor: seen.__setitem__(point.name, tensor)):
        _forward(model, features, DECODER_IDS)
    for i in range(model.config.encoder_layers):
        torch.testing.assert_close(seen[f"encoder.blocks.{i}.attn.hook_pattern"], eager.encoder_attentions[i],
                                   atol=1e-5, rtol=1e-4)
    for i in range(model.config.decoder_layers):
        torch.testing.assert_close(seen[f"decoder.blocks.{i}.attn.hook_pattern"], eager.decoder_attentions[i],
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(seen[f"decoder.blocks.{i}.cross_attn.hook_pattern"], eager.cross_attentions[i],
                                   atol=1e-5, rtol=1e-4)


def test_outputs_from_patterns_skip_the_kernel_and_match_it(tiny, tone, monkeypatch):
    """The replay's routing: patterns equal eager attention, outputs are probs·v (close to the
    kernel's), and the model's own attention kernel is not run a second time."""
    from probe import hooks as hooks_mod

    model = tiny.model
    features = _features(tiny, tone)
    plain = _forward(model, features, DECODER_IDS).logits
    eager = _forward(_eager_copy(tiny), features, DECODER_IDS, output_attentions=True)
    kernel_calls = []
    original = hooks_mod.original_attention_function

    def counting(module):
        function = original(module)

        def wrapped(*args, **kwargs):
            kernel_calls.append(module)
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(hooks_mod, "original_attention_function", counting)
    seen = {}
    points = select_points(model.config, ["decoder.blocks.*.cross_attn.hook_pattern", "decoder.blocks.*.attn.hook_pattern"])
    with attach(model, points, lambda point, tensor: seen.__setitem__(point.name, tensor), outputs_from_patterns=True):
        routed = _forward(model, features, DECODER_IDS).logits
    assert hooks_left(model) == 0 and not hasattr(model.model.decoder.layers[0].encoder_attn, "_probe_routes")
    assert kernel_calls == []
    torch.testing.assert_close(routed, plain, atol=1e-4, rtol=1e-4)
    for i in range(model.config.decoder_layers):
        torch.testing.assert_close(seen[f"decoder.blocks.{i}.cross_attn.hook_pattern"], eager.cross_attentions[i],
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(seen[f"decoder.blocks.{i}.attn.hook_pattern"], eager.decoder_attentions[i],
                                   atol=1e-5, rtol=1e-4)
    with attach(model, points, lambda point, tensor: None):  # the default still runs the kernel
        _forward(model, features, DECODER_IDS)
    assert len(kernel_calls) == 2 * model.config.decoder_layers


def test_patterns_during_cached_generation_equal_eager_rows(tiny, tone):
    """Each generation step's self/cross-attention row equals the eager full-sequence row."""
    model = tiny.model
    features = _features(tiny, tone)
    steps = []
    points = select_points(model.config, ["decoder.blocks.1.attn.hook_pattern", "decoder.blocks.1.cross_attn.hook_pattern"])
    with attach(model, points, lambda point, tensor: steps.append((point.name, tensor))):
        with torch.inference_mode():
            generated = model.generate(features, language="en", task="transcribe", max_new_tokens=6, min_new_tokens=6)
    prompt = [50258, 50259, 50359, 50363]
    sequence = torch.tensor([prompt + generated[0].tolist()[-6:]])
    eager = _forward(_eager_copy(tiny), features, sequence, output_attentions=True)
    self_rows = [t for name, t in steps if name.endswith(".attn.hook_pattern") and "cross" not in name]
    cross_rows = [t for name, t in steps if "cross_attn" in name]
    assert self_rows[0].shape[-2] == len(prompt)  # step 0 is the whole prompt
    for step, (self_row, cross_row) in enumerate(zip(self_rows[1:], cross_rows[1:]), start=1):
        position = len(prompt) - 1 + step
        torch.testing.assert_close(self_row[0, :, -1], eager.decoder_attentions[1][0, :, position, : position + 1],
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cross_row[0, :, -1], eager.cross_attentions[1][0, :, position], atol=1e-5, rtol=1e-4)


class _ReplayPatterns:
    """Keeps each window's replay cross-attention patterns (layer → [head, query, frame])."""

    name = "replay_patterns"

    def __init__(self):
        self.patterns = {}

    @hookimpl
    def probe_replay_points(self, run):
        return ["decoder.blocks.*.cross_attn.hook_pattern"]

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        self.patterns[(run.clip.source, ctx.window, point.layer)] = tensor[0, :, :len(ctx.tokens)].clone()


def _replay_patterns(tiny, clips, beams, monkeypatch=None):
    recorder = _ReplayPatterns()
    pm = get_plugin_manager(plugins=[recorder], disabled=list(DEFAULT_PLUGINS), autoload=False)
    tracer = Tracer(tiny, pm, DecodeOptions(language="en", num_beams=beams, max_new_tokens=6))
    runs = list(tracer.trace_many(clips, batch_size=len(clips)))
    return recorder.patterns, runs


@pytest.mark.parametrize("beams", [1, 3])
def test_clips_decoded_together_replay_as_each_alone(tiny, tone, beams, monkeypatch):
    """Two different clips in one generate() call, with beams: each window's tokens and replay
    cross-attention (from generate()'s own keys/values, row i·beams) equal those of the clip traced
    alone with the replay computing its keys/values itself."""
    from probe.tracer.cross_kv import CrossKeyValues

    made = []
    original = CrossKeyValues.cache
    monkeypatch.setattr(CrossKeyValues, "cache", lambda self, rows: made.append(original(self, rows)) or made[-1])
    clips = [audio_from_array(tone, 16000, source="tone"),
             audio_from_array(0.3 * np.random.default_rng(1).standard_normal(48000, dtype=np.float32), 16000,
                              source="noise")]
    together, runs = _replay_patterns(tiny, clips, beams)
    assert made and all(cache is not None for cache in made)  # the keys/values were caught and reused
    monkeypatch.setattr(CrossKeyValues, "cache", lambda self, rows: None)
    alone, again = {}, []
    for clip in clips:
        patterns, (run,) = _replay_patterns(tiny, [clip], beams)
        alone.update(patterns)
        again.append(run)
    assert [w.tokens for r in runs for w in r.windows] == [w.tokens for r in again for w in r.windows]
    assert together.keys() == alone.keys() and len(together) == 2 * tiny.model.config.decoder_layers
    # the tiny random model attends almost uniformly (≈1/1500 per frame; the two clips differ by
    # ~2e-6), so the tolerance is far below what a window handed the other's rows would show
    for key in together:
        torch.testing.assert_close(together[key], alone[key], atol=1e-8, rtol=1e-5)
    assert hooks_left(tiny.model) == 0


def test_attach_nests_pattern_routes(tiny, tone):
    """An attach inside another on the same attention module: both see the pattern; the inner one
    decides the output; leaving both restores the module."""
    model = tiny.model
    features = _features(tiny, tone)
    point = select_points(model.config, ["decoder.blocks.0.cross_attn.hook_pattern"])
    outer, inner = [], []
    with attach(model, point, lambda p, t: outer.append(t)):
        with attach(model, point, lambda p, t: inner.append(t), outputs_from_patterns=True):
            _forward(model, features, DECODER_IDS)
        assert hasattr(model.model.decoder.layers[0].encoder_attn, "_probe_routes")
        _forward(model, features, DECODER_IDS)
    assert len(outer) == 2 and len(inner) == 1
    torch.testing.assert_close(outer[0], inner[0])
    assert hooks_left(model) == 0 and not hasattr(model.model.decoder.layers[0].encoder_attn, "_probe_routes")
