"""Plugin records: every record in the trace, whatever plugin wrote it — tables as dataframes,
1-D series as line charts, 2-D (or slices of larger) tensors as heatmaps, JSON as a tree —
labelled with the dims, units and description the plugin gave (``probe_describe_records``) or
the record's ``meta["axes"]``.  Records of plugins that draw no page of their own come first."""

from __future__ import annotations

import streamlit as st

from probe import contributions
from probe.dashboards import context

trace = context.current_trace()
found = contributions.current()
st.title("Plugin records")
with_pages = {view.plugin for view in found.views if view.available(trace)}
plugin_of = {name: entry.get("plugin") or "?" for name, entry in trace.records.items()}
records = sorted(trace.records, key=lambda name: (plugin_of[name] in with_pages, plugin_of[name]))
if not records:
    st.info("This trace holds no records. Write a plugin in a few lines (see the README) and run it with "
            "`probe run AUDIO -p my_plugin.py`.")
    st.stop()
name = st.selectbox("Record", records, key="plugin_record",
                    format_func=lambda n: f"{n} ({trace.records[n]['kind']}, plugin {plugin_of[n]})")
entry = trace.records[name]
described = found.describe(name, entry)
shape = entry.get("shape") or []
dims = list(described.get("dims") or [])
dims = dims if len(dims) == len(shape) else [f"axis {i}" for i in range(len(shape))]
if described.get("description"):
    st.markdown(described["description"])
st.caption(f"kind {entry['kind']} · shape {shape}" + (f" [{', '.join(dims)}]" if dims else "")
           + f" · dtype {entry.get('dtype')}" + (f" · units: {described['units']}" if described.get("units") else "")
           + f" · meta {entry.get('meta') or {}}")
if entry["kind"] == "table":
    st.dataframe(trace.table(name), hide_index=True)
elif entry["kind"] == "json":
    st.json(trace.json(name))
elif len(shape) == 1:
    st.line_chart(trace.tensor(name), x_label=dims[0], y_label=described.get("units") or name)
elif len(shape) >= 2:
    index = tuple(st.slider(dims[i], 0, shape[i] - 1, 0, key=f"plugin_index_{name}_{i}")
                  if shape[i] > 1 else 0 for i in range(len(shape) - 2))
    context.show_figure(trace, "record_heatmap", name=name, index=index)
else:
    st.write(trace.tensor(name))
