"""The store's sweeps (:mod:`probe.sweep`): pick one, pick a metric (and a clip group), see its
layer × head (or layer × k) heatmap, the table of cells with the most harmful first, and each
cell's transcripts clip by clip; export it as the CLI's ``probe export SWEEP_ID`` does.

Sweeps are read from ``<store>/sweeps/`` only; a sweep picked by ``?sweep=ID`` in the URL must be one of them."""

from __future__ import annotations

import json

import streamlit as st

from probe import sweep as sweep_mod
from probe.dashboards import context
from probe.errors import ProbeError
from probe.figures import png_bytes
from probe.figures.sweep import sweep_heatmap, value_text


@st.cache_data(show_spinner=False, max_entries=64)
def _heatmap(store_path: str, sweep_id: str, metric: str, group: str | None, rows_mtime: float) -> bytes:
    found = sweep_mod.open_sweep(context.open_store(store_path), sweep_id)
    return png_bytes(sweep_heatmap(found, metric, group))


st.title("Sweeps")
store = context.current_store()
sweeps = sweep_mod.list_sweeps(store)
if not sweeps:
    st.info("No sweeps in this store yet. Run one, e.g. `probe sweep --clips examples/clips.json --family heads "
            "--attention decoder.self_attn --language en`, and it appears here.")
    st.stop()
ids = [s.id for s in sweeps]
wanted = st.query_params.get("sweep")
default = ids.index(wanted) if wanted in ids else 0
picked = sweeps[st.selectbox("Sweep", range(len(ids)), index=default, key="sweep_pick",
                             format_func=lambda i: f"{sweeps[i].manifest.get('name') or ids[i]} — {ids[i]}")]
st.query_params["sweep"] = picked.id
spec = picked.spec
st.caption(f"{', '.join(f'{k} {v}' for k, v in spec.items() if v not in (None, [], False))} · model "
           f"{picked.manifest.get('model')} · {len(picked.clips)} clip(s) · "
           f"{len(picked.done())} of {len(picked.cells)} cells done")
groups = picked.groups()
columns = st.columns(2)
try:
    shown = [m for m in sweep_mod.METRICS if any(row.get(m) is not None for row in picked.table()
                                                 if row["cell"] != sweep_mod.CLEAN)] or ["delta_logprob"]
    metric = columns[0].selectbox("Metric", shown, key=f"sweep_metric:{picked.id}",
                                  format_func=lambda m: sweep_mod.METRICS[m][0])
    group = columns[1].selectbox("Clips", [None, *groups], key=f"sweep_group:{picked.id}",
                                 format_func=lambda g: "all" if g is None else g) if groups else None
    rows_file = picked.path / "rows.jsonl"
    mtime = rows_file.stat().st_mtime if rows_file.exists() else 0.0
    st.image(_heatmap(str(store.path), picked.id, metric, group, mtime))
    table = picked.table(group)
except ProbeError as err:
    st.error(str(err))
    st.stop()

worse_up = sweep_mod.METRICS[metric][1]
ranked = sorted((row for row in table if row.get(metric) is not None), key=lambda row: row[metric], reverse=worse_up)
st.subheader("Cells, most harmful first")
st.dataframe([{"cell": row["cell"], **{k: row[k] for k in ("layer", "head", "k") if k in row},
               **{sweep_mod.METRICS[m][0]: value_text(m, row[m]) for m in shown if row.get(m) is not None}}
              for row in ranked], hide_index=True)

st.subheader("Transcripts of one cell")
cell = st.selectbox("Cell", [row["cell"] for row in ranked], key=f"sweep_cell:{picked.id}")
clean = {}
try:
    clean = {i: item.get("transcript", "") for i, item in
             enumerate(json.loads((picked.path / "clean.json").read_text(encoding="utf-8")))}
except (OSError, json.JSONDecodeError):
    pass
for row in sorted((r for r in picked.rows() if r["cell"] == cell), key=lambda r: r["clip"]):
    clip = picked.clips[row["clip"]]
    if group is not None and clip.get("group") != group:
        continue
    name = str(clip.get("source", "")).rsplit("/", 1)[-1]
    st.markdown(f"**{name}**{' · ' + clip['group'] if clip.get('group') else ''} — clean: "
                f"“{clean.get(row['clip'], '')}” → “{row['transcript']}”")

if st.button("Export this sweep (HTML)", key=f"sweep_export:{picked.id}"):
    from probe.export.sweep import shown_metrics, sweep_page
    from probe.figures.base import figure_file

    pngs = {m: figure_file(sweep_heatmap(picked, m, group), "png", 110) for m in shown_metrics(picked, group)}
    st.download_button("Download the HTML page", sweep_page(picked, table, pngs, group).encode("utf-8"),
                       file_name=f"{picked.id}.html", mime="text/html", key=f"sweep_download:{picked.id}")
