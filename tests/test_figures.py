"""probe.figures on real traces: every figure draws, has a title, axis labels with units and a
labelled colour bar where colour carries a value, shows what the trace holds (tokens, words,
languages, shapes), and a missing record is a one-line StoreError naming it and its plugin."""

from __future__ import annotations

import html
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure

from probe import figures
from probe.errors import StoreError
from probe.plugins.cross_attention.figures import attended_span, cross_attention_rows
from probe.plugins.token_probs.figures import transcript_html
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration

# figure -> a unit (or axis name) its axis labels must mention
UNITS = {  # the core's figures first, then each built-in plugin's, in plugin order
    "waveform": "time (s)", "log_mel": "time (s)", "windows": "time in the clip (s)",
    "conv_stem": "time (s)", "encoder_output": "time in the clip (s)", "encoder_attention": "time (s)",
    "decoder_attention": "token",
    "attention_summary": "(nats)", "cross_attention": "time (s)", "token_probs": "(nats)",
    "language_probs": "probability", "logit_lens": "layer",
}
WITHOUT_COLOUR_SCALE = {"waveform", "language_probs"}


def colour_bars(fig: Figure) -> list:
    return [ax for ax in fig.axes if hasattr(ax, "_colorbar")]


def data_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")]


def labels(fig: Figure) -> list[str]:
    """Every axis label, colour bars' included."""
    return [label for ax in fig.axes if ax.get_visible() for label in (ax.get_xlabel(), ax.get_ylabel()) if label]


def tick_texts(fig: Figure) -> set[str]:
    return {tick.get_text() for ax in data_axes(fig) for tick in ax.get_xticklabels() + ax.get_yticklabels()}


@pytest.fixture(scope="module")
def english(dashboard_store):
    return dashboard_store.english


def test_figures_registry_has_every_view(english):
    """Every figure a plain trace can draw has its units checked below (the effect figures need an
    intervened trace: tests/test_effect.py and tests/test_figure_bounds.py draw them)."""
    from probe import contributions

    found = contributions.current().figures
    assert [name for name in figures.FIGURES if found[name].available(english)] == list(UNITS)
    assert {"effect_logprobs", "effect_cross_attention"} <= set(figures.FIGURES)


@pytest.mark.parametrize("name", list(UNITS))
def test_every_figure_is_titled_labelled_and_has_its_colour_bar(english, name):
    fig = figures.FIGURES[name](english)
    assert isinstance(fig, Figure)
    titles = [fig.get_suptitle()] + [ax.get_title() for ax in data_axes(fig)]
    assert any(title.strip() for title in titles), f"{name} has no title"
    axis_labels = labels(fig)
    assert any(ax.get_xlabel() for ax in data_axes(fig)) and any(ax.get_ylabel() for ax in data_axes(fig))
    assert any(UNITS[name] in label for label in axis_labels), f"{name} labels {axis_labels} lack {UNITS[name]}"
    bars = colour_bars(fig)
    if name in WITHOUT_COLOUR_SCALE:
        assert not bars
    else:
        assert bars, f"{name} draws a colour scale without a colour bar"
        assert all(bar.get_ylabel() or bar.get_xlabel() for bar in bars), f"{name} has an unlabelled colour bar"


def test_log_mel_is_n_mels_by_3000_frames(english):
    fig = figures.log_mel(english)
    n_mels = english.manifest["model"]["config"]["num_mel_bins"]
    image = data_axes(fig)[0].images[0].get_array()
    assert image.shape == (n_mels, 3000)
    assert f"{n_mels} Mel bins × 3000 frames" in data_axes(fig)[0].get_title()


def test_log_mel_matches_whisper_feature_extractor(english):
    from transformers import WhisperFeatureExtractor

    n_mels = english.manifest["model"]["config"]["num_mel_bins"]
    samples = figures.audio_samples(english)
    expected = WhisperFeatureExtractor(feature_size=n_mels)(samples, sampling_rate=16000, return_tensors="np")
    np.testing.assert_allclose(figures.log_mel_array(english), expected["input_features"][0], atol=2e-4)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_stored_mel_filters_are_transformers_filter_bank(n_mels):
    from transformers.audio_utils import mel_filter_bank

    expected = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    # equal to the last bits on the machine that stored them; elsewhere libm may round one ULP apart
    np.testing.assert_allclose(figures.audio.mel_filters(n_mels), expected, rtol=1e-12, atol=1e-15)


def test_conv_stem_shows_3000_to_1500_frames(english):
    fig = figures.conv_stem(english, channels=8)
    assert "3000 → 1500" in fig.get_suptitle()
    panels = data_axes(fig)
    assert [ax.images[0].get_array().shape[0] for ax in panels] == [8, 8, 8, 8]
    assert panels[1].images[0].get_array().shape[1] == 2 * panels[3].images[0].get_array().shape[1]


def test_inner_panels_draw_no_ticks_and_outer_ones_label_the_shared_scale(english, tmp_path):
    fig = figures.encoder_attention(english, 0)
    panels = [ax for ax in data_axes(fig) if ax.images]
    spec = [ax.get_subplotspec() for ax in panels]
    for ax, where in zip(panels, spec):
        assert bool(len(ax.get_xticks())) == where.is_last_row()
        assert bool(len(ax.get_yticks())) == where.is_first_col()
    corner = panels[spec.index(next(s for s in spec if s.is_last_row() and s.is_first_col()))]
    inner = panels[spec.index(next(s for s in spec if not s.is_last_row() and not s.is_first_col()))]
    assert inner.get_xlim() == corner.get_xlim() and inner.get_ylim() == corner.get_ylim()  # still shared
    assert [t.get_text() for t in corner.get_xticklabels() if t.get_text()]
    figures.save(fig, tmp_path / "grid.png")
    assert not len(inner.get_xticks()) and len(corner.get_xticks())  # as drawn: each keeps its own ticker


def test_attention_grid_has_a_panel_per_head_and_one_head_alone(english):
    heads = english.manifest["model"]["config"]["encoder_attention_heads"]
    assert len([ax for ax in data_axes(figures.encoder_attention(english, 0)) if ax.images]) == heads
    single = figures.encoder_attention(english, 1, head=2)
    assert [ax.get_title() for ax in data_axes(single)] == ["head 2"]
    assert "layer 1" in single.get_suptitle()
    with pytest.raises(StoreError, match="head 99 does not exist"):
        figures.encoder_attention(english, 0, head=99)
    with pytest.raises(StoreError, match="layer 40 does not exist"):
        figures.decoder_attention(english, 40)


def test_decoder_attention_labels_axes_with_prompt_and_tokens(english):
    ticks = tick_texts(figures.decoder_attention(english, 2, head=0))
    assert "<|startoftranscript|>" in ticks and "<|en|>" in ticks
    assert "fox" in ticks


def test_cross_attention_puts_tokens_over_time_with_word_timestamps(english):
    fig = figures.cross_attention(english)
    words = english.words()
    assert words and {"quick", "fox"} <= {w["word"].strip() for w in words}
    spectrogram, attention = data_axes(fig)
    assert {"quick", "fox"} <= {text.get_text() for text in spectrogram.texts}  # word labels on the time axis
    boxes = [c for c in attention.collections if isinstance(c, PatchCollection)]
    assert len(boxes) == 1 and len(boxes[0].get_paths()) == len(words)  # one box per word
    assert "fox" in tick_texts(fig)
    assert "alignment-head" in attention.get_title()
    layer_fig = figures.cross_attention(english, layer=3, head=1)
    assert "layer 3, head 1" in data_axes(layer_fig)[1].get_title()


def test_attended_span_of_a_word_overlaps_its_timestamp(english):
    matrix, tokens = cross_attention_rows(english)
    assert matrix.shape[0] == len(tokens) and matrix.shape[1] >= english.manifest["audio"]["duration"] * 50 - 1
    fox = next(w for w in english.words() if w["word"].strip() == "fox")
    row = next(i for i, t in enumerate(tokens) if t["token"].strip() == "fox")
    start, end = attended_span(english, row)
    assert start < fox["end"] and end > fox["start"]
    assert 0 <= start < end <= english.manifest["audio"]["duration"]


def test_token_figures_show_the_decoded_tokens(english):
    assert "fox" in tick_texts(figures.token_probs(english))
    assert "fox" in tick_texts(figures.logit_lens(english))
    page = figures.token_probs(english, first=2, count=3)
    assert "tokens 3–5 of" in page.get_suptitle()


def test_language_probs_names_the_detected_language(dashboard_store):
    trace = dashboard_store.translate
    fig = figures.language_probs(trace, top=5)
    ax = data_axes(fig)[0]
    assert f"<|{trace.language}|>" in ax.get_title()
    assert len(ax.patches) == 5
    assert f"<|{trace.language}|>" in {tick.get_text() for tick in ax.get_yticklabels()}


def test_transcript_html_colours_every_text_token_and_escapes(english):
    page = transcript_html(english)
    rows = [row for row in english.table("token_probs.tokens") if row["kind"] == "text"]
    assert page.count("<span title=") == len(rows)
    assert "fox" in page and "background:rgb(" in page and "p=" in page
    assert "<script" not in page


def test_transcript_html_holds_the_transcripts_tokens_or_one_windows(dashboard_store):
    trace = dashboard_store.retried  # window 1 is noise, skipped as no speech: its tokens are not in the transcript
    rows = trace.table("token_probs.tokens")

    def text(page):
        return html.unescape("".join(re.findall(r'padding:1px 0">([^<]*)</span>', page)))

    assert text(transcript_html(trace)).strip() == trace.transcript
    for window in (0, 1):
        expected = "".join(row["token"] for row in rows if row["window"] == window and row["kind"] == "text")
        assert expected and text(transcript_html(trace, window)) == expected


def test_record_heatmap_draws_any_tensor_record(english):
    fig = figures.record_heatmap(english, "cross_attention.weights", index=(1, 2))
    assert "layer=1, head=2" in data_axes(fig)[0].get_title()
    assert colour_bars(fig)


@pytest.mark.parametrize("name,record,plugin", [
    ("encoder_attention", "attention.encoder", "attention"),
    ("attention_summary", "attention.encoder_entropy", "attention"),
    ("logit_lens", "logit_lens.top_ids", "logit_lens"),
    ("conv_stem", "activations.encoder.hook_conv1", "activations"),
])
def test_missing_record_is_a_one_line_store_error(dashboard_store, name, record, plugin):
    with pytest.raises(StoreError) as caught:
        figures.FIGURES[name](dashboard_store.transcribe)
    message = str(caught.value)
    assert record in message and f"{plugin} plugin" in message and "\n" not in message


def test_damaged_record_is_a_store_error(dashboard_store):
    from probe.store import Store

    damaged = Store(dashboard_store.path).open(dashboard_store.damaged_id)
    with pytest.raises(StoreError, match="cross_attention.weights"):
        figures.cross_attention(damaged, layer=0)


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_save_writes_print_formats(english, tmp_path, suffix, magic):
    path = figures.save(figures.FIGURES["language_probs"](english), tmp_path / f"languages{suffix}", dpi=150)
    assert path.read_bytes().startswith(magic)


def test_pool_columns_keeps_rows_and_caps_columns():
    array = np.arange(2 * 3001, dtype=np.float32).reshape(2, 3001)  # [row, column]
    pooled, factor = figures.pool_columns(array, 1500)
    assert factor == 3 and pooled.shape == (2, 1001)
    assert pooled[0, 0] == pytest.approx(1.0)


def test_drawing_from_records_needs_no_torch(dashboard_store):
    # Decoding the stored audio is the store's business; every figure drawn from records, and the
    # log-Mel computed from given samples, must not pull torch in.
    script = (
        "import sys\nimport numpy as np\nfrom probe.store import Store\nfrom probe import figures\n"
        f"trace = Store({str(dashboard_store.path)!r}).open({dashboard_store.english.id!r})\n"
        "for name in ('encoder_attention', 'decoder_attention', 'attention_summary', 'token_probs', "
        "'logit_lens', 'language_probs'):\n    figures.FIGURES[name](trace)\n"
        "from probe.plugins.token_probs.figures import transcript_html\ntranscript_html(trace)\n"
        "trace.audio = lambda start=None, end=None: (np.zeros(16000, dtype=np.float32), 16000)\n"
        "figures.log_mel_array(trace)\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_alignment_rows_of_a_later_window_are_its_own(dashboard_store):
    """Each window adds its text rows and a closing row to the alignment matrix: a later window's
    rows start after every earlier window's (an off-by-one per window would shift them)."""
    trace = dashboard_store.retried
    alignment = trace.tensor("cross_attention.alignment")
    tokens = trace.table("cross_attention.tokens")
    before = sum(1 for t in tokens if t["aligned"] and t["window"] == 0)
    matrix, rows = cross_attention_rows(trace, window=1)
    assert len(rows) == sum(1 for t in tokens if t["aligned"] and t["window"] == 1) == len(matrix)
    np.testing.assert_array_equal(matrix, alignment[before:before + len(rows), :matrix.shape[1]])
    assert [r["token"] for r in rows if r["is_text"]][0].strip().lower().startswith("wh")
