"""Every figure stays legible on a 1920 × 1080 projector and in print, on the worst window a
lecture meets: a full 30 s window with 200 decoded tokens (and 200 word timings).

The trace is synthetic — written through the store's writer with every record the built-in
figures read, shaped as the plugins write them (a base-sized model: 6 layers, 8 heads) — so the
test needs no model run.  Each registered figure (per-window ones for window 0) is drawn and
checked: its pixel size within :func:`probe.figures.legible.max_pixels` at screen and print dpi
with nothing drawn outside it,
no text under :data:`~probe.figures.legible.MIN_FONT_PT`, no two tick labels of an axis and no two
labels inside an axes overlapping, text over an image in at least 4.5:1 contrast with the colour
under it, and ``time_range`` narrowing the time axis to the range asked for.
"""

from __future__ import annotations

import io
import itertools

import matplotlib
import numpy as np
import pytest
from matplotlib import colors
from matplotlib.image import AxesImage
from matplotlib.text import Text
from PIL import Image

from probe import contributions
from probe.audio.files import encode_flac
from probe.errors import OptionError
from probe.figures import legible, png_bytes
from probe.store import Store

N_TOKENS, SECONDS, LAYERS, HEADS, K = 200, 30.0, 6, 8, 5
PROMPT = [50258, 50259, 50359, 50363]
PROMPT_TEXTS = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
WORDS = ("so the encoder reads eighty mel bins over three thousand frames and the decoder writes "
         "one token at a time conditioned on everything before it internationalisation").split()
ZOOM = (12.0, 17.5)


@pytest.fixture(autouse=True, scope="module")
def built_in_plugins():
    """The built-in plugins' figures only (none of this machine's entry points)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    contributions.configure()
    yield
    patch.undo()
    contributions.configure()


def _records(writer, rng) -> None:
    """Every record the built-in figures read, for one 30 s window of N_TOKENS tokens."""
    ids = rng.integers(300, 50000, N_TOKENS)
    texts = [" " + WORDS[i % len(WORDS)] for i in range(N_TOKENS)]
    probs = rng.beta(2, 1, N_TOKENS)
    top_ids = np.stack([ids] + [rng.integers(300, 50000, N_TOKENS) for _ in range(K - 1)], 1)  # [token, k]
    top_texts = [[texts[t]] + [" " + WORDS[(t * 7 + j) % len(WORDS)] for j in range(1, K)] for t in range(N_TOKENS)]
    top_probs = np.sort(rng.dirichlet(np.ones(K + 3), N_TOKENS)[:, :K], 1)[:, ::-1]  # [token, k]
    writer.add_table("token_probs.tokens", [
        {"window": 0, "step": t, "position": 4 + t, "token_id": int(ids[t]), "token": texts[t], "kind": "text",
         "prob": float(probs[t]), "logprob": float(np.log(probs[t])), "entropy": float(rng.uniform(0, 4)),
         "top_k_ids": [int(i) for i in top_ids[t]], "top_k_tokens": top_texts[t],
         "top_k_probs": [float(p) for p in top_probs[t]]} for t in range(N_TOKENS)], plugin="token_probs")
    writer.add_tensor("token_probs.top_k_ids", top_ids.astype(np.int32), plugin="token_probs")
    writer.add_tensor("token_probs.top_k_probs", top_probs.astype(np.float32), plugin="token_probs")
    languages = {f"l{i:02d}": float(p) for i, p in enumerate(rng.dirichlet(np.ones(99)))}
    languages["en"] = 0.93
    writer.add_json("token_probs.multitask", {"windows": [
        {"window": 0, "language": "en", "language_probability": 0.93, "language_probs": languages,
         "no_speech_probability": 0.01}]}, plugin="token_probs")
    lens_ids = rng.integers(300, 50000, (LAYERS, N_TOKENS, K)).astype(np.int32)  # [layer, token, k]
    lens_ids[-1, :, 0] = ids
    writer.add_tensor("logit_lens.top_ids", lens_ids, plugin="logit_lens")
    writer.add_tensor("logit_lens.top_probs", rng.uniform(0, 1, (LAYERS, N_TOKENS, K)).astype(np.float32),
                      plugin="logit_lens")
    writer.add_json("logit_lens.top_tokens", [[[" " + WORDS[(layer + t + j) % len(WORDS)] for j in range(K)]
                                               for t in range(N_TOKENS)] for layer in range(LAYERS)], plugin="logit_lens")
    writer.add_tensor("logit_lens.chosen_rank", rng.integers(0, 50, (LAYERS, N_TOKENS)).astype(np.int32),
                      plugin="logit_lens")
    writer.add_tensor("logit_lens.chosen_prob", rng.uniform(0, 1, (LAYERS, N_TOKENS)).astype(np.float32),
                      plugin="logit_lens")
    frames = int(SECONDS * 50)
    centres = (np.arange(N_TOKENS) + 0.5) * frames / N_TOKENS  # tokens walk through the audio
    ridge = np.exp(-0.5 * ((np.arange(frames)[None, :] - centres[:, None]) / 6) ** 2)  # [token, frame]
    writer.add_tensor("cross_attention.alignment", np.vstack([ridge, ridge[-1:]]).astype(np.float32),
                      plugin="cross_attention")
    writer.add_table("cross_attention.tokens", [
        {"window": 0, "step": t, "token_id": int(ids[t]), "token": texts[t], "is_text": True, "aligned": True}
        for t in range(N_TOKENS)], plugin="cross_attention")
    span = SECONDS / N_TOKENS
    writer.add_json("cross_attention.words", [
        {"word": texts[t], "tokens": [int(ids[t])], "start": round(t * span, 2), "end": round((t + 1) * span, 2),
         "window": 0, "probability": float(probs[t])} for t in range(N_TOKENS)], plugin="cross_attention")
    writer.add_tensor("cross_attention.rejected", ridge[:120].astype(np.float32), plugin="cross_attention")
    clean_lp = np.log(probs)
    writer.add_table("effect.logprobs", [  # an intervention measured against its clean trace (probe.effect)
        {"window": 0, "position": t, "token": int(ids[t]), "text": texts[t], "in_transcript": True,
         "clean": float(clean_lp[t]), "intervened": float(clean_lp[t] - rng.exponential(1.0)),
         "delta": 0.0} for t in range(N_TOKENS)], plugin="effect")
    shifted = np.roll(ridge, 40, axis=1)  # [token, frame]
    writer.add_tensor("effect.cross_attention", np.stack([ridge, shifted]).astype(np.float16), plugin="effect")
    writer.add_table("cross_attention.rejected_tokens", [
        {"window": 0, "attempt": 0, "temperature": 0.0, "token_id": int(ids[t % 3]), "token": texts[t % 3]}
        for t in range(120)], plugin="cross_attention")
    encoder = rng.random((LAYERS, HEADS, 375, 375), dtype=np.float32)  # [layer, head, query_cell, key_cell]
    writer.add_tensor("attention.encoder", (encoder / encoder.sum(-1, keepdims=True)).astype(np.float16),
                      plugin="attention", meta={"pool": 4, "window": 0, "frames": frames})
    writer.add_tensor("attention.encoder_entropy", rng.uniform(0, 6, (1, LAYERS, HEADS)).astype(np.float32),
                      plugin="attention")
    writer.add_tensor("attention.encoder_distance", rng.uniform(0, 400, (1, LAYERS, HEADS)).astype(np.float32),
                      plugin="attention")
    positions = len(PROMPT) + N_TOKENS
    causal = np.tril(rng.uniform(0, 1, (positions, positions)))
    writer.add_tensor("attention.decoder", np.broadcast_to(causal / causal.sum(1, keepdims=True),
                                                           (LAYERS, HEADS, positions, positions)).astype(np.float16),
                      plugin="attention")
    writer.add_tensor("activations.encoder.hook_conv1", rng.normal(0, 1, (1, 64, 3000)).astype(np.float16),
                      plugin="activations")
    writer.add_tensor("activations.encoder.hook_conv2", rng.normal(0, 1, (1, 64, 1500)).astype(np.float16),
                      plugin="activations")
    writer.add_tensor("activations.encoder.hook_ln_final", rng.normal(0, 1, (1, 1500, 512)).astype(np.float16),
                      plugin="activations")
    return ids, texts


@pytest.fixture(scope="module")
def long_trace(tmp_path_factory):
    """A 30 s, 200-token trace of a base-sized model, written through the store's writer."""
    rng = np.random.default_rng(7)
    t = np.arange(int(SECONDS * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.7 * t))
             + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    store = Store(tmp_path_factory.mktemp("store"))
    with store.writer("thirty-seconds") as writer:
        ids, texts = _records(writer, rng)
        transcript = "".join(texts).strip()
        writer.add_audio(encode_flac(audio), source="synthetic", sha256="0" * 64, duration=SECONDS)
        writer.update_manifest(
            model={"id": "synthetic-base", "alignment_heads": [[3, 1], [4, 2], [5, 0]],
                   "config": {"d_model": 512, "encoder_layers": LAYERS, "decoder_layers": LAYERS,
                              "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS,
                              "num_mel_bins": 80, "vocab_size": 51865}},
            prompt=[{"id": i, "token": text} for i, text in zip(PROMPT, PROMPT_TEXTS)], transcript=transcript,
            interventions=[{"kind": "block", "start": 3.0, "end": 5.0, "layers": None}],
            effect={"clean": "clean-trace", "clean_transcript": transcript, "headline": "wer", "wer": 0.4,
                    "cer": 0.3, "tokens_equal": False, "tokens": N_TOKENS, "delta_logprob_total": -200.0,
                    "delta_logprob_mean": -1.0, "cross_attention_change": 1.2,
                    "windows": [{"index": 0, "start": 0.0, "n_frames": 1500}]},
            language="en", windows=[{
                "index": 0, "start": 0.0, "end": SECONDS, "seek": 0, "next_seek": 3000, "text": transcript,
                "tokens": [int(i) for i in ids], "token_texts": texts, "prompt": PROMPT, "prompt_tokens": PROMPT_TEXTS,
                "kept": N_TOKENS, "skipped": False, "language": "en", "no_speech_probability": 0.01,
                "signals": {"avg_logprob": -0.45},
                "attempts": [{"attempt": 0, "temperature": 0.0, "verdict": "rejected",
                              "reason": "compression ratio 3.1 > 2.4; looping"},
                             {"attempt": 1, "temperature": 0.2, "verdict": "kept"}]}])
    return store.open(writer.id)


def _options(figure) -> dict:
    """What drawing ``figure`` needs beyond the trace: window 0, attempt 0, a record to draw."""
    options = {}
    if "window" in figure.parameters:
        options["window"] = 0
    if "attempt" in figure.parameters:
        options["attempt"] = 0
    if "name" in figure.parameters and figure.parameters["name"].default is figure.parameters["name"].empty:
        options["name"] = "attention.encoder_entropy"
        options["index"] = (0,)
    return options


def _figures():
    return list(contributions.current().figures.values())


def saved_pixels(fig, dpi: float) -> tuple[float, float]:
    """The pixel size ``fig`` is saved at with ``dpi``: its own size, as its layout engine fills
    it (png_bytes and save keep that layout, :func:`probe.figures.base.fix_layout`)."""
    width, height = fig.get_size_inches()
    return width * dpi, height * dpi


def cut_off(fig) -> list[str]:
    """How far drawn content reaches outside the figure, edge by edge (inches; empty if nowhere):
    a figure saved at its own size would lose it."""
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    width, height = fig.get_size_inches()
    return [f"{edge} by {amount:.2f} in" for edge, amount in
            (("left", -box.x0), ("bottom", -box.y0), ("right", box.x1 - width), ("top", box.y1 - height))
            if amount > 0.02]


@pytest.fixture(scope="module")
def drawn(long_trace):
    """Every registered figure of the long trace, drawn once and laid out: name → figure."""
    result = {}
    for figure in _figures():
        result[figure.name] = fig = figure.function(long_trace, **_options(figure))
        fig.draw_without_rendering()
    return result


def test_saved_size_is_the_figure_as_laid_out(drawn):
    fig = drawn["waveform"]
    size = Image.open(io.BytesIO(png_bytes(fig))).size
    assert size == pytest.approx(saved_pixels(fig, legible.SCREEN_DPI), abs=1.0)  # savefig truncates


def test_every_built_in_figure_is_drawn(drawn):
    assert {"waveform", "log_mel", "windows", "record_heatmap", "conv_stem", "encoder_attention",
            "decoder_attention", "attention_summary", "cross_attention", "rejected_attention", "token_probs",
            "language_probs", "logit_lens"} <= set(drawn)


def _texts(fig) -> list[Text]:
    return [text for text in fig.findobj(Text) if text.get_visible() and text.get_text().strip()]


@pytest.mark.parametrize("name", [figure.name for figure in _figures()])
def test_figure_fits_a_screen_and_a_page(drawn, name):
    for dpi in (legible.SCREEN_DPI, legible.PRINT_DPI):
        width, height = saved_pixels(drawn[name], dpi)
        most = legible.max_pixels(dpi)
        assert width <= most[0] + 1 and height <= most[1] + 1, \
            f"{name} is {width:.0f}×{height:.0f} px at {dpi} dpi, more than {most}"
    assert not cut_off(drawn[name]), f"{name} reaches outside its figure: {cut_off(drawn[name])}"


@pytest.mark.parametrize("name", [figure.name for figure in _figures()])
def test_no_text_below_the_minimum_size(drawn, name):
    fig = drawn[name]
    small = [(text.get_text()[:20], text.get_fontsize()) for text in _texts(fig)
             if text.get_fontsize() < legible.MIN_FONT_PT]
    assert not small, f"{name} has text under {legible.MIN_FONT_PT} pt: {small[:5]}"


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2)
            if a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5]


@pytest.mark.parametrize("name", [figure.name for figure in _figures()])
def test_labels_do_not_overlap(drawn, name):
    fig = drawn[name]
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            labels = [label for label in axis.get_ticklabels() if label.get_visible() and label.get_text()]
            crowded = _overlaps([label.get_window_extent(renderer) for label in labels])
            assert not crowded, (f"{name}: {axis.axis_name} tick labels overlap: "
                                 f"{[(labels[i].get_text(), labels[j].get_text()) for i, j in crowded[:3]]}")
        inside = [text for text in ax.texts if text.get_visible() and text.get_text().strip()]
        crowded = _overlaps([text.get_window_extent(renderer) for text in inside])
        assert not crowded, (f"{name}: labels overlap in {ax.get_title()!r}: "
                             f"{[(inside[i].get_text(), inside[j].get_text()) for i, j in crowded[:3]]}")


def _colour_under(ax, text: Text):
    """The colour a text inside ``ax`` is read against: its box, else the image cell under it."""
    patch = text.get_bbox_patch()
    if patch is not None:
        return [legible.composite(patch.get_facecolor(), under) for under in ("black", "white")]
    x, y = text.get_position()
    for image in ax.images:
        if not isinstance(image, AxesImage):
            continue
        left, right, bottom, top = image.get_extent()
        values = image.get_array()
        rows, columns = values.shape[:2]
        column = int(np.clip((x - left) / (right - left) * columns, 0, columns - 1))
        # row 0 lies at the extent's "top" edge with origin="upper", at its "bottom" with "lower"
        fraction = (top - y) / (top - bottom) if image.origin == "upper" else (y - bottom) / (top - bottom)
        row = int(np.clip(fraction * rows, 0, rows - 1))
        value = values[row, column]
        if np.ma.is_masked(value) or not np.isfinite(value):
            return [colors.to_rgb(ax.get_facecolor())]
        return [image.cmap(image.norm(value))]
    return []


@pytest.mark.parametrize("name", [figure.name for figure in _figures()])
def test_text_over_images_has_contrast(drawn, name):
    fig = drawn[name]
    checked = 0
    for ax in fig.axes:
        if not ax.images:
            continue
        for text in ax.texts:
            if not (text.get_visible() and text.get_text().strip()):
                continue
            for background in _colour_under(ax, text):
                ratio = legible.contrast_ratio(text.get_color(), background)
                assert ratio >= legible.MIN_CONTRAST, \
                    f"{name}: {text.get_text()!r} at {ratio:.2f}:1 on {background}"
                checked += 1
    if name in {"logit_lens", "token_probs", "attention_summary", "cross_attention"}:
        assert checked, f"{name} writes no text over its cells"


@pytest.fixture(scope="module")
def zoomed(long_trace):
    """Every figure drawn over time, zoomed to ZOOM: name → figure."""
    return {figure.name: figure.function(long_trace, time_range=ZOOM, **_options(figure))
            for figure in _figures() if "time_range" in figure.parameters}


@pytest.mark.parametrize("name", [figure.name for figure in _figures() if "time_range" in figure.parameters])
def test_time_range_narrows_the_time_axis(long_trace, zoomed, name):
    figure = contributions.current().figure(name)
    fig = zoomed[name]
    timed = [ax for ax in fig.axes if ax.get_visible() and "time" in ax.get_xlabel()]
    assert timed, f"{name} has no time axis"
    for ax in timed:
        assert ax.get_xlim() == pytest.approx(ZOOM, abs=0.05), f"{name}: {ax.get_xlabel()} spans {ax.get_xlim()}"
    assert legible.time_span(figure.function, long_trace, _options(figure)) == pytest.approx((0.0, SECONDS))


def test_time_figures_all_zoom():
    """The figures drawn over time accept ``time_range`` (what the export and the slider pass)."""
    zoomable = {figure.name for figure in _figures() if "time_range" in figure.parameters}
    assert {"waveform", "log_mel", "windows", "conv_stem", "encoder_attention", "cross_attention",
            "rejected_attention"} <= zoomable


def test_time_range_outside_the_window_is_a_one_line_error(long_trace):
    figure = contributions.current().figure("log_mel")
    with pytest.raises(OptionError, match="outside") as caught:
        figure.function(long_trace, window=0, time_range=(40.0, 50.0))
    assert "\n" not in str(caught.value)
    with pytest.raises(OptionError, match="empty"):
        figure.function(long_trace, window=0, time_range=(5.0, 5.0))


def test_cross_attention_zoom_keeps_the_tokens_heard_there(zoomed):
    fig = zoomed["cross_attention"]
    attention = next(ax for ax in fig.axes if ax.get_ylabel() == "decoded token")
    tokens = attention.images[0].get_array().shape[0]
    expected = (ZOOM[1] - ZOOM[0]) / SECONDS * N_TOKENS
    assert abs(tokens - expected) <= 3, f"{tokens} token rows for {expected:.0f} tokens heard in {ZOOM}"


def test_text_colour_follows_the_background():
    assert legible.text_color_on("white") == "black" and legible.text_color_on("black") == "white"
    assert legible.text_color_on((0.65, 0.0, 0.15, 1.0)) == "white"  # RdYlGn's dark red
    for value in np.linspace(0, 1, 41):
        for cmap in ("RdYlGn", "viridis", "magma", "cividis"):
            background = colors.to_rgb(matplotlib.colormaps[cmap](value))
            assert legible.contrast_ratio(legible.text_color_on(background), background) >= legible.MIN_CONTRAST


def _zoom_page(store_path: str, trace_id: str) -> None:
    """A page drawing one figure over time and one not, through the dashboard's show_figure."""
    from probe.dashboards import context

    trace = context.open_trace(store_path, trace_id)
    context.show_figure(trace, "waveform")
    context.show_figure(trace, "language_probs")


def test_dashboard_offers_a_time_range_slider_for_long_spans(long_trace):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_function(_zoom_page, args=(str(long_trace.path.parent), long_trace.id), default_timeout=120)
    app.run()
    assert not app.exception and not app.error
    assert [slider.label for slider in app.slider] == ["Time range (s)"]  # the waveform's; languages have no time
    assert app.slider[0].value == (0.0, SECONDS)
    app.slider[0].set_value((10.0, 15.0)).run()
    assert not app.exception and not app.error
    assert app.slider[0].value == (10.0, 15.0)
