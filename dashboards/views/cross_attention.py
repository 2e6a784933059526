"""Cross-attention alignment: which audio each decoded token listens to, word timestamps from the
alignment heads, and playback of the span a token or word attends to."""

from __future__ import annotations

import streamlit as st

from probe import figures
from probe.dashboards import context

ALIGNMENT = "alignment heads (average)"
MEAN = "mean of heads"

trace = context.current_trace()
config = (trace.manifest.get("model") or {}).get("config") or {}

st.title("Cross-attention alignment")
left, right = st.columns(2)
source = left.selectbox("Attention", [ALIGNMENT, *range(int(config.get("decoder_layers", 1)))],
                        format_func=lambda value: value if value == ALIGNMENT else f"decoder layer {value}",
                        key="cross_source")
layer = None if source == ALIGNMENT else source
head_choice = right.selectbox("Head", [MEAN, *range(int(config.get("decoder_attention_heads", 1)))],
                              key="cross_head", disabled=layer is None)
head = None if layer is None or head_choice == MEAN else head_choice
window = context.pick_window(trace, "cross_window")
if not context.show_figure(trace, "cross_attention", layer=layer, head=head, window=window):
    st.stop()

st.subheader("Listen to what a token attends to")
_, tokens = figures.cross_attention_rows(trace, layer, head, window)
if not tokens:
    st.info("No tokens were decoded in this window.")
    st.stop()
vocab = figures.vocabulary(trace)
token_index = st.selectbox("Token", range(len(tokens)), key="cross_token",
                           format_func=lambda i: f"{i}: {figures.token_label(trace, vocab, tokens[i]['token_id'])}")
start, end = figures.attended_span(trace, token_index, layer, head, window)
st.caption(f"Frames holding at least half of this token's peak attention: {start:.2f}–{end:.2f} s.")
st.audio(context.audio_span(trace, start, end), sample_rate=figures.SAMPLE_RATE)

words = trace.words()
if words:
    st.subheader("Word timestamps")
    word_index = st.selectbox("Word", range(len(words)), key="cross_word",
                              format_func=lambda i: f"{words[i]['word'].strip()} "
                                                    f"({words[i]['start']:.2f}–{words[i]['end']:.2f} s)")
    word = words[word_index]
    st.audio(context.audio_span(trace, word["start"], word["end"]), sample_rate=figures.SAMPLE_RATE)
    st.dataframe([{"word": w["word"], "start (s)": w["start"], "end (s)": w["end"], "window": w.get("window")}
                  for w in words], hide_index=True)
