"""Compare two traces side by side: their prompts and transcripts, and any figure for both
(transcribe vs translate of one clip, two models, two decoding settings)."""

from __future__ import annotations

import streamlit as st

from probe import contributions
from probe.dashboards import context
from probe.tokens import prompt_entries

trace = context.current_trace()
# Start from the same audio recorded another way, if the store has it.
twins = [twin for twin in context.traces_of_audio(trace.store_path, trace.manifest.get("audio") or {})
         if twin != trace.id]

st.title("Compare traces")
# every figure this trace can draw from itself; plugins' first (the core's audio figures look alike)
drawable = [f for f in contributions.current().available_figures(trace) if f.by_default]
names = [f.name for f in drawable if f.plugin != "core"] + [f.name for f in drawable if f.plugin == "core"]
figure = st.selectbox("Figure", names, format_func=lambda name: name.replace("_", " "), key="compare_figure")
left, right = st.columns(2)
with left:
    st.markdown(f"**Sidebar trace:** {trace.name or trace.id}")
    st.caption(f"`{trace.id}`")
with right:
    other = context.pick_trace("Compare with", "compare_trace", default=twins[0] if twins else None)
prompts = [prompt_entries(shown.manifest) for shown in (trace, other)]  # split characters joined
# the prompt tokens only one of the two has (e.g. <|translate|> against <|transcribe|>) stand out
differing = {entry["id"] for entry in prompts[0]} ^ {entry["id"] for entry in prompts[1]}
for column, shown, prompt in zip((left, right), (trace, other), prompts):
    with column:
        decode = shown.manifest.get("decode") or {}
        st.markdown(f"{shown.model_id} · task **{decode.get('task')}** · language "
                    f"<|{shown.language}|> · beams {decode.get('num_beams')}")
        st.html(context.prompt_chips(prompt, highlight=differing))
        if differing & {entry["id"] for entry in prompt}:
            st.caption("Highlighted: prompt tokens the other trace does not have.")
        st.markdown(f"> {shown.transcript}")
        context.show_figure(shown, figure)
