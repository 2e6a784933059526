"""What token_probs shows, registered through the same hooks a third-party plugin uses: its
figures, pages, export sections and tables, lesson steps and the description of its records.
Torch-free: the dashboard and the export load this module, not :mod:`.capture`."""

from __future__ import annotations

from probe.hookspecs import hookimpl

NAME = "token_probs"
__version__ = "1.0"
TOKENS, MULTITASK = "token_probs.tokens", "token_probs.multitask"


class Presentation:
    name = NAME
    __version__ = __version__

    @hookimpl
    def probe_describe_records(self):
        return {
            TOKENS: {"description": "one row per generated token: probability, log-probability, entropy and the "
                                    "top-k alternatives", "units": "probability; entropy in nats",
                     "token_columns": [["token_id", "token"], ["top_k_ids", "top_k_tokens"]]},
            "token_probs.top_k_ids": {"dims": ["token", "k"], "units": "token id",
                                      "description": "the k most probable tokens at each step"},
            "token_probs.top_k_probs": {"dims": ["token", "k"], "units": "probability",
                                        "description": "their probabilities"},
            MULTITASK: {"description": "per window: language probabilities, no-speech probability, prompt"},
        }

    @hookimpl
    def probe_figures(self, register):
        from probe.plugins.token_probs import figures

        register("token_probs", figures.token_probs, requires=TOKENS,
                 caption="Token probabilities with the top alternatives at each step.")
        register("language_probs", figures.language_probs, requires=MULTITASK,
                 caption="Language detection: the most probable languages.")

    @hookimpl
    def probe_dashboard_views(self, register):
        from probe.plugins.token_probs import views

        register("Multitask prompt", views.multitask_page, requires=MULTITASK, icon=":material/translate:",
                 section="Trace", window_key="multitask_window")
        register("Token probabilities", views.tokens_page, requires=TOKENS, icon=":material/bar_chart:",
                 section="Trace", window_key="tokens_window")

    @hookimpl
    def probe_export_sections(self, register):
        from probe.plugins.token_probs import export

        register("Transcript by confidence", export.transcript_section, requires=TOKENS, order=1,
                 replaces=("transcript",))
        register("Language detection", export.languages_section, requires=MULTITASK, order=25,
                 tables=export.language_table, id="languages")
        register("Tokens, step by step", export.tokens_section, requires=TOKENS, order=90,
                 tables=export.token_table, id="tokens")

    @hookimpl
    def probe_lesson_steps(self, register):
        from probe.plugins.token_probs import views

        register("Which language?", views.language_step, requires=MULTITASK, order=55)
        register("Tokens and their probabilities", views.tokens_step, requires=TOKENS, order=70)
