"""The dashboard's entry script: page setup, the sidebar trace picker and the router.

``probe dashboard`` runs this file with ``streamlit run`` (see :func:`probe.dashboards.serve`).
The core's views are scripts under ``views/``; every other page is a plugin's, registered through
``probe_dashboard_views`` (:mod:`probe.contributions`) — the built-ins' pages included — and is
listed only while the picked trace holds the records it needs, so a trace made with
``-p no:NAME`` shows none of that plugin's pages.  The sidebar's trace picker runs first on every
page, so all views look at the same trace.  A user-fixable error a view raises (a missing or
corrupt record: :class:`~probe.errors.ProbeError`) is shown as ``st.error`` inside that view; the
sidebar and the other views keep working.
"""

from __future__ import annotations

import sys

import streamlit as st

from probe import contributions
from probe.dashboards import context
from probe.errors import ProbeError

st.set_page_config(page_title="whisper-probe", page_icon=":material/graphic_eq:", layout="wide")
context.present_plugins(sys.argv[1:])
context.sidebar()
trace = context.picked_trace()

SECTIONS = ("Trace", "Inside the model", "Teach and explore", "Plugins")
PAGES: dict[str, list] = {
    "Trace": [
        st.Page("views/overview.py", title="Overview", icon=":material/summarize:", default=True),
        st.Page("views/audio.py", title="Audio", icon=":material/graphic_eq:"),
        st.Page("views/windows.py", title="Windows and retries", icon=":material/replay:"),
    ],
    "Inside the model": [],
    "Teach and explore": [
        st.Page("views/lesson.py", title="Lesson", icon=":material/school:"),
        st.Page("views/compare.py", title="Compare traces", icon=":material/compare:"),
        st.Page("views/dataset.py", title="Dataset", icon=":material/table_view:"),
        st.Page("views/sweeps.py", title="Sweeps", icon=":material/grid_on:"),
        st.Page("views/plugin_records.py", title="Plugin records", icon=":material/extension:"),
        st.Page("views/new_trace.py", title="New trace", icon=":material/mic:"),
    ],
}
plugin_pages = {}
for view in contributions.current().views:
    if trace is None or not view.available(trace):
        continue
    page = st.Page(lambda view=view: context.render_view(view), title=view.title, icon=view.icon,
                   url_path=view.url_path)
    PAGES.setdefault(view.section, []).append(page)
    plugin_pages[view.title] = page
context.remember_pages(plugin_pages)
order = list(SECTIONS) + [s for s in PAGES if s not in SECTIONS]
page = st.navigation({section: PAGES[section] for section in order if PAGES.get(section)}, expanded=True)
context.follow_page_parameter(plugin_pages)  # ?page=URL-PATH opens a plugin's page (links, AppTest)
try:
    page.run()
except ProbeError as err:
    st.error(str(err))
