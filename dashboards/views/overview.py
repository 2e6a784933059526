"""Overview of the selected trace: model, device, decode options, the special-token prompt,
transcript, language and no-speech probability, timings and the records it holds."""

from __future__ import annotations

import streamlit as st

from probe.dashboards import context
from probe.tokens import prompt_entries

trace = context.current_trace()
manifest = trace.manifest
model = manifest.get("model") or {}
audio = manifest.get("audio") or {}

st.title("Overview")
st.caption(f"Trace `{trace.id}` · recorded {trace.created[:19].replace('T', ' ')} UTC · "
           f"audio: `{trace.audio_source or 'array'}`")
st.markdown(f"**Model** `{trace.model_id}` on **{model.get('device', '?')}** in **{model.get('dtype', '?')}** "
            f"({model.get('attn_implementation') or 'default'} attention)")

columns = st.columns(4)
columns[0].metric("Language", f"<|{trace.language}|>",
                  f"p = {manifest.get('language_probability', 0):.2f}", delta_color="off", delta_arrow="off")
columns[1].metric("No-speech probability", f"{manifest.get('no_speech_probability', 0):.3f}")
columns[2].metric("Audio", f"{audio.get('duration', 0):.2f} s", f"{len(manifest.get('windows') or [])} window(s)",
                  delta_color="off", delta_arrow="off")
timings = dict(manifest.get("timings") or {})
load = timings.pop("load", None)  # waiting for the model, before (not in) the total; older traces lack it
columns[3].metric("Traced in", f"{timings.get('total', 0):.1f} s",
                  None if load is None else f"model loaded in {load:.1f} s" if load else "model already loaded",
                  delta_color="off", delta_arrow="off")

st.subheader("Transcript")
st.markdown(f"> {trace.transcript or '*(nothing decoded)*'}")

left, right = st.columns(2)
with left:
    st.subheader("Special-token prompt")
    st.html(context.prompt_chips(prompt_entries(manifest)))
    st.caption("The decoder starts from these forced tokens; token ids below each.")
    st.subheader("Decode options")
    st.dataframe([{"option": key, "value": str(value)} for key, value in (manifest.get("decode") or {}).items()],
                 hide_index=True)
with right:
    st.subheader("Timings (s)")
    per_plugin = timings.pop("plugins", {}) or {}
    rows = [{"stage": stage, "seconds": seconds} for stage, seconds in timings.items()]
    rows += [{"stage": "model load (not in total)", "seconds": load}] if load is not None else []
    rows += [{"stage": f"plugin {name}", "seconds": seconds} for name, seconds in per_plugin.items()]
    st.dataframe(rows, hide_index=True)
    st.subheader("Model configuration")
    st.dataframe([{"setting": key, "value": value} for key, value in (model.get("config") or {}).items()],
                 hide_index=True)

windows = manifest.get("windows") or []
if len(windows) > 1:
    languages = sorted({w["language"] for w in windows})
    st.caption(f"{len(windows)} windows ({sum(bool(w.get('skipped')) for w in windows)} skipped as no speech, "
               f"{sum(len(w.get('attempts') or []) > 1 for w in windows)} retried); language tokens: "
               + ", ".join(f"<|{code}|>" for code in languages) + " — see **Windows and retries**.")
segments = [{"window": w["index"], "language": w["language"],
             **{key: segment[key] for key in ("start", "end", "text")}}
            for w in windows for segment in w.get("segments") or []]
if segments:
    st.subheader("Segments")
    st.dataframe(segments, hide_index=True)

with st.expander(f"Records ({len(trace.records)})"):
    st.dataframe([{"record": name, "plugin": entry.get("plugin"), "kind": entry["kind"],
                   "shape": str(entry.get("shape")), "dtype": entry.get("dtype")}
                  for name, entry in trace.records.items()], hide_index=True)
