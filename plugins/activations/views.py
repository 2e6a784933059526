"""activations' dashboard page (*Conv stem*) and its lesson steps (the conv stem, the encoder's
output)."""

from __future__ import annotations

import functools

import numpy as np

from probe import figures
from probe.plugins.activations.figures import CONV1

NORM = "activations.encoder.blocks.{}.hook_resid_post.norm"


def conv_stem_page(trace, st) -> None:
    from probe.dashboards import context

    config = (trace.manifest.get("model") or {}).get("config") or {}
    d_model, n_mels = config.get("d_model", "d_model"), config.get("num_mel_bins", 80)
    st.title("Conv stem")
    st.markdown(f"The encoder starts with two 1-D convolutions over time (kernel 3, GELU after each): "
                f"**conv1** maps the [{n_mels}, 3000] log-Mel input to [{d_model}, 3000]; **conv2** has stride 2 "
                f"and halves time to [{d_model}, 1500] — one encoder frame per 20 ms. Sinusoidal positions are "
                "added next and the transformer blocks never see more than these 1500 frames.")
    channels = st.slider("Channels shown", min_value=4, max_value=64, value=16, step=4, key="conv_channels")
    context.show_figure(trace, "conv_stem", channels=channels)


def conv_stem_step(trace, st, window: int):
    from probe.dashboards import context

    d_model = ((trace.manifest.get("model") or {}).get("config") or {}).get("d_model", "d_model")
    st.markdown(f"Two convolutions turn the picture into vectors: conv1 gives **{d_model} channels × 3000 "
                "frames**, conv2 has stride 2 and halves time to **1500 frames of 20 ms**. Compare the zoomed "
                "panels: conv2's columns are twice as wide.")
    if window > 0 and CONV1 in trace.records:
        st.caption("The trace keeps the conv stem of the first window only, so this step shows window 1.")
    return functools.partial(context.show_figure, trace, "conv_stem")


def encoder_output_step(trace, st, window: int):
    config = (trace.manifest.get("model") or {}).get("config") or {}
    layers, d_model = int(config.get("encoder_layers", 1)), config.get("d_model", "d_model")
    long_form = len(trace.manifest.get("windows") or []) > 1
    st.markdown(f"After positional embeddings and **{layers} transformer blocks** of self-attention, the "
                f"encoder hands the decoder **1500 × {d_model}** numbers: one vector per 20 ms. The chart shows "
                f"how large each frame's vector is after each block in "
                f"{f'window {window + 1}' if long_form else 'this clip'}; frames of speech and of padding differ.")
    return functools.partial(_encoder_norms, trace, st, window, layers)


def _encoder_norms(trace, st, window: int, layers: int) -> None:
    names = [NORM.format(i) for i in range(layers)]
    if not all(name in trace.records for name in names):
        st.info("This trace has no per-frame residual norms of every encoder block (the activations plugin "
                "records them when run without --points).")
        return
    kept = trace.records[names[0]]["shape"][0]
    if kept <= window:
        st.info(f"This trace has per-frame residual norms of its first {kept} window(s) only, not of "
                f"window {window + 1}.")
        return
    norms = np.stack([trace.tensor(name)[window] for name in names], axis=1)  # [frame, layer]
    entry = (trace.manifest.get("windows") or [{}])[window] if trace.manifest.get("windows") else {}
    seconds = float(entry.get("end", figures.WINDOW_SECONDS)) - float(entry.get("start", 0.0))
    frames = min(len(norms), int(np.ceil(seconds * figures.ENCODER_FRAMES_PER_SECOND)) + 50)
    st.line_chart({f"block {i}": norms[:frames, i] for i in range(layers)},
                  x_label="encoder frame (20 ms each)", y_label="L2 norm of the residual")
