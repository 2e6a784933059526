"""What logit_lens shows, registered through the same hooks a third-party plugin uses: its
figure, its page and the description of its records.  Torch-free: the dashboard and the export
load this module, not :mod:`.capture`."""

from __future__ import annotations

from probe.hookspecs import hookimpl

NAME = "logit_lens"
__version__ = "1.0"
NEEDED = ("logit_lens.top_ids", "logit_lens.chosen_prob", "logit_lens.chosen_rank")


class Presentation:
    name = NAME
    __version__ = __version__

    @hookimpl
    def probe_describe_records(self):
        return {
            "logit_lens.top_ids": {"dims": ["layer", "token", "k"], "units": "token id",
                                   "description": "each layer's top-k predictions for each emitted token"},
            "logit_lens.top_probs": {"dims": ["layer", "token", "k"], "units": "probability",
                                     "description": "their probabilities"},
            "logit_lens.top_tokens": {"description": "the top-k predictions as text, [layer][token][k]"},
            "logit_lens.chosen_rank": {"dims": ["layer", "token"], "units": "rank (0 = top)",
                                       "description": "rank each layer gives the token finally emitted"},
            "logit_lens.chosen_prob": {"dims": ["layer", "token"], "units": "probability",
                                       "description": "probability each layer gives the token finally emitted"},
        }

    @hookimpl
    def probe_figures(self, register):
        from probe.plugins.logit_lens import figures

        register("logit_lens", figures.logit_lens, requires=NEEDED,
                 caption="Logit lens: what each decoder layer would predict at each position.")

    @hookimpl
    def probe_dashboard_views(self, register):
        from probe.plugins.logit_lens import views

        register("Logit lens", views.logit_lens_page, requires=NEEDED, icon=":material/layers:",
                 section="Inside the model")
