"""The Lesson's core steps — the sound, the log-Mel spectrogram, the special-token prompt — made
from what every trace holds (its audio and manifest), each naming the transformers call that makes
what it shows, and :func:`window_arithmetic`, how a clip fills Whisper's 30 s windows.  Plugins add
the other steps through ``probe_lesson_steps``; each step is ``explain(trace, st, window)``
returning its picture drawer."""

from __future__ import annotations

import functools
import math

from probe import figures
from probe.tokens import prompt_entries


def _window(trace, window: int) -> tuple[dict, float, float, bool]:
    """(window entry, start, end seconds in the clip, whether the clip takes more than one window)."""
    windows = trace.manifest.get("windows") or []
    entry = windows[window] if windows else {}
    start = float(entry.get("start", 0.0))
    end = float(entry.get("end", min(figures.duration(trace), figures.WINDOW_SECONDS)))
    return entry, start, end, len(windows) > 1 or figures.duration(trace) > figures.WINDOW_SECONDS + 0.005


def window_arithmetic(trace, window: int) -> str:
    """How the clip fills Whisper's 30 s windows, in words: the share of one window a short clip
    fills, or for long audio how many windows it needs at least, how many generate() decoded (its
    long-form loop starts each where the previous one's text ended, so there can be more), where
    window ``window`` runs and how much of it, and of the last window, is audio."""
    seconds, windows = figures.duration(trace), trace.manifest.get("windows") or []
    entry, start, end, long_form = _window(trace, window)
    if not long_form:
        return (f"this clip fills {min(100, seconds / figures.WINDOW_SECONDS * 100):.0f}% of one and the rest is "
                f"silence (zeros): `processor.feature_extractor(audio, sampling_rate=16000)` pads it to 30 s, "
                f"480,000 samples.")
    least = math.ceil(seconds / figures.WINDOW_SECONDS - 1e-9)
    decoded = len(windows) or least

    def audio_share(first: float, last: float) -> float:
        return min(100.0, (last - first) / figures.WINDOW_SECONDS * 100)

    more = (f" (more than the {least} that cutting it every 30 s would give)" if decoded > least else "")
    text = (f"this clip is longer than one, so it needs at least **{least} windows** of 30 s. "
            "`model.generate(input_features, attention_mask=..., return_timestamps=True)`, given features of "
            "the whole clip (`processor.feature_extractor(audio, sampling_rate=16000, truncation=False, "
            f"padding=\"longest\", return_attention_mask=True)`), decoded it in **{decoded} windows**{more}, each "
            "starting where the text of the one before ended (dashed lines). ")
    share = audio_share(start, end)
    rest = "; the rest is silence (zeros)" if share < 99.5 else ""
    text += (f"**Window {window + 1}** runs from **{start:.2f} s to {end:.2f} s**: {end - start:.2f} s of audio fill "
             f"{share:.0f}% of it{rest}.")
    if windows and window != len(windows) - 1:
        last = windows[-1]
        last_share = audio_share(float(last["start"]), float(last["end"]))
        text += (f" The last, window {len(windows)}, holds {float(last['end']) - float(last['start']):.2f} s of "
                 f"audio ({last_share:.0f}% of it)" + ("; the rest is zero padding." if last_share < 99.5 else "."))
    if entry.get("skipped"):
        text += " It was skipped as no speech: its text is not in the transcript."
    return text


def sound(trace, st, window: int):
    from probe.dashboards import context

    _, start, end, long_form = _window(trace, window)
    seconds = figures.duration(trace)
    st.markdown(f"Whisper hears **16 000 samples per second**, mono. This clip is **{seconds:.2f} s**: "
                f"{round(seconds * 16000):,} numbers between -1 and 1. The model always works on **30 s windows**; "
                + window_arithmetic(trace, window) + (" The player plays that window." if long_form else ""))
    st.audio(trace.audio_bytes(), format="audio/flac", start_time=start if long_form else 0,
             end_time=end if long_form else None)
    return functools.partial(context.show_figure, trace, "waveform")


def spectrogram(trace, st, window: int):
    from probe.dashboards import context

    _, start, end, long_form = _window(trace, window)
    n_mels = ((trace.manifest.get("model") or {}).get("config") or {}).get("num_mel_bins", 80)
    padding = ("Look for the dashed line where the audio ends and zero padding begins."
               if end - start < figures.WINDOW_SECONDS - 0.05 else "The audio fills all 30 s: no zero padding.")
    where = (f" of window {window + 1} (the 3000 frames from {start:.2f} s; for long audio generate() slices "
             "them out of the whole clip's features)" if long_form else "")
    st.markdown(f"Every 10 ms, a 25 ms slice of sound is split into frequencies and pooled into **{n_mels} Mel "
                "bins** spaced like human hearing, then log-compressed. 30 s become a **"
                f"{n_mels} × 3000** image: the encoder's only input. In transformers it is "
                "`processor.feature_extractor(audio, sampling_rate=16000, return_tensors=\"pt\").input_features`, "
                f"shaped [1, {n_mels}, 3000]; the picture shows it{where}. {padding}")
    return functools.partial(context.show_figure, trace, "log_mel", window=window)


def prompt(trace, st, window: int):
    from probe.dashboards import context

    entry, _, _, long_form = _window(trace, window)
    st.markdown("The decoder is a language model that starts from **forced special tokens**: start, the "
                "language (detected from the first step's distribution over language tokens), the task, and "
                "whether to emit timestamps. Change one token and the same audio is translated instead. "
                "`processor.get_decoder_prompt_ids(language=..., task=...)` gives the tokens after "
                "`<|startoftranscript|>` as (position, id) pairs; `model.generate(input_features, language=..., "
                "task=...)` forces them itself, and detects the language when none is given.")
    if long_form:
        previous = (" It starts with `<|startofprev|>` and the text decoded before it, so the decoder carries on "
                    "from there." if int(entry.get("sot_index") or 0) > 0 else "")
        st.markdown(f"Each window has its own prompt. **Window {window + 1}**: language token "
                    f"`<|{entry.get('language')}|>`, which its audio gives p = "
                    f"{float(entry.get('language_probability', 0)):.3f}; no-speech p = "
                    f"{float(entry.get('no_speech_probability', 0)):.3f}.{previous}")
    tokens = prompt_entries(trace.manifest, window)
    return functools.partial(st.html, context.prompt_chips(tokens))
