"""Token probabilities: the transcript coloured by confidence, each step's probability, entropy
and top-k alternatives, and the full token table."""

from __future__ import annotations

import math

import streamlit as st

from probe import figures
from probe.dashboards import context

trace = context.current_trace()
st.title("Token probabilities")
st.html(figures.transcript_html(trace))
st.caption("Hover a token for its probability, entropy and the alternatives the model considered.")

rows = trace.table("token_probs.tokens")
pages = max(1, math.ceil(len(rows) / figures.TOKENS_PER_PAGE))
page = st.number_input("Page of tokens", 1, pages, 1, key="tokens_page") if pages > 1 else 1
context.show_figure(trace, "token_probs", first=(page - 1) * figures.TOKENS_PER_PAGE)

st.subheader("Every emitted token")
st.dataframe([{"window": row["window"], "step": row["step"], "token": row["token"], "kind": row["kind"],
               "probability": row["prob"], "entropy (nats)": row["entropy"],
               "alternatives": ", ".join(f"{t!r} {p:.2f}" for t, p in zip(row["top_k_tokens"], row["top_k_probs"]))}
              for row in rows], hide_index=True)
