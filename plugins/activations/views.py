"""activations' dashboard page (*Conv stem*) and its lesson steps (the conv stem, the encoder's
output), each naming the transformers call that computes what it shows."""

from __future__ import annotations

import functools

from probe import figures
from probe.plugins.activations.encoder_output import audio_frames, speech_and_padding
from probe.plugins.activations.figures import CONV1


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
                "panels: conv2's columns are twice as wide. In transformers they are the first layers of "
                "`model.model.encoder(input_features)`: `model.model.encoder.conv1` and `.conv2`, each followed "
                "by a GELU.")
    if window > 0 and CONV1 in trace.records:
        st.caption("The trace keeps the conv stem of the first window only, so this step shows window 1.")
    return functools.partial(context.show_figure, trace, "conv_stem")


def encoder_output_step(trace, st, window: int):
    from probe.dashboards import context

    config = (trace.manifest.get("model") or {}).get("config") or {}
    layers, d_model = int(config.get("encoder_layers", 1)), config.get("d_model", "d_model")
    long_form = len(trace.manifest.get("windows") or []) > 1
    start, _ = figures.window_span(trace, window)
    shown = f"window {window + 1} ({start:.2f}–{start + figures.WINDOW_SECONDS:.2f} s)" if long_form else "this clip"
    st.markdown(f"After positional embeddings, **{layers} transformer blocks** of self-attention and a final "
                f"layer norm, the encoder hands the decoder a **[1500, {d_model}]** matrix: one {d_model}-number "
                "vector per 20 ms frame, for the whole 30 s window. It is "
                "`model.model.encoder(input_features).last_hidden_state` ([1, 1500, "
                f"{d_model}]); `model.generate(...)` computes it once per window and every decoding step "
                f"cross-attends to it. The picture shows it for "
                f"{shown}: time across in seconds, channels up, and under it each frame's vector length.")
    speech, padding = speech_and_padding(trace, window)
    audio = audio_frames(trace, window)
    if padding is None:
        st.markdown(f"Audio fills all 1500 frames of this window (mean vector length {speech:.1f}).")
    else:
        st.markdown(f"The first **{audio} frames ({audio / figures.ENCODER_FRAMES_PER_SECOND:.2f} s)** encode "
                    f"audio, the other {1500 - audio} the zero padding after the dashed line: speech frames "
                    f"have a mean vector length of {speech:.1f}, padding frames {padding:.1f}. The decoder still "
                    "cross-attends to all 1500: nothing masks the padding.")
    return functools.partial(context.show_figure, trace, "encoder_output", window=window)
