"""Plugin records: every record a non-built-in plugin stored in the trace — tables as dataframes,
1-D series as line charts, 2-D (or slices of larger) tensors as heatmaps, JSON as a tree — and
the views plugins register through the ``probe_dashboard_views`` hook."""

from __future__ import annotations

import streamlit as st

from probe.dashboards import context
from probe.dashboards.registry import plugin_views
from probe.errors import PluginError
from probe.plugin_manager import DEFAULT_PLUGINS, get_plugin_manager

trace = context.current_trace()
st.title("Plugin records")
records = {name: entry for name, entry in trace.records.items() if entry.get("plugin") not in DEFAULT_PLUGINS}
if not records:
    st.info("This trace holds no records from third-party plugins. Write one in a few lines (see the README) "
            "and run it with `probe run AUDIO -p my_plugin.py`.")
else:
    name = st.selectbox("Record", list(records), key="plugin_record",
                        format_func=lambda n: f"{n} ({records[n]['kind']}, plugin {records[n].get('plugin')})")
    entry = records[name]
    shape = entry.get("shape") or []
    st.caption(f"kind {entry['kind']} · shape {shape} · dtype {entry.get('dtype')} · meta {entry.get('meta') or {}}")
    if entry["kind"] == "table":
        st.dataframe(trace.table(name), hide_index=True)
    elif entry["kind"] == "json":
        st.json(trace.json(name))
    elif len(shape) == 1:
        st.line_chart(trace.tensor(name), x_label="index", y_label=name)
    elif len(shape) >= 2:
        axes = (entry.get("meta") or {}).get("axes") or [f"axis {i}" for i in range(len(shape))]
        index = tuple(st.slider(f"{axes[i]}", 0, shape[i] - 1, 0, key=f"plugin_index_{name}_{i}")
                      if shape[i] > 1 else 0 for i in range(len(shape) - 2))
        context.show_figure(trace, "record_heatmap", name=name, index=index)
    else:
        st.write(trace.tensor(name))

# Built-ins register no views; leaving them out keeps torch out of the dashboard.
views = plugin_views(get_plugin_manager(disabled=DEFAULT_PLUGINS))
for view in views:
    st.subheader(view.title)
    st.caption(f"A view from the {view.plugin} plugin.")
    try:
        view.render(trace, st)
    except Exception as exc:  # a third-party view's bug must not take the dashboard down
        st.error(str(PluginError(f"plugin {view.plugin!r} raised in its dashboard view {view.title!r}: "
                                 f"{type(exc).__name__}: {exc}")))
