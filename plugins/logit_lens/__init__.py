"""Built-in plugin ``logit_lens``: what each decoder layer would predict if it were the last.

It owns its whole feature: the records (:mod:`.capture`, the only part that needs torch), their
figure (:mod:`.figures`), its dashboard page (:mod:`.views`) and what the presentation hooks
register (:mod:`.present`).
"""
