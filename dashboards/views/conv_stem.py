"""Conv stem: the two convolutions that turn 3000 log-Mel frames into 1500 encoder frames."""

from __future__ import annotations

import streamlit as st

from probe.dashboards import context

trace = context.current_trace()
config = (trace.manifest.get("model") or {}).get("config") or {}
d_model, n_mels = config.get("d_model", "d_model"), config.get("num_mel_bins", 80)

st.title("Conv stem")
st.markdown(f"The encoder starts with two 1-D convolutions over time (kernel 3, GELU after each): "
            f"**conv1** maps the [{n_mels}, 3000] log-Mel input to [{d_model}, 3000]; **conv2** has stride 2 "
            f"and halves time to [{d_model}, 1500] — one encoder frame per 20 ms. Sinusoidal positions are "
            "added next and the transformer blocks never see more than these 1500 frames.")
channels = st.slider("Channels shown", min_value=4, max_value=64, value=16, step=4, key="conv_channels")
context.show_figure(trace, "conv_stem", channels=channels)
