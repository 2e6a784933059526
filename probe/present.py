"""The core's own contributions, made through the presentation hooks as any plugin's are: the
figures of the sound and of the windows, the export's *Listen*, *Prompt* and *Windows* sections,
and the Lesson's first steps (the sound, the log-Mel, the prompt).

Registered as the plugin ``core``, first, by :func:`probe.plugin_manager.get_plugin_manager`
with ``presentation=True``; it reads only what every trace holds (the audio and the manifest).
"""

from __future__ import annotations

from probe.hookspecs import hookimpl

name = "core"
__version__ = "1.0"


@hookimpl
def probe_figures(register):
    from probe import figures

    register("waveform", figures.waveform, caption="Waveform: the 16 kHz samples Whisper hears.")
    register("log_mel", figures.log_mel, caption="Log-Mel spectrogram: the encoder's input (mel bins × 10 ms frames).")
    register("windows", figures.windows_timeline,
             caption="Windows: each 30 s window decoded, its retries, and its hallucination signals.")
    register("record_heatmap", figures.record_heatmap, caption="A tensor record as a heatmap of its last two axes.")
    # a submodule imported by its full name: probe.figures' __getattr__ would look it up as a figure
    from probe.figures.effect import CROSS_ATTENTION, LOGPROBS, effect_cross_attention, effect_logprobs

    register("effect_logprobs", effect_logprobs, requires=(LOGPROBS,),
             caption="Effect of the intervention: each clean token's log-probability, clean and intervened.")
    register("effect_cross_attention", effect_cross_attention, requires=(CROSS_ATTENTION,),
             caption="Effect of the intervention on where the clean tokens listen (alignment heads' cross-attention).")


@hookimpl
def probe_export_sections(register):
    from probe.export import sections

    register("Listen and read", sections.listen, order=0, id="listen")
    register("Prompt, language and no-speech", sections.prompt, order=20, id="task")
    register("Windows and retries", sections.windows, order=40, id="windows")
    register("Effect of the intervention", sections.effect, order=15, id="effect", requires=("effect.logprobs",))


@hookimpl
def probe_lesson_steps(register):
    from probe.dashboards import steps

    register("The sound", steps.sound, order=10)
    register("The log-Mel spectrogram", steps.spectrogram, order=20)
    register("The special-token prompt", steps.prompt, order=50)
