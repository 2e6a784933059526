"""Lesson: a guided walk through one trace in the order a course teaches Whisper — sound,
log-Mel, conv stem, encoder output, prompt, cross-attention, tokens — each step a short
explanation beside the live figure, with previous/next buttons.  Long audio gets a window picker
and every step shows the chosen 30 s window: its audio, log-Mel, own prompt and language,
cross-attention and tokens."""

from __future__ import annotations

import functools

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
windows = manifest.get("windows") or []
long_form = len(windows) > 1

st.title("Lesson")
window = context.pick_window(trace, "lesson_window", default=figures.first_spoken_window(trace))
entry = windows[window] if windows else {}
start, end = float(entry.get("start", 0.0)), float(entry.get("end", min(seconds, figures.WINDOW_SECONDS)))
audio_seconds = end - start  # of the window's 30 s, the rest is zero padding
this_window = f"window {window + 1}" if long_form else "this clip"
figure = functools.partial(context.show_figure, trace)


def sound():
    intro = (f"Whisper hears **16 000 samples per second**, mono. This clip is **{seconds:.2f} s**: "
             f"{round(seconds * 16000):,} numbers between -1 and 1. The model always works on **30 s windows**; ")
    if not long_form:
        st.markdown(intro + f"this clip fills {min(100, seconds / 30 * 100):.0f}% of one and the rest is silence "
                            "(zeros).")
    else:
        share = min(100.0, audio_seconds / figures.WINDOW_SECONDS * 100)
        rest = "; the rest is silence (zeros)" if share < 99.5 else ""
        skipped = " It was skipped as no speech: its text is not in the transcript." if entry.get("skipped") else ""
        st.markdown(intro + f"generate() decoded this one in **{len(windows)} windows**, each starting where the text "
                            "of the one before ended (dashed lines). "
                            f"**Window {window + 1}** runs from **{start:.2f} s to {end:.2f} s**: {audio_seconds:.2f} s "
                            f"of audio fill {share:.0f}% of it{rest}.{skipped} The player plays that window.")
    st.audio(trace.audio_bytes(), format="audio/flac", start_time=start if long_form else 0,
             end_time=end if long_form else None)
    return functools.partial(figure, "waveform")


def spectrogram():
    padding = ("Look for the dashed line where the audio ends and zero padding begins."
               if audio_seconds < figures.WINDOW_SECONDS - 0.05 else "The audio fills all 30 s: no zero padding.")
    st.markdown(f"Every 10 ms, a 25 ms slice of sound is split into frequencies and pooled into **{n_mels} Mel "
                "bins** spaced like human hearing, then log-compressed. 30 s become a **"
                f"{n_mels} × 3000** image: the encoder's only input. {padding}")
    return functools.partial(figure, "log_mel", window=window)


def conv_stem():
    st.markdown(f"Two convolutions turn the picture into vectors: conv1 gives **{d_model} channels × 3000 "
                "frames**, conv2 has stride 2 and halves time to **1500 frames of 20 ms**. Compare the zoomed "
                "panels: conv2's columns are twice as wide.")
    if window > 0 and "activations.encoder.hook_conv1" in trace.records:
        st.caption("The trace keeps the conv stem of the first window only, so this step shows window 1.")
    return functools.partial(figure, "conv_stem")


def encoder_output():
    st.markdown(f"After positional embeddings and **{encoder_layers} transformer blocks** of self-attention, the "
                f"encoder hands the decoder **1500 × {d_model}** numbers: one vector per 20 ms. The chart shows "
                f"how large each frame's vector is after each block in {this_window}; frames of speech and of padding "
                "differ.")
    return encoder_norms


def encoder_norms():
    names = [f"activations.encoder.blocks.{i}.hook_resid_post.norm" for i in range(encoder_layers)]
    if not all(name in trace.records for name in names):
        st.info("This trace has no per-frame residual norms (the activations plugin records them by default).")
        return
    if trace.records[names[0]]["shape"][0] <= window:
        st.info(f"This trace has per-frame residual norms of its first {trace.records[names[0]]['shape'][0]} "
                f"window(s) only, not of window {window + 1}.")
        return
    norms = np.stack([trace.tensor(name)[window] for name in names], axis=1)  # [frame, layer]
    frames = min(len(norms), int(np.ceil(audio_seconds * figures.ENCODER_FRAMES_PER_SECOND)) + 50)
    st.line_chart({f"block {i}": norms[:frames, i] for i in range(encoder_layers)},
                  x_label="encoder frame (20 ms each)", y_label="L2 norm of the residual")


def prompt():
    st.markdown("The decoder is a language model that starts from **forced special tokens**: start, the "
                "language (detected from the first step's distribution over language tokens), the task, and "
                "whether to emit timestamps. Change one token and the same audio is translated instead.")
    if long_form:
        previous = (" It starts with `<|startofprev|>` and the text decoded before it, so the decoder carries on "
                    "from there." if int(entry.get("sot_index") or 0) > 0 else "")
        st.markdown(f"Each window has its own prompt. **Window {window + 1}**: language token "
                    f"`<|{entry.get('language')}|>`, which its audio gives p = "
                    f"{float(entry.get('language_probability', 0)):.3f}; no-speech p = "
                    f"{float(entry.get('no_speech_probability', 0)):.3f}.{previous}")
    tokens = ([{"id": t, "token": s} for t, s in zip(entry.get("prompt", []), entry.get("prompt_tokens", []))]
              if entry.get("prompt_tokens") else manifest.get("prompt") or [])
    st.html(context.prompt_chips(tokens))
    return functools.partial(figure, "language_probs", window=window)


def listening():
    st.markdown(f"Each decoder layer **cross-attends** to the 1500 encoder frames of {this_window}. A few heads follow "
                "the speech closely (the alignment heads); averaging them and walking the matrix with dynamic time "
                "warping gives every word a start and end time (boxes).")
    return functools.partial(figure, "cross_attention", window=window)


def tokens():
    st.markdown("At every step the decoder outputs a probability for each of the ~51 000 tokens; greedy "
                "decoding keeps the most likely. Red tokens were close calls — hover them for the alternatives.")
    if not long_form:
        st.html(figures.transcript_html(trace))
        return functools.partial(figure, "token_probs")
    if entry.get("skipped"):
        st.caption(f"Window {window + 1} was skipped as no speech: these tokens are not in the transcript.")
    st.html(figures.transcript_html(trace, window))
    rows = [i for i, row in enumerate(trace.table("token_probs.tokens")) if row.get("window", 0) == window]
    return functools.partial(figure, "token_probs", first=rows[0] if rows else 0,
                             count=min(len(rows), figures.TOKENS_PER_PAGE) or figures.TOKENS_PER_PAGE)


STEPS = [("The sound", sound), ("The log-Mel spectrogram", spectrogram), ("The conv stem: 3000 → 1500", conv_stem),
         ("The encoder's output", encoder_output), ("The special-token prompt", prompt),
         ("Cross-attention: listening while writing", listening), ("Tokens and their probabilities", tokens)]


def move(delta: int) -> None:
    st.session_state[STEP_KEY] = min(max(0, st.session_state.get(STEP_KEY, 0) + delta), len(STEPS) - 1)


step = st.session_state.setdefault(STEP_KEY, 0)
title, explain = STEPS[step]
st.progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}: {title}")
text, picture = st.columns([1, 2])
with text:
    st.subheader(title)
    draw_picture = explain()  # draws the step's picture in the right-hand column
    back, forward = st.columns(2)
    back.button("◀ Previous", on_click=move, args=(-1,), disabled=step == 0, key="lesson_previous")
    forward.button("Next ▶", on_click=move, args=(1,), disabled=step == len(STEPS) - 1, key="lesson_next")
with picture:
    draw_picture()
