"""What cross_attention shows, registered through the same hooks a third-party plugin uses: its
figures, its page, the export's word timings and ``words`` table, a lesson step and the
description of its records.  Torch-free: the dashboard and the export load this module, not
:mod:`.capture`."""

from __future__ import annotations

from probe.hookspecs import hookimpl

NAME = "cross_attention"
__version__ = "1.0"
WEIGHTS, ALIGNMENT, TOKENS, WORDS = ("cross_attention.weights", "cross_attention.alignment",
                                     "cross_attention.tokens", "cross_attention.words")
REJECTED, REJECTED_TOKENS = "cross_attention.rejected", "cross_attention.rejected_tokens"


class Presentation:
    name = NAME
    __version__ = __version__

    @hookimpl
    def probe_describe_records(self):
        return {
            WEIGHTS: {"dims": ["layer", "head", "token", "frame"], "units": "attention probability",
                      "description": "cross-attention of every emitted token over its window's 20 ms encoder frames"},
            ALIGNMENT: {"dims": ["aligned_token", "frame"], "units": "z-scored attention",
                        "description": "the alignment-head average the DTW word timings walk"},
            TOKENS: {"description": "per token: window, step, id, text, whether it is text and aligned",
                     "token_columns": [["token_id", "token"]]},
            WORDS: {"description": "word timings: word, start, end (seconds of the clip), window, tokens",
                    "role": "words"},
            REJECTED: {"dims": ["token", "frame"], "units": "attention probability",
                       "description": "alignment-head mean cross-attention of each rejected fallback attempt"},
            REJECTED_TOKENS: {"description": "per row of the rejected attention: window, attempt, temperature, token",
                              "token_columns": [["token_id", "token"]]},
        }

    @hookimpl
    def probe_figures(self, register):
        from probe.plugins.cross_attention import figures

        register("cross_attention", figures.cross_attention, requires=(TOKENS, ALIGNMENT),
                 caption="Cross-attention alignment: which audio frames each token attends to.")
        register("rejected_attention", figures.rejected_attention, requires=(REJECTED, REJECTED_TOKENS),
                 caption="Where a rejected fallback attempt listened (alignment-head mean).")

    @hookimpl
    def probe_dashboard_views(self, register):
        from probe.plugins.cross_attention import views

        register("Cross-attention", views.cross_attention_page, requires=(TOKENS, ALIGNMENT),
                 icon=":material/align_horizontal_left:", section="Inside the model", window_key=views.WINDOW_KEY)

    @hookimpl
    def probe_export_sections(self, register):
        from probe.plugins.cross_attention import export

        register("Word timings", export.words_section, requires=WORDS, order=5, tables=export.words_table,
                 id="words")

    @hookimpl
    def probe_lesson_steps(self, register):
        from probe.plugins.cross_attention import views

        register("Cross-attention: listening while writing", views.listening_step, requires=(TOKENS, ALIGNMENT),
                 order=60)
