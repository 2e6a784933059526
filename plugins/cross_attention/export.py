"""cross_attention in the lecture export: the word timings as buttons that play each word (the
page's player plays any element with ``data-start``/``data-end``), and the ``words`` table of the
json/csv exports."""

from __future__ import annotations

from probe.export.markup import esc
from probe.plugins.cross_attention.figures import timed_words


def words_section(trace, windows) -> str:
    words = timed_words(trace)
    if not words:
        return ""
    buttons = "".join(
        f'<button type="button" data-start="{float(w["start"]):.3f}" '
        f'data-end="{float(w["end"]):.3f}">{esc(str(w["word"]).strip())}'
        f'<small>{float(w["start"]):.2f}–{float(w["end"]):.2f} s</small></button>'
        for w in words)
    return ('<p class="hint">From dynamic time warping over the alignment heads\' cross-attention. '
            f'Click a word to hear it.</p><div class="words">{buttons}</div>')


def words_table(trace) -> dict[str, list[dict]]:
    return {"words": timed_words(trace)}
