"""The Lesson's core steps — the sound, the log-Mel spectrogram, the special-token prompt — made
from what every trace holds (its audio and manifest).  Plugins add the other steps through
``probe_lesson_steps``; each step is ``explain(trace, st, window)`` returning its picture drawer."""

from __future__ import annotations

import functools

from probe import figures
from probe.tokens import prompt_entries


def _window(trace, window: int) -> tuple[dict, float, float, bool]:
    windows = trace.manifest.get("windows") or []
    entry = windows[window] if windows else {}
    start = float(entry.get("start", 0.0))
    end = float(entry.get("end", min(figures.duration(trace), figures.WINDOW_SECONDS)))
    return entry, start, end, len(windows) > 1


def sound(trace, st, window: int):
    from probe.dashboards import context

    entry, start, end, long_form = _window(trace, window)
    seconds, windows = figures.duration(trace), trace.manifest.get("windows") or []
    intro = (f"Whisper hears **16 000 samples per second**, mono. This clip is **{seconds:.2f} s**: "
             f"{round(seconds * 16000):,} numbers between -1 and 1. The model always works on **30 s windows**; ")
    if not long_form:
        st.markdown(intro + f"this clip fills {min(100, seconds / 30 * 100):.0f}% of one and the rest is silence "
                            "(zeros).")
    else:
        share = min(100.0, (end - start) / figures.WINDOW_SECONDS * 100)
        rest = "; the rest is silence (zeros)" if share < 99.5 else ""
        skipped = " It was skipped as no speech: its text is not in the transcript." if entry.get("skipped") else ""
        st.markdown(intro + f"generate() decoded this one in **{len(windows)} windows**, each starting where the text "
                            "of the one before ended (dashed lines). "
                            f"**Window {window + 1}** runs from **{start:.2f} s to {end:.2f} s**: {end - start:.2f} s "
                            f"of audio fill {share:.0f}% of it{rest}.{skipped} The player plays that window.")
    st.audio(trace.audio_bytes(), format="audio/flac", start_time=start if long_form else 0,
             end_time=end if long_form else None)
    return functools.partial(context.show_figure, trace, "waveform")


def spectrogram(trace, st, window: int):
    from probe.dashboards import context

    _, start, end, _ = _window(trace, window)
    n_mels = ((trace.manifest.get("model") or {}).get("config") or {}).get("num_mel_bins", 80)
    padding = ("Look for the dashed line where the audio ends and zero padding begins."
               if end - start < figures.WINDOW_SECONDS - 0.05 else "The audio fills all 30 s: no zero padding.")
    st.markdown(f"Every 10 ms, a 25 ms slice of sound is split into frequencies and pooled into **{n_mels} Mel "
                "bins** spaced like human hearing, then log-compressed. 30 s become a **"
                f"{n_mels} × 3000** image: the encoder's only input. {padding}")
    return functools.partial(context.show_figure, trace, "log_mel", window=window)


def prompt(trace, st, window: int):
    from probe.dashboards import context

    entry, _, _, long_form = _window(trace, window)
    st.markdown("The decoder is a language model that starts from **forced special tokens**: start, the "
                "language (detected from the first step's distribution over language tokens), the task, and "
                "whether to emit timestamps. Change one token and the same audio is translated instead.")
    if long_form:
        previous = (" It starts with `<|startofprev|>` and the text decoded before it, so the decoder carries on "
                    "from there." if int(entry.get("sot_index") or 0) > 0 else "")
        st.markdown(f"Each window has its own prompt. **Window {window + 1}**: language token "
                    f"`<|{entry.get('language')}|>`, which its audio gives p = "
                    f"{float(entry.get('language_probability', 0)):.3f}; no-speech p = "
                    f"{float(entry.get('no_speech_probability', 0)):.3f}.{previous}")
    tokens = prompt_entries(trace.manifest, window)
    return functools.partial(st.html, context.prompt_chips(tokens))
