"""logit_lens' dashboard page: what every decoder layer would predict if it were the last one."""

from __future__ import annotations

import math

from probe import figures

CHOSEN_PROB = "logit_lens.chosen_prob"


def logit_lens_page(trace, st) -> None:
    from probe.dashboards import context

    st.title("Logit lens")
    st.markdown("Each decoder block's residual stream is read through the final layer norm and the "
                "unembedding, as if the model stopped there. Cells name that layer's top prediction; the colour "
                "is the probability it already gives to the token the model finally emitted (bold: already the top).")
    n_tokens = (trace.records.get(CHOSEN_PROB) or {}).get("shape", [0, 0])[1]
    pages = max(1, math.ceil(n_tokens / figures.TOKENS_PER_PAGE))
    page = st.number_input("Page of tokens", 1, pages, 1, key="lens_page") if pages > 1 else 1
    context.show_figure(trace, "logit_lens", first=(page - 1) * figures.TOKENS_PER_PAGE)
    st.caption("Token texts come from the trace's own records; ids it holds no text for show as #id.")
