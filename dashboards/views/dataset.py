"""Dataset: the store's traces as one table, each with its WER/CER against its reference text (a
dataset's text column), to filter, sort and pick from; what the traces shown add up to (the core's
and each plugin's ``probe_summary_reduce``), histograms of the error rate, the average
log-probability and the duration, confidence against error, and the summary to download (the page
``probe summary --html`` writes, or CSV).

A store-level page, like Sweeps: it shows the store's summary (:func:`probe.summary.summary_table`,
kept in the store's summary index), not the sidebar's trace.  The table is read again only when
the store folder changes (publishing or deleting a trace renames a folder in it) and is otherwise
served from ``st.cache_data``, and so are the reductions and charts of each choice of filters;
charts carry binned counts and a sample of at most :data:`SCATTER_POINTS` traces, so a store of
10 000 traces stays responsive.  Picking a row makes that trace the sidebar's (and ``?trace=``'s)
for every other view and links to them.
"""

from __future__ import annotations

import hashlib
import json
import os

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from probe import contributions
from probe import summary as store_summary
from probe.cli.summary import summary_page
from probe.dashboards import context
from probe.errors import ProbeError
from probe.export.markup import DIFF_STYLE, diff_html
from probe.metrics import word_diff

SCATTER_POINTS = 2000  # more traces than this are sampled down to it in the confidence-vs-error scatter
BINS = 30
TEXT_SHOWN = 120  # characters of a transcript or reference in the table (the picked row shows them whole)
OPENED_KEY = "dataset_opened"  # (table key, trace id) of the row last picked: each pick is acted on once
PERCENT, DECIMALS = "percent", "%.3f"
# summary column → (label, number format or None): the table shows these, in this order, then
# the plugins' columns (their names hold a dot)
COLUMNS = {
    "name": ("trace", None), "error_rate": ("WER/CER", PERCENT), "headline": ("scored by", None),
    "wer": ("WER", PERCENT), "cer": ("CER", PERCENT), "language": ("language", None),
    "dataset": ("dataset", None), "split": ("split", None), "row": ("row", None), "model": ("model", None),
    "duration": ("duration (s)", "%.1f"), "avg_logprob": ("avg log-prob", DECIMALS),
    "no_speech_probability": ("no-speech p", DECIMALS), "compression_ratio": ("compression", "%.2f"),
    "transcript": ("transcript", None), "reference": ("reference", None), "created": ("recorded", None),
    "id": ("id", None),
}
ERROR_HELP = ("The headline error rate against the reference, after Whisper's text normalisation: CER for "
              "languages written without spaces between words (zh, ja, th, …), WER otherwise.")
# summary_reduce's "core" results shown as metrics: name, label, how its value reads
CORE_RESULTS = (
    ("count", "traces", str), ("with_reference", "with a reference", str),
    ("wer", "WER", lambda v: f"{v:.1%}"), ("cer", "CER", lambda v: f"{v:.1%}"),
    ("avg_logprob", "mean avg log-prob", lambda v: f"{v:.3f}"),
    ("total_duration", "audio", lambda v: f"{v / 3600:.1f} h" if v >= 3600 else f"{v / 60:.1f} min"),
)
WEIGHTED = "Over the traces with a reference, each weighted by its reference words (for WER: the corpus WER)."


@st.cache_data(show_spinner="Reading the store's summary…", max_entries=4)
def summary(store_path: str, signature: tuple) -> pd.DataFrame:
    """The store's summary table (one row per trace, newest first).  ``signature`` (the store
    folder's modification time, the plugins presented) only keys the cache."""
    return store_summary.summary_table(context.open_store(store_path))


@st.cache_data(show_spinner="Adding up the traces shown…", max_entries=16)
def reduced(store_path: str, shown: str, _view: pd.DataFrame) -> dict:
    """``summary_reduce`` of the rows shown, once per store change and choice of filters (``shown``)."""
    return store_summary.summary_reduce(_view)


@st.cache_data(show_spinner=False, max_entries=16)
def charts(store_path: str, shown: str, _view: pd.DataFrame) -> dict[str, dict]:
    """The charts of the rows shown as Vega-Lite specs (name → spec), once per store change and
    choice of filters (``shown``): building and checking a spec takes longer than drawing it."""
    drawn = {}
    for name, title in (("error_rate", "WER/CER"), ("avg_logprob", "average log-probability"),
                        ("duration", "duration (s)")):
        if _view[name].notna().any():
            drawn[name] = histogram(_view[name], title, percent=name == "error_rate")
    if _view[["avg_logprob", "error_rate"]].notna().all(axis=1).any():
        drawn["scatter"] = confidence_scatter(_view)
    return {name: chart.to_dict() for name, chart in drawn.items()}


def histogram(values: pd.Series, title: str, percent: bool = False) -> alt.Chart:
    """Bars of ``values``, binned here: the chart carries at most :data:`BINS` rows, not one per trace."""
    values = values.dropna().astype(float)
    counts, edges = np.histogram(values, bins=min(BINS, len(values)))
    bins = pd.DataFrame({"start": edges[:-1], "end": edges[1:], "traces": counts})
    return alt.Chart(bins, height=220).mark_bar().encode(
        x=alt.X("start:Q", bin="binned", axis=alt.Axis(format="%" if percent else "~g", title=title)),
        x2="end:Q", y=alt.Y("traces:Q", title="traces", axis=alt.Axis(tickMinStep=1, format="d")),
        tooltip=[alt.Tooltip("start:Q", format=".3g"), alt.Tooltip("end:Q", format=".3g"), "traces:Q"])


def confidence_scatter(table: pd.DataFrame) -> alt.Chart:
    """Average log-probability against the headline error rate, a point per trace (a sample of
    :data:`SCATTER_POINTS` of them when there are more)."""
    points = table.dropna(subset=["avg_logprob", "error_rate"])
    if len(points) > SCATTER_POINTS:
        points = points.sample(SCATTER_POINTS, random_state=0)
    points = points[["name", "id", "avg_logprob", "error_rate", "headline", "language"]].fillna({"language": "?"})
    return alt.Chart(points, height=320).mark_circle(size=28, opacity=0.6).encode(
        x=alt.X("avg_logprob:Q", title="average log-probability (confidence)"),
        y=alt.Y("error_rate:Q", title="WER/CER", axis=alt.Axis(format="%")),
        color=alt.Color("language:N", title="language"),
        tooltip=["name:N", "id:N", alt.Tooltip("error_rate:Q", format=".1%"), "headline:N",
                 alt.Tooltip("avg_logprob:Q", format=".3f")])


def has_text(column: pd.Series) -> pd.Series:
    return column.fillna("").astype(str).str.strip() != ""


def clipped(column: pd.Series) -> pd.Series:
    return column.where(column.str.len().fillna(0) <= TEXT_SHOWN, column.str.slice(0, TEXT_SHOWN - 1) + "…")


def flatten(results: dict, prefix: str = "") -> list[dict]:
    """Nested reduce results as rows ``{"result": "plugin.name", "value": text}``."""
    rows = []
    for name, value in results.items():
        if isinstance(value, dict) and value:
            rows += flatten(value, f"{prefix}{name}.")
        else:
            text = value if isinstance(value, str) else f"{value:.4g}" if isinstance(value, float) \
                else json.dumps(value)
            rows.append({"result": f"{prefix}{name}", "value": text})
    return rows


st.title("Dataset")
store = context.current_store()
signature = (os.stat(store.path).st_mtime_ns, tuple(contributions.current().plugins))
try:
    table = summary(str(store.path), signature)
except ProbeError as err:
    st.error(str(err))
    st.stop()
broken = table["error"].notna()
if broken.any():
    st.warning(f"{int(broken.sum())} broken trace(s) left out (`probe ls` names them).")
table = table[~broken]
if table.empty:
    st.info(f"No traces in {store.path} yet. Trace a dataset with `probe run --dataset DIR_OR_NAME --text-column "
            "TEXT --limit N`: each row becomes a trace here, scored against its text column.")
    st.stop()
scored = has_text(table["reference"])
if not scored.any():
    st.info(f"None of the {len(table)} traces has a reference text, so there is no WER/CER to show yet: trace a "
            "dataset with `probe run --dataset DIR_OR_NAME --text-column TEXT`, whose text column is the reference.")

# --------------------------------------------------------------------------- filters
columns = st.columns(4)
languages = columns[0].multiselect("Language", sorted(table["language"].dropna().unique()), key="dataset_language")
models = columns[1].multiselect("Model", sorted(table["model"].dropna().unique()), key="dataset_model")
split_of = table["dataset"].str.cat(table["split"].fillna("?"), sep=" · ")  # missing where not from a dataset
splits = columns[2].multiselect("Dataset · split", sorted(split_of.dropna().unique()), key="dataset_split")
search = columns[3].text_input("Search transcripts and references", key="dataset_search",
                               placeholder="words or characters").strip()
columns = st.columns([1, 3])
only_scored = columns[0].checkbox("Only with a reference", key="dataset_scored", disabled=not scored.any())
top = int(np.ceil(max(1.0, table.loc[scored, "error_rate"].max() if scored.any() else 1.0) * 100))
span = columns[1].slider("WER/CER (%)", 0, top, (0, top), key=f"dataset_error_range:{top}", disabled=not scored.any(),
                         help=ERROR_HELP + " Narrowing the range keeps only traces with a reference.")

keep = pd.Series(True, index=table.index)
if languages:
    keep &= table["language"].isin(languages)
if models:
    keep &= table["model"].isin(models)
if splits:
    keep &= split_of.isin(splits)
if search:
    keep &= (table["transcript"].fillna("").str.contains(search, case=False, regex=False)
             | table["reference"].fillna("").str.contains(search, case=False, regex=False))
if only_scored:
    keep &= scored
if tuple(span) != (0, top):
    keep &= scored & table["error_rate"].between(span[0] / 100, span[1] / 100)
view = table[keep].reset_index(drop=True)
described = " and ".join(part for part in (  # the filters, in words, for the downloaded page
    languages and f"language in {languages}", models and f"model in {models}",
    splits and f"dataset · split in {splits}", search and f"transcript or reference contains {search!r}",
    only_scored and "with a reference",
    tuple(span) != (0, top) and f"{span[0]}% ≤ WER/CER ≤ {span[1]}%") if part) or None

# --------------------------------------------------------------------------- the table
filters = json.dumps([signature, languages, models, splits, search, only_scored, list(span)], default=str)
shown = hashlib.sha1(filters.encode()).hexdigest()[:12]  # names what is shown: these traces, these filters
table_key = f"dataset_table:{shown}"  # other filters or traces: another table, so no stale row stays picked
display = view[[c for c in COLUMNS if c in view] + [c for c in view if "." in c]].copy()
display["headline"] = display["headline"].str.upper()
display["transcript"], display["reference"] = clipped(display["transcript"]), clipped(display["reference"])
config = {column: st.column_config.NumberColumn(label, format=fmt) if fmt else st.column_config.Column(label)
          for column, (label, fmt) in COLUMNS.items()}
config["error_rate"] = st.column_config.NumberColumn("WER/CER", format=PERCENT, help=ERROR_HELP)
st.caption(f"{len(view)} of {len(table)} traces · {int(has_text(view['reference']).sum())} with a reference · "
           "newest first (click a column to sort) · pick a row to open its trace in the other views.")
event = st.dataframe(display, key=table_key, on_select="rerun", selection_mode="single-row", hide_index=True,
                     column_config=config, width="stretch", placeholder="–")

rows = event.selection.rows
if not rows:
    st.session_state.pop(OPENED_KEY, None)  # picking the same row again acts again
elif rows[0] < len(view):
    row = view.iloc[rows[0]]
    picked = row.astype(object).where(row.notna(), None)  # missing values as None
    if st.session_state.get(OPENED_KEY) != (table_key, picked["id"]):
        st.session_state[OPENED_KEY] = (table_key, picked["id"])
        current = context.picked_trace()
        if current is None or current.id != picked["id"]:
            context.select_trace(picked["id"])  # the sidebar and ?trace= take it when the rerun draws them
            st.rerun()
    rate = picked["error_rate"]
    st.markdown(f"Picked **{picked['name'] or picked['id']}** · "
                + (f"{str(picked['headline']).upper()} **{rate:.1%}**" if rate is not None else "no reference")
                + f" · `{picked['id']}`")
    if rate is not None and (picked["reference"] or "").strip():
        diff = word_diff(picked["reference"], picked["transcript"] or "", picked["language"])
        st.html(f"<style>{DIFF_STYLE}</style><div style='font-size:1.05rem;line-height:1.8'>{diff_html(diff)}</div>")
        st.caption("The reference against the transcript: struck through, only in the reference; highlighted, only "
                   "in the transcript.")
    links = st.columns(4)
    for column, (page, title) in zip(links, (("views/overview.py", "Overview"), ("views/audio.py", "Audio"),
                                             ("views/windows.py", "Windows and retries"),
                                             ("views/compare.py", "Compare traces"))):
        column.page_link(page, label=f"Open in {title}", icon=":material/open_in_new:",
                         query_params={context.TRACE_KEY: picked["id"]})

# --------------------------------------------------------------------------- across the traces
if view.empty:
    st.info("No trace matches these filters.")
    st.stop()
st.subheader("Across the traces shown")
try:
    results = reduced(str(store.path), shown, view)
except ProbeError as err:  # a plugin's probe_summary_reduce failed: the rest of the page still helps
    st.error(str(err))
    results = {"core": store_summary.core_aggregates(view)}
for column, (name, label, reads) in zip(st.columns(len(CORE_RESULTS)), CORE_RESULTS):
    value = results["core"].get(name)
    column.metric(label, "–" if value is None else reads(value), help=WEIGHTED if name in ("wer", "cer") else None)
by_plugins = {plugin: result for plugin, result in results.items() if plugin != "core"}
if by_plugins:
    st.dataframe(flatten(by_plugins), hide_index=True)
    st.caption("What each plugin's `probe_summary_reduce` makes of these traces, under the plugin's name.")

st.subheader("Distributions")
drawn = charts(str(store.path), shown, view)
for column, name in zip(st.columns(3), ("error_rate", "avg_logprob", "duration")):
    if name in drawn:
        column.vega_lite_chart(drawn[name], width="stretch")
    else:
        column.caption("No WER/CER: none of the traces shown has a reference." if name == "error_rate"
                       else f"No trace shown has a {name.replace('_', ' ')}.")
if "scatter" in drawn:
    st.subheader("Confidence against error")
    st.vega_lite_chart(drawn["scatter"], width="stretch")
    paired = int(view[["avg_logprob", "error_rate"]].notna().all(axis=1).sum())
    st.caption("A point per trace: how sure the decoder was (its tokens' average log-probability) against how wrong "
               "it was." + (f" {SCATTER_POINTS} of {paired} traces drawn, sampled." if paired > SCATTER_POINTS else ""))

left, right = st.columns([1, 3])
left.download_button("Download summary (HTML)", lambda: summary_page(view, results, store.path, described),
                     file_name=f"summary-{store.path.name}.html", mime="text/html", key="dataset_download_html",
                     on_click="ignore", icon=":material/download:", type="primary",
                     help="The rows shown and what they add up to, as `probe summary --html` writes it: one "
                          "self-contained page, sortable by clicking a column's header.")
right.download_button("Download summary (CSV)", lambda: view.to_csv(index=False), file_name="summary.csv",
                      mime="text/csv", key="dataset_download_csv", on_click="ignore", icon=":material/download:",
                      help="The rows shown, with every column of the summary.")
