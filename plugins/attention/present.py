"""What attention shows, registered through the same hooks a third-party plugin uses: its figures,
its page and the description of its records.  Torch-free: the dashboard and the export load this
module, not :mod:`.capture`."""

from __future__ import annotations

from probe.hookspecs import hookimpl

NAME = "attention"
__version__ = "1.0"
ENCODER, DECODER = "attention.encoder", "attention.decoder"
ENTROPY, DISTANCE = "attention.encoder_entropy", "attention.encoder_distance"


class Presentation:
    name = NAME
    __version__ = __version__

    @hookimpl
    def probe_describe_records(self):
        return {
            ENCODER: {"dims": ["layer", "head", "query_cell", "key_cell"], "units": "attention probability",
                      "description": "encoder self-attention of the first window, pooled over frames (meta: pool)"},
            DECODER: {"dims": ["layer", "head", "query", "key"], "units": "attention probability",
                      "description": "decoder self-attention over the first window's prompt and tokens"},
            ENTROPY: {"dims": ["window", "layer", "head"], "units": "nats",
                      "description": "entropy of each encoder head's attention"},
            DISTANCE: {"dims": ["window", "layer", "head"], "units": "encoder frames (20 ms)",
                       "description": "mean attention distance of each encoder head"},
        }

    @hookimpl
    def probe_figures(self, register):
        from probe.plugins.attention import figures

        register("encoder_attention", figures.encoder_attention, requires=ENCODER,
                 caption="Encoder self-attention heads.")
        register("decoder_attention", figures.decoder_attention, requires=DECODER,
                 caption="Decoder self-attention heads over the prompt and generated tokens.")
        register("attention_summary", figures.attention_summary, requires=(ENTROPY, DISTANCE),
                 caption="Attention heads at a glance: entropy and mean distance per layer and head.")

    @hookimpl
    def probe_dashboard_views(self, register):
        from probe.plugins.attention import views

        register("Attention explorer", views.attention_page, requires=(ENCODER, DECODER),
                 icon=":material/grid_on:", section="Inside the model")
