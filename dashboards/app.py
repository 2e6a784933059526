"""The dashboard's entry script: page setup, the sidebar trace picker and the router.

``probe dashboard`` runs this file with ``streamlit run`` (see :func:`probe.dashboards.serve`).
Every view is a script under ``views/`` registered with ``st.navigation``; the sidebar's trace
picker runs first on every page, so all views look at the same trace.  A user-fixable error a view
raises (a missing or corrupt record: :class:`~probe.errors.ProbeError`) is shown as ``st.error``
inside that view; the sidebar and the other views keep working.
"""

from __future__ import annotations

import streamlit as st

from probe.dashboards import context
from probe.errors import ProbeError

st.set_page_config(page_title="whisper-probe", page_icon=":material/graphic_eq:", layout="wide")

PAGES = {
    "Trace": [
        st.Page("views/overview.py", title="Overview", icon=":material/summarize:", default=True),
        st.Page("views/audio.py", title="Audio", icon=":material/graphic_eq:"),
        st.Page("views/multitask.py", title="Multitask prompt", icon=":material/translate:"),
        st.Page("views/tokens.py", title="Token probabilities", icon=":material/bar_chart:"),
        st.Page("views/windows.py", title="Windows and retries", icon=":material/replay:"),
    ],
    "Inside the model": [
        st.Page("views/conv_stem.py", title="Conv stem", icon=":material/compress:"),
        st.Page("views/attention.py", title="Attention explorer", icon=":material/grid_on:"),
        st.Page("views/cross_attention.py", title="Cross-attention", icon=":material/align_horizontal_left:"),
        st.Page("views/logit_lens.py", title="Logit lens", icon=":material/layers:"),
    ],
    "Teach and explore": [
        st.Page("views/lesson.py", title="Lesson", icon=":material/school:"),
        st.Page("views/compare.py", title="Compare traces", icon=":material/compare:"),
        st.Page("views/plugin_records.py", title="Plugin records", icon=":material/extension:"),
        st.Page("views/new_trace.py", title="New trace", icon=":material/mic:"),
    ],
}

page = st.navigation(PAGES)
context.sidebar()
try:
    page.run()
except ProbeError as err:
    st.error(str(err))
