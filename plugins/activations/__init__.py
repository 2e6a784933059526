"""Built-in plugin ``activations``: tensors at chosen hook points, whole or summarised.

It owns its whole feature: the records (:mod:`.capture`, the only part that needs torch), the conv
stem figure (:mod:`.figures`), its dashboard page and lesson steps (:mod:`.views`), and what the
presentation hooks register (:mod:`.present`).
"""
