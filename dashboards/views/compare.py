"""Compare two traces side by side: their prompts and transcripts, and any figure for both
(transcribe vs translate of one clip, two models, two decoding settings).

An intervened trace is compared with its clean trace by default, and the page opens with the
intervention's effect (:mod:`probe.effect`): the error rate between the transcripts, the word diff,
each clean token's change in log-probability and the alignment heads' cross-attention difference."""

from __future__ import annotations

import streamlit as st

from probe import contributions
from probe.dashboards import context
from probe.export.markup import DIFF_STYLE, diff_html
from probe.tokens import prompt_entries


def show_effect(intervened) -> None:
    """What ``intervened``'s interventions changed against its clean trace (manifest ``effect``)."""
    from probe.effect import describe as describe_effect
    from probe.interventions import describe
    from probe.metrics import word_diff

    summary = intervened.manifest["effect"]
    st.subheader("Effect of the intervention")
    st.markdown(f"**{describe(intervened.manifest.get('interventions') or [])}** — measured against the clean "
                f"trace `{summary['clean']}`, its transcript teacher-forced through the model as it is and "
                "as intervened.")
    headline = summary.get("headline", "wer")
    columns = st.columns(4)
    columns[0].metric(f"{headline.upper()} vs clean", f"{summary.get(headline, 0):.1%}")
    columns[1].metric("Same tokens", "yes" if summary.get("tokens_equal") else "no")
    columns[2].metric("Δ log-prob (clean transcript)", f"{summary.get('delta_logprob_total', 0):+.2f}",
                      help=f"summed over {summary.get('tokens', 0)} clean tokens; mean "
                           f"{summary.get('delta_logprob_mean', 0):+.3f}")
    columns[3].metric("Cross-attention change", f"{summary.get('cross_attention_change', 0):.2f}",
                      help="per clean token, Σ|Δ| of the alignment heads' attention over frames (2: nothing shared)")
    st.html(f"<style>{DIFF_STYLE}</style><div style='font-size:1.15rem;line-height:1.9'>"
            f"{diff_html(word_diff(summary.get('clean_transcript', ''), intervened.transcript, intervened.language))}"
            "</div>")
    st.caption(describe_effect(summary))
    context.show_figure(intervened, "effect_logprobs")
    windows = [w["index"] for w in summary.get("windows") or []]
    window = (st.selectbox("Window", windows, format_func=lambda w: f"{w + 1}", key=f"effect_window:{intervened.id}")
              if len(windows) > 1 else (windows[0] if windows else 0))
    context.show_figure(intervened, "effect_cross_attention", window=window)
    st.divider()


trace = context.current_trace()
effect = trace.manifest.get("effect") or {}
# Start from the clean trace an intervened one was measured against, else from the same audio
# recorded another way, if the store has it.
twins = [twin for twin in context.traces_of_audio(trace.store_path, trace.manifest.get("audio") or {})
         if twin != trace.id]
if effect.get("clean") in twins:
    twins.remove(effect["clean"])
    twins.insert(0, effect["clean"])

st.title("Compare traces")
# every figure this trace can draw from itself; plugins' first (the core's audio figures look alike)
drawable = [f for f in contributions.current().available_figures(trace) if f.by_default]
names = [f.name for f in drawable if f.plugin != "core"] + [f.name for f in drawable if f.plugin == "core"]
left, right = st.columns(2)
with left:
    st.markdown(f"**Sidebar trace:** {trace.name or trace.id}")
    st.caption(f"`{trace.id}`")
with right:
    other = context.pick_trace("Compare with", "compare_trace", default=twins[0] if twins else None)
# the intervened one of the two, when it was measured against the other: its effect comes first
for intervened, clean in ((trace, other), (other, trace)):
    if (intervened.manifest.get("effect") or {}).get("clean") == clean.id:
        show_effect(intervened)
        break
figure = st.selectbox("Figure", names, format_func=lambda name: name.replace("_", " "), key="compare_figure")
left, right = st.columns(2)
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
