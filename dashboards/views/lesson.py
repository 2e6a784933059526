"""Lesson: a guided walk through one trace in the order a course teaches Whisper — sound,
log-Mel, conv stem, encoder output, prompt, cross-attention, tokens — each step a short
explanation beside the live figure, with previous/next buttons.

The steps come from the core and the plugins (``probe_lesson_steps``), in their ``order``; a step
whose records the trace lacks is left out.  Long audio gets a window picker and every step shows
the chosen 30 s window."""

from __future__ import annotations

import streamlit as st

from probe import contributions, figures
from probe.dashboards import context
from probe.errors import PluginError, ProbeError

STEP_KEY = "lesson_step"

trace = context.current_trace()
st.title("Lesson")
window = context.pick_window(trace, "lesson_window", default=figures.first_spoken_window(trace))
steps = [step for step in contributions.current().lesson_steps if step.available(trace)]


def move(delta: int) -> None:
    st.session_state[STEP_KEY] = min(max(0, st.session_state.get(STEP_KEY, 0) + delta), len(steps) - 1)


index = min(st.session_state.setdefault(STEP_KEY, 0), len(steps) - 1)
step = steps[index]
st.progress((index + 1) / len(steps), text=f"Step {index + 1} of {len(steps)}: {step.title}")
text, picture = st.columns([1, 2])
draw_picture = None
with text:
    st.subheader(step.title)
    try:
        draw_picture = step.explain(trace, st, window)  # draws the step's picture in the right-hand column
    except ProbeError as err:
        st.error(str(err))
    except Exception as exc:  # a plugin's step must not take the lesson down
        st.error(str(PluginError(f"plugin {step.plugin!r} raised in its lesson step {step.title!r}: "
                                 f"{type(exc).__name__}: {exc}")))
    back, forward = st.columns(2)
    back.button("◀ Previous", on_click=move, args=(-1,), disabled=index == 0, key="lesson_previous")
    forward.button("Next ▶", on_click=move, args=(1,), disabled=index == len(steps) - 1, key="lesson_next")
with picture:
    if draw_picture is not None:
        draw_picture()
