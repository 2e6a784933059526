"""New trace: record an uploaded file or the microphone with a chosen model, language, task and
plugins into the store, then open it.  The only view that loads a model (and so torch)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from probe.dashboards import context
from probe.errors import ProbeError
from probe.plugin_manager import DEFAULT_PLUGINS

AUDIO_TYPES = ["wav", "flac", "mp3", "ogg", "m4a", "opus", "webm"]


@st.cache_resource(show_spinner=False)
def load_model(spec: str | None):
    """One loaded model per spec, shared by every session (loading takes seconds)."""
    from probe.runner import load  # torch loads here, and only here

    return load(spec)


st.title("New trace")
store = context.current_store()
st.caption(f"Traces are written to `{store.path}`.")
upload = st.file_uploader("Audio file", type=AUDIO_TYPES, key="new_upload")
recording = st.audio_input("…or record from the microphone", key="new_recording")

left, right = st.columns(2)
with left:
    model = st.text_input("Model", "", key="new_model", placeholder="embedded base (offline default)",
                          help="A hub id (openai/whisper-small), a local or CTranslate2 directory, a .pt file, "
                               "or an embedded name (base, tiny.en).")
    language = st.text_input("Language", "", key="new_language", placeholder="detect",
                             help="An ISO code (en, zh) or a name as openai-whisper takes them (English, "
                                  "Chinese, Mandarin, Castilian, …); empty detects it.")
    task = st.radio("Task", ["transcribe", "translate"], horizontal=True, key="new_task")
with right:
    plugins = st.multiselect("Plugins", DEFAULT_PLUGINS, default=list(DEFAULT_PLUGINS), key="new_plugins")
    timestamps = st.checkbox("Timestamp tokens", key="new_timestamps")
    num_beams = st.number_input("Beams", 1, 8, 1, key="new_beams")
    name = st.text_input("Trace name", "", key="new_name", placeholder="the file name")

audio = upload or recording
if st.button("Record trace", type="primary", disabled=audio is None, key="new_run"):
    import probe.runner  # heavy (torch, transformers): imported only when a trace is recorded

    file_name = Path(audio.name).name or "recording.wav"
    try:
        with st.spinner(f"Tracing {file_name}…"), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / file_name
            path.write_bytes(audio.getvalue())
            # the temporary copy is gone once traced: the manifest names the upload by its file name
            trace = probe.runner.run(path, model=load_model(model.strip() or None), store=store, source=file_name,
                                     name=name.strip() or Path(file_name).stem, language=language.strip() or None,
                                     task=task, timestamps=timestamps, num_beams=int(num_beams),
                                     disable=[p for p in DEFAULT_PLUGINS if p not in plugins])
    except ProbeError as err:
        st.error(str(err))
        st.stop()
    context.select_trace(trace.id)
    st.switch_page("views/overview.py")
