"""Token probabilities: the transcript coloured by confidence, each step's probability, entropy
and top-k alternatives, and the full token table."""

from __future__ import annotations

import math

import streamlit as st

from probe import figures
from probe.dashboards import context
from probe.errors import StoreError

trace = context.current_trace()
st.title("Token probabilities")
windows = trace.manifest.get("windows") or []
rows = trace.table("token_probs.tokens") if "token_probs.tokens" in trace.records else []
if len(windows) > 1:  # long audio: one window at a time (an hour's transcript is ~2.6 MB of spans)
    window = context.pick_window(trace, "tokens_window", default=figures.first_spoken_window(trace))
    offset = next((i for i, row in enumerate(rows) if row["window"] == window), len(rows))
    rows = [row for row in rows if row["window"] == window]
else:
    window, offset = None, 0
try:
    st.html(figures.transcript_html(trace, window))
except StoreError as err:
    st.error(str(err))
    st.stop()
st.caption("Hover a token for its probability, entropy and the alternatives the model considered."
           + (" Tokens of the chosen window, the tail it decoded past its last timestamp included." if window is not None
              else ""))

pages = max(1, math.ceil(len(rows) / figures.TOKENS_PER_PAGE))
page = st.number_input("Page of tokens", 1, pages, 1, key="tokens_page") if pages > 1 else 1
if rows:
    context.show_figure(trace, "token_probs", first=offset + (page - 1) * figures.TOKENS_PER_PAGE,
                        count=min(figures.TOKENS_PER_PAGE, len(rows) - (page - 1) * figures.TOKENS_PER_PAGE))

st.subheader("Every emitted token" + (f" of window {window + 1}" if window is not None else ""))
st.dataframe([{"window": row["window"] + 1, "step": row["step"], "token": row["token"], "kind": row["kind"],
               "probability": row["prob"], "entropy (nats)": row["entropy"],
               "alternatives": ", ".join(f"{t!r} {p:.2f}" for t, p in zip(row["top_k_tokens"], row["top_k_probs"]))}
              for row in rows], hide_index=True)
