"""token_probs' dashboard pages (*Token probabilities*, *Multitask prompt*) and its lesson steps.

Each page is ``render(trace, st)``; nothing is drawn at import, and nothing here imports torch.
"""

from __future__ import annotations

import functools
import math

from probe import figures
from probe.errors import StoreError
from probe.tokens import prompt_entries
from probe.plugins.token_probs.figures import TOKENS, transcript_html

TOKEN_ROLES = {
    "<|startoftranscript|>": "starts every decoding",
    "<|transcribe|>": "task: write down what is said, in its language",
    "<|translate|>": "task: translate what is said into English",
    "<|notimestamps|>": "text only; without it the model also emits <|0.00|>-style time tokens",
    "<|startofprev|>": "the previous window's text follows, as context",
}
LANGUAGE_ROLE = "language: which language the audio is in (detected, or given with --language)"


def tokens_page(trace, st) -> None:
    """The transcript coloured by confidence, each step's probability, entropy and top-k
    alternatives, and the full token table."""
    from probe.dashboards import context

    st.title("Token probabilities")
    windows = trace.manifest.get("windows") or []
    rows = trace.table(TOKENS)
    if len(windows) > 1:  # long audio: one window at a time (an hour's transcript is ~2.6 MB of spans)
        window = context.pick_window(trace, "tokens_window", default=figures.first_spoken_window(trace))
        offset = next((i for i, row in enumerate(rows) if row["window"] == window), len(rows))
        rows = [row for row in rows if row["window"] == window]
    else:
        window, offset = None, 0
    try:
        st.html(transcript_html(trace, window))
    except StoreError as err:
        st.error(str(err))
        st.stop()
    st.caption("Hover a token for its probability, entropy and the alternatives the model considered."
               + (" Tokens of the chosen window, the tail it decoded past its last timestamp included."
                  if window is not None else ""))
    per_page = figures.TOKENS_PER_PAGE
    pages = max(1, math.ceil(len(rows) / per_page))
    page = st.number_input("Page of tokens", 1, pages, 1, key="tokens_page") if pages > 1 else 1
    if rows:
        context.show_figure(trace, "token_probs", first=offset + (page - 1) * per_page,
                            count=min(per_page, len(rows) - (page - 1) * per_page))
    st.subheader("Every emitted token" + (f" of window {window + 1}" if window is not None else ""))
    labels = figures.token_labels(trace, [row["token_id"] for row in rows], [row["window"] for row in rows])
    st.dataframe([{"window": row["window"] + 1, "step": row["step"], "token": label, "kind": row["kind"],
                   "probability": row["prob"], "entropy (nats)": row["entropy"],
                   "alternatives": ", ".join(f"{t!r} {p:.2f}" for t, p in zip(row["top_k_tokens"], row["top_k_probs"]))}
                  for row, label in zip(rows, labels)], hide_index=True)


def multitask_page(trace, st) -> None:
    """The special-token prompt that picks language and task, language detection, the no-speech
    probability, and what changes in the prompt between transcribe and translate."""
    from probe.dashboards import context

    manifest = trace.manifest
    windows = manifest.get("windows") or []
    st.title("Multitask prompt")
    window = context.pick_window(trace, "multitask_window")
    shown = windows[window] if windows else {}
    prompt = prompt_entries(manifest, window)
    if len(windows) > 1:
        st.caption("Each window has its own prompt: with conditioning on previous text it starts with "
                   "`<|startofprev|>` and the text before; languages by window: "
                   + ", ".join(f"{w['index'] + 1}: <|{w['language']}|>" for w in windows))
    columns = st.columns(3)
    columns[0].metric("Language token", f"<|{shown.get('language', trace.language)}|>")
    columns[1].metric("Language probability",
                      f"{shown.get('language_probability', manifest.get('language_probability', 0)):.3f}")
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
    _transcribe_vs_translate(trace, st, prompt)


def _transcribe_vs_translate(trace, st, prompt: list[dict]) -> None:
    from probe.dashboards import context

    manifest = trace.manifest
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
        return
    twin = twins[0]
    ours, theirs = {e["id"] for e in prompt}, {e["id"] for e in prompt_entries(twin.manifest)}
    for column, shown in zip(st.columns(2), (trace, twin)):
        with column:
            st.markdown(f"**{(shown.manifest.get('decode') or {}).get('task')}** · `{shown.id}`")
            st.html(context.prompt_chips(prompt_entries(shown.manifest), highlight=ours ^ theirs))
            st.markdown(f"> {shown.transcript}")
    st.caption("Highlighted: the prompt tokens that differ. Same audio, same encoder output — only the task "
               "token steers the decoder.")


def language_step(trace, st, window: int):
    """Lesson: the language the first decoding step detects."""
    from probe.dashboards import context

    st.markdown("The language token is not guessed from text: at the first step the decoder gives every "
                "language token a probability, and the most likely one is forced into the prompt. The same "
                "step gives `<|nospeech|>` its probability, which decides whether a window is skipped. In "
                "transformers: `model.detect_language(input_features)` (the softmax of the logits at "
                "`<|startoftranscript|>` over the language tokens).")
    return functools.partial(context.show_figure, trace, "language_probs", window=window)


def tokens_step(trace, st, window: int):
    """Lesson: each token's probability, the transcript coloured by it."""
    from probe.dashboards import context

    windows = trace.manifest.get("windows") or []
    st.markdown("At every step the decoder outputs a probability for each of the ~51 000 tokens; greedy "
                "decoding keeps the most likely. Red tokens were close calls — hover them for the alternatives. In "
                "transformers: `model.generate(input_features, output_scores=True, return_dict_in_generate=True)`, "
                "then `model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)`.")
    if len(windows) <= 1:
        st.html(transcript_html(trace))
        return functools.partial(context.show_figure, trace, "token_probs")
    if windows[window].get("skipped"):
        st.caption(f"Window {window + 1} was skipped as no speech: these tokens are not in the transcript.")
    st.html(transcript_html(trace, window))
    rows = [i for i, row in enumerate(trace.table(TOKENS)) if row.get("window", 0) == window]
    per_page = figures.TOKENS_PER_PAGE
    return functools.partial(context.show_figure, trace, "token_probs", first=rows[0] if rows else 0,
                             count=min(len(rows), per_page) or per_page)
