"""Audio: the stored clip as a player, its waveform and the log-Mel spectrogram Whisper sees."""

from __future__ import annotations

import streamlit as st

from probe.dashboards import context

trace = context.current_trace()
n_mels = (trace.manifest.get("model") or {}).get("config", {}).get("num_mel_bins", 80)

st.title("Audio")
data = trace.audio_bytes()
if data is None:
    st.error(f"trace {trace.id} kept no audio; re-run the trace to keep it")
    st.stop()
st.audio(data, format="audio/flac")
context.show_figure(trace, "waveform")
st.markdown(f"Whisper pads or cuts the audio to **30 s windows** and turns each into a log-Mel spectrogram "
            f"of **{n_mels} Mel bins × 3000 frames** (25 ms windows every 10 ms), scaled to about [-1, 1].")
context.show_figure(trace, "log_mel", window=context.pick_window(trace, "audio_window"))
