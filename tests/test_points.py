"""Hook-point names, shapes and glob selection."""

import pytest

from probe.errors import OptionError
from probe.points import list_points, select_points

SPEC_NAMES = [
    "encoder.hook_conv1", "encoder.hook_conv2", "encoder.hook_embed", "encoder.blocks.0.attn.hook_pattern",
    "encoder.blocks.0.hook_resid_post", "encoder.blocks.0.hook_resid_pre", "encoder.blocks.0.hook_mlp_out",
    "encoder.hook_ln_final", "decoder.hook_embed", "decoder.blocks.0.attn.hook_pattern",
    "decoder.blocks.0.cross_attn.hook_pattern", "decoder.blocks.0.hook_resid_post", "decoder.hook_ln_final",
    "hook_logits",
]


def test_every_spec_point_exists_with_documented_shape(tiny):
    points = {p.name: p for p in list_points(tiny.model.config)}
    for name in SPEC_NAMES:
        assert name in points, name
        assert len(points[name].shape) == len(points[name].sizes)
        assert points[name].doc
    assert points["encoder.hook_conv1"].sizes[2] == 3000
    assert points["encoder.hook_conv2"].sizes[2] == 1500
    assert points["decoder.blocks.1.cross_attn.hook_pattern"].shape == ("batch", "head", "query", "frame")
    assert points["hook_logits"].sizes[-1] == tiny.model.config.vocab_size


def test_point_count_scales_with_layers(tiny, base):
    for loaded in (tiny, base):
        config = loaded.model.config
        # per block: encoder 6 (with attn.hook_z), decoder 9 (with attn.hook_z and cross_attn.hook_z)
        expected = 3 + 6 * config.encoder_layers + 1 + 1 + 9 * config.decoder_layers + 2
        assert len(list_points(config)) == expected


def test_glob_selects_every_layer(tiny):
    chosen = select_points(tiny.model.config, ["decoder.blocks.*.cross_attn.hook_pattern"])
    assert [p.name for p in chosen] == [f"decoder.blocks.{i}.cross_attn.hook_pattern"
                                       for i in range(tiny.model.config.decoder_layers)]


def test_unknown_point_names_close_matches(tiny):
    with pytest.raises(OptionError) as err:
        select_points(tiny.model.config, ["decoder.blocks.0.crossattn.hook_pattern"])
    message = str(err.value)
    assert "\n" not in message
    assert "decoder.blocks.{i}.cross_attn.hook_pattern" in message
