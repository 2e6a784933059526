"""Built-in plugin ``attention``: encoder and decoder self-attention patterns and per-head summaries.

It owns its whole feature: the records (:mod:`.capture`, the only part that needs torch), their
figures (:mod:`.figures`), its dashboard page (:mod:`.views`) and what the presentation hooks
register (:mod:`.present`).
"""
