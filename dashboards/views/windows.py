"""Windows and retries: how generate() walked through the clip — each window's seek, its fallback
attempts and why one was kept, and the hallucination signals (no-speech, log-probability,
compression, loops) — with a way into the pages that show that window.  Inside a rejected attempt
it draws every figure a plugin registered for one attempt (an ``attempt`` parameter)."""

from __future__ import annotations

import streamlit as st

from probe import contributions
from probe.dashboards import context
from probe.tokens import prompt_entries

trace = context.current_trace()
windows = trace.manifest.get("windows") or []
st.title("Windows and retries")
st.markdown("Whisper reads **30 s at a time**. Long audio is decoded window after window: each starts at the "
            "last complete timestamp of the one before (*seek*). A window whose text looks wrong — too repetitive "
            "(compression ratio), too unsure (average log-probability) — is decoded again at a higher temperature; "
            "one that holds no speech is dropped.")
context.show_figure(trace, "windows")

st.subheader("Every window")
st.dataframe([{
    "window": w["index"] + 1, "start (s)": w["start"], "used to (s)": round(w.get("next_seek", 0) / 100, 2),
    "language": w["language"], "no-speech p": round(w["no_speech_probability"], 3),
    "avg log-prob": (w.get("signals") or {}).get("avg_logprob"),
    "compression (tokens)": (w.get("signals") or {}).get("compression_ratio"),
    "compression (text)": (w.get("signals") or {}).get("text_compression_ratio"),
    "loop": ("yes" if (w.get("signals") or {}).get("looping") else ""),
    "attempts": len(w.get("attempts") or []), "skipped": "no speech" if w.get("skipped") else "",
    "text": w["text"]} for w in windows], hide_index=True)

attempt_figures = [f for f in contributions.current().figures.values() if f.per_attempt]
if windows:
    chosen = context.pick_window(trace, "windows_window") if len(windows) > 1 else 0
    window = windows[chosen]
    st.subheader(f"Window {chosen + 1}: {window['start']:.2f}–{window['end']:.2f} s, seek {window.get('seek', 0)}")
    st.html(context.prompt_chips(prompt_entries(trace.manifest, chosen)))
    for attempt in window.get("attempts") or []:
        icon = {"kept": ":material/check_circle:", "rejected": ":material/cancel:",
                "skipped": ":material/volume_off:"}.get(attempt["verdict"], "")
        with st.expander(f"{icon} attempt {attempt['attempt']} · temperature {attempt['temperature']:.1f} · "
                         f"{attempt['num_beams']} beam(s) · {attempt['verdict']}",
                         expanded=attempt["verdict"] != "kept" or len(window["attempts"]) == 1):
            st.markdown(f"**Why:** {attempt['reason']}")
            st.markdown(f"> {attempt['text'] or '*(no text)*'}")
            if attempt.get("token_logprobs"):
                st.line_chart({"log-probability of each token": attempt["token_logprobs"]}, height=160)
            if attempt["verdict"] == "rejected":
                for figure in attempt_figures:
                    if figure.available(trace):
                        context.show_figure(trace, figure.name, window=chosen, attempt=attempt["attempt"])
                    elif figure.plugin in (trace.manifest.get("plugins") or {}):  # ran, but not asked for it
                        st.caption(f"Not kept in this trace: {figure.caption or figure.name} The "
                                   f"{figure.plugin} plugin keeps it when asked (`probe run --help` lists its "
                                   "options).")
    pages = context.window_pages(trace)
    for column, view in zip(st.columns(max(1, len(pages))), pages):
        if column.button(f"Open this window in {view.title}", key=f"windows_to_{view.url_path}"):
            context.open_page(view, chosen)
