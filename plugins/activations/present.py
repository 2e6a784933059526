"""What activations shows, registered through the same hooks a third-party plugin uses: the conv
stem and encoder-output figures, the conv stem page, two lesson steps and the description of its
records.  Torch-free: the dashboard and the export load this module, not :mod:`.capture`."""

from __future__ import annotations

from probe.hookspecs import hookimpl

NAME = "activations"
__version__ = "1.0"
CONV1, CONV2 = "activations.encoder.hook_conv1", "activations.encoder.hook_conv2"
ENCODER_OUTPUT = "activations.encoder.hook_ln_final"


class Presentation:
    name = NAME
    __version__ = __version__

    @hookimpl
    def probe_describe_records(self):
        return {
            "activations.encoder.hook_conv*": {"dims": ["window", "channel", "frame"], "units": "activation (after GELU)",
                                               "description": "the conv stem's feature maps"},
            "activations.*.norm": {"dims": ["window", "position"], "units": "L2 norm over d_model",
                                   "description": "the residual stream's norm at each position"},
            ENCODER_OUTPUT: {"dims": ["window", "frame", "d_model"], "units": "value after the final layer norm",
                             "description": "the encoder's output, what the decoder cross-attends to, per window"},
            "activations.encoder.*": {"dims": ["window", "frame", "d_model"],
                                      "description": "an encoder hook point's tensor, per window"},
            "activations.steps": {"description": "which window and step each decoder query position came from"},
        }

    @hookimpl
    def probe_figures(self, register):
        from probe.plugins.activations import encoder_output, figures

        register("conv_stem", figures.conv_stem, requires=(CONV1, CONV2),
                 caption="Conv stem: feature maps after the two convolutions (the second halves time).")
        register("encoder_output", encoder_output.encoder_output, requires=ENCODER_OUTPUT,
                 caption="Encoder output: the [1500, d_model] vectors the decoder attends to, over seconds.")

    @hookimpl
    def probe_dashboard_views(self, register):
        from probe.plugins.activations import views

        register("Conv stem", views.conv_stem_page, requires=(CONV1, CONV2), icon=":material/compress:",
                 section="Inside the model")

    @hookimpl
    def probe_lesson_steps(self, register):
        from probe.plugins.activations import views

        register("The conv stem: 3000 → 1500", views.conv_stem_step, requires=(CONV1, CONV2), order=30)
        register("The encoder's output", views.encoder_output_step, requires=ENCODER_OUTPUT, order=40)
