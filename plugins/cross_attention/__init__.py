"""Built-in plugin ``cross_attention``: where in the audio each decoded token looked, and word timings.

It owns its whole feature: the records (:mod:`.capture`, the only part that needs torch), their
figures (:mod:`.figures`), its dashboard page and lesson step (:mod:`.views`), its export section
and ``words`` table (:mod:`.export`), and what the presentation hooks register (:mod:`.present`).
"""
