"""Built-in plugin ``token_probs``: how sure the decoder was of each token, and the multitask head.

It owns its whole feature: the records (:mod:`.capture`, the only part that needs torch), their
figures (:mod:`.figures`), its dashboard pages (:mod:`.views`), its export sections and tables
(:mod:`.export`), and what the presentation hooks register (:mod:`.present`).
"""
