"""Multitask: the special-token prompt that picks language and task, language detection, the
no-speech probability, and what changes in the prompt between transcribe and translate."""

from __future__ import annotations

import streamlit as st

from probe.dashboards import context

TOKEN_ROLES = {
    "<|startoftranscript|>": "starts every decoding",
    "<|transcribe|>": "task: write down what is said, in its language",
    "<|translate|>": "task: translate what is said into English",
    "<|notimestamps|>": "text only; without it the model also emits <|0.00|>-style time tokens",
    "<|startofprev|>": "the previous window's text follows, as context",
}
LANGUAGE_ROLE = "language: which language the audio is in (detected, or given with --language)"

trace = context.current_trace()
manifest = trace.manifest
windows = manifest.get("windows") or []

st.title("Multitask prompt")
window = context.pick_window(trace, "multitask_window")
shown = windows[window] if windows else {}
prompt = ([{"id": t, "token": s} for t, s in zip(shown.get("prompt", []), shown.get("prompt_tokens", []))]
          if shown.get("prompt_tokens") else manifest.get("prompt") or [])
if len(windows) > 1:
    st.caption("Each window has its own prompt: with conditioning on previous text it starts with "
               "`<|startofprev|>` and the text before; languages by window: "
               + ", ".join(f"{w['index'] + 1}: <|{w['language']}|>" for w in windows))
columns = st.columns(3)
columns[0].metric("Language token", f"<|{shown.get('language', trace.language)}|>")
columns[1].metric("Language probability", f"{shown.get('language_probability', manifest.get('language_probability', 0)):.3f}")
columns[2].metric("No-speech probability",
                  f"{shown.get('no_speech_probability', manifest.get('no_speech_probability', 0)):.3f}",
                  help="The probability of <|nospeech|> at the first decoding step: above about 0.6 "
                       "(with low confidence in the text) Whisper treats the window as silence.")

st.subheader("The prompt")
st.html(context.prompt_chips(prompt))
special = [entry for entry in prompt if str(entry["token"]) in TOKEN_ROLES  # not the previous text's tokens
           or (str(entry["token"]).startswith("<|") and str(entry["token"])[2:-2].isalpha())]
st.markdown("\n".join(f"- `{entry['token']}` — {TOKEN_ROLES.get(entry['token'], LANGUAGE_ROLE)}"
                      for entry in special))

st.subheader("Language detection")
top = st.slider("Languages shown", 3, 25, 10, key="multitask_top")
context.show_figure(trace, "language_probs", top=top, window=window)

st.subheader("Transcribe vs translate")
store_path = trace.store_path
task = (manifest.get("decode") or {}).get("task")
twins = [context.open_trace(store_path, twin_id)
         for twin_id in context.traces_of_audio(store_path, manifest.get("audio") or {})]
twins = [twin for twin in twins if (twin.manifest.get("decode") or {}).get("task") != task]
if not twins:
    st.info("Only the task token changes: a translate run replaces `<|transcribe|>` with `<|translate|>` "
            "(every other token stays) and the decoder writes English. Record the same audio with the other "
            "task on the **New trace** page to compare them here.")
else:
    twin = twins[0]
    ours, theirs = {e["id"] for e in prompt}, {e["id"] for e in twin.manifest.get("prompt") or []}
    for column, shown in zip(st.columns(2), (trace, twin)):
        with column:
            st.markdown(f"**{(shown.manifest.get('decode') or {}).get('task')}** · `{shown.id}`")
            st.html(context.prompt_chips(shown.manifest.get("prompt") or [], highlight=ours ^ theirs))
            st.markdown(f"> {shown.transcript}")
    st.caption("Highlighted: the prompt tokens that differ. Same audio, same encoder output — only the task "
               "token steers the decoder.")
