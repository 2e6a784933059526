"""Lesson: a guided walk through one trace in the order a course teaches Whisper — sound,
log-Mel, conv stem, encoder output, prompt, cross-attention, tokens — each step a short
explanation beside the live figure, with previous/next buttons."""

from __future__ import annotations

import numpy as np
import streamlit as st

from probe import figures
from probe.dashboards import context

STEP_KEY = "lesson_step"

trace = context.current_trace()
manifest = trace.manifest
config = (manifest.get("model") or {}).get("config") or {}
n_mels, d_model = config.get("num_mel_bins", 80), config.get("d_model", "d_model")
encoder_layers = int(config.get("encoder_layers", 1))
seconds = figures.duration(trace)


def sound():
    st.markdown(f"Whisper hears **16 000 samples per second**, mono. This clip is **{seconds:.2f} s**: "
                f"{round(seconds * 16000):,} numbers between -1 and 1. The model always works on **30 s windows**; "
                f"this clip fills {min(100, seconds / 30 * 100):.0f}% of one and the rest is silence (zeros).")
    st.audio(trace.audio_bytes(), format="audio/flac")
    return "waveform"


def spectrogram():
    st.markdown(f"Every 10 ms, a 25 ms slice of sound is split into frequencies and pooled into **{n_mels} Mel "
                "bins** spaced like human hearing, then log-compressed. 30 s become a **"
                f"{n_mels} × 3000** image: the encoder's only input. Look for the dashed line where speech ends.")
    return "log_mel"


def conv_stem():
    st.markdown(f"Two convolutions turn the picture into vectors: conv1 gives **{d_model} channels × 3000 "
                "frames**, conv2 has stride 2 and halves time to **1500 frames of 20 ms**. Compare the zoomed "
                "panels: conv2's columns are twice as wide.")
    return "conv_stem"


def encoder_output():
    st.markdown(f"After positional embeddings and **{encoder_layers} transformer blocks** of self-attention, the "
                f"encoder hands the decoder **1500 × {d_model}** numbers: one vector per 20 ms. The chart shows "
                "how large each frame's vector is after each block; frames of speech and of padding differ.")
    return encoder_norms


def encoder_norms():
    names = [f"activations.encoder.blocks.{i}.hook_resid_post.norm" for i in range(encoder_layers)]
    if not all(name in trace.records for name in names):
        st.info("This trace has no per-frame residual norms (the activations plugin records them by default).")
        return
    norms = np.stack([trace.tensor(name)[0] for name in names], axis=1)  # [frame, layer]
    frames = min(len(norms), int(np.ceil(seconds * figures.ENCODER_FRAMES_PER_SECOND)) + 50)
    st.line_chart({f"block {i}": norms[:frames, i] for i in range(encoder_layers)},
                  x_label="encoder frame (20 ms each)", y_label="L2 norm of the residual")


def prompt():
    st.markdown("The decoder is a language model that starts from **forced special tokens**: start, the "
                "language (detected from the first step's distribution over language tokens), the task, and "
                "whether to emit timestamps. Change one token and the same audio is translated instead.")
    st.html(context.prompt_chips(manifest.get("prompt") or []))
    return "language_probs"


def listening():
    st.markdown("Each decoder layer **cross-attends** to the 1500 encoder frames. A few heads follow the speech "
                "closely (the alignment heads); averaging them and walking the matrix with dynamic time warping "
                "gives every word a start and end time (boxes).")
    return "cross_attention"


def tokens():
    st.markdown("At every step the decoder outputs a probability for each of the ~51 000 tokens; greedy "
                "decoding keeps the most likely. Red tokens were close calls — hover them for the alternatives.")
    st.html(figures.transcript_html(trace))
    return "token_probs"


STEPS = [("The sound", sound), ("The log-Mel spectrogram", spectrogram), ("The conv stem: 3000 → 1500", conv_stem),
         ("The encoder's output", encoder_output), ("The special-token prompt", prompt),
         ("Cross-attention: listening while writing", listening), ("Tokens and their probabilities", tokens)]


def move(delta: int) -> None:
    st.session_state[STEP_KEY] = min(max(0, st.session_state.get(STEP_KEY, 0) + delta), len(STEPS) - 1)


step = st.session_state.setdefault(STEP_KEY, 0)
title, explain = STEPS[step]
st.title("Lesson")
st.progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}: {title}")
text, picture = st.columns([1, 2])
with text:
    st.subheader(title)
    picture_of_step = explain()  # a figure name, or a function drawing the picture
    back, forward = st.columns(2)
    back.button("◀ Previous", on_click=move, args=(-1,), disabled=step == 0, key="lesson_previous")
    forward.button("Next ▶", on_click=move, args=(1,), disabled=step == len(STEPS) - 1, key="lesson_next")
with picture:
    if callable(picture_of_step):
        picture_of_step()
    else:
        context.show_figure(trace, picture_of_step)
