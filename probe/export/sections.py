"""The core's sections of the HTML export, registered through ``probe_export_sections`` by
:mod:`probe.present` as any plugin's are: *Listen and read* (the player and the transcript),
*Prompt, language and no-speech* (of the clip, or window by window) and *Windows and retries*.
Each reads only the audio and the manifest; ``drawn`` are the windows the export covers (the page
turns links to windows it has no section for back into text).
"""

from __future__ import annotations

import base64

from probe.export.markup import diff_html, esc, number, prompt_code
from probe.tokens import labels, prompt_pieces, text
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.store import Trace

TRANSCRIPT = "<!--transcript-->"  # where the plain transcript goes, or a plugin's (replaces="transcript")


def listen(trace: Trace, drawn: list[int]) -> str:
    audio = trace.audio_bytes()
    player = ('<audio id="audio" controls preload="auto" '
              f'src="data:audio/flac;base64,{base64.b64encode(audio).decode("ascii")}"></audio>'
              if audio else '<p class="note">This trace kept no audio.</p>')
    return player + TRANSCRIPT


def plain_transcript(trace: Trace) -> str:
    return f'<div class="transcript">{esc(trace.transcript)}</div>'


def prompt(trace: Trace, drawn: list[int]) -> str:
    manifest = trace.manifest
    windows = manifest.get("windows") or []
    if len(windows) > 1:
        return _prompt_by_window(trace, windows)
    chips = prompt_code(trace)
    task = (manifest.get("decode") or {}).get("task") or "transcribe"
    facts = [("language", f"{trace.language or '?'} (p = {number(manifest.get('language_probability'))})"),
             ("no-speech probability", number(manifest.get("no_speech_probability"))),
             ("task", task)]
    fact_rows = "".join(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in facts)
    return (f'<p>The decoder starts from these special tokens: {chips or "(none recorded)"}</p>'
            f'<table>{fact_rows}</table>')


def _prompt_by_window(trace: Trace, windows: list[dict]) -> str:
    """Long audio: every window's own prompt, language token and no-speech probability."""
    task = (trace.manifest.get("decode") or {}).get("task") or "transcribe"
    rows = "".join(
        f'<tr id="prompt-window-{w["index"] + 1}"><td class="num">{w["index"] + 1}</td>'
        f'<td class="num">{w["start"]:.2f}–{w["end"]:.2f}</td><td>{_window_prompt(w)}</td>'
        f'<td>{esc(w["language"])} (p = {number(w.get("language_probability"))})</td>'
        f'<td class="num">{number(w.get("no_speech_probability"))}</td></tr>' for w in windows)
    return (f'<p>Task: {esc(task)}. Each 30 s window is decoded from its own prompt: the language '
            'token (detected, or given), the task and, when conditioning on previous text, the '
            'text decoded so far after <code class="tok">&lt;|startofprev|&gt;</code>.</p>'
            '<table><tr><th>window</th><th>seconds</th><th>prompt</th><th>language</th>'
            f'<th>no-speech p</th></tr>{rows}</table>')


def _window_prompt(window: dict, max_previous: int = 80) -> str:
    """A window's prompt as tokens, the previous text before ``<|startoftranscript|>`` quoted
    (shortened from the front: its end is what the decoder reads last)."""
    pieces = prompt_pieces(window)
    tokens = [label.strip() or "␣" for label in labels(pieces)]
    sot = int(window.get("sot_index") or 0)
    previous = text(pieces[1:sot]) if sot > 0 else ""
    if len(previous) > max_previous:
        previous = "…" + previous[-max_previous:]
    chips = [f'<code class="tok">{esc(token)}</code>' for token in tokens[sot:]]
    if sot > 0:
        chips.insert(0, f'<code class="tok">{esc(tokens[0])}</code><q>{esc(previous.strip())}</q> ')
    return "".join(chips) or "(none recorded)"


def windows(trace: Trace, drawn: list[int]) -> str:
    """Each window generate() decoded: where, in which language, its signals and its attempts;
    numbered from 1 as in the dashboard, linked to the window's figures where the page has them."""
    windows = trace.manifest.get("windows") or []
    if not windows:
        return ""
    drawn = set(drawn)
    rows = []
    for window in windows:
        signals = window.get("signals") or {}
        flags = ", ".join(flag for flag, on in (("skipped: no speech", window.get("skipped")),
                                                ("repetition loop", signals.get("looping"))) if on)
        shown = window["index"] + 1
        label = f'<a href="#window-{shown}">{shown}</a>' if window["index"] in drawn else str(shown)
        attempts = "".join(
            f'<li><b>attempt {a["attempt"]}</b> (T = {a["temperature"]:.1f}, {a["num_beams"]} beam(s)): '
            f'{esc(a["verdict"])} — {esc(a["reason"])}<br><q>{esc(a["text"][:200])}</q></li>'
            for a in window.get("attempts") or [])
        rows.append(f'<tr><td class="num">{label}</td>'
                    f'<td class="num">{window["start"]:.2f}–{window.get("next_seek", 0) / 100:.2f}</td>'
                    f'<td>{esc(window["language"])}</td><td class="num">{number(window["no_speech_probability"])}</td>'
                    f'<td class="num">{number(signals.get("avg_logprob"))}</td>'
                    f'<td class="num">{number(signals.get("compression_ratio"))}</td>'
                    f'<td>{esc(flags)}<ol start="0">{attempts}</ol></td></tr>')
    return ('<p class="hint">Whisper decodes 30 s at a time; each window starts where the text of the one '
            'before ended. A window is decoded again at a higher temperature when its text looks repetitive '
            'or unsure, and dropped when it holds no speech.</p>'
            '<table><tr><th>window</th><th>seconds used</th><th>language</th><th>no-speech p</th>'
            '<th>avg log-prob</th><th>compression</th><th>attempts</th></tr>' + "".join(rows) + "</table>")




def effect(trace: Trace, drawn: list[int]) -> str:
    """An intervened trace: what was changed, the clean trace it is measured against, the word
    diff between the two transcripts and the numbers (:mod:`probe.effect`)."""
    from probe.interventions import describe
    from probe.metrics import word_diff

    summary = trace.manifest.get("effect") or {}
    if not summary:
        return ""
    clean = summary.get("clean_transcript")
    headline = summary.get("headline", "wer")
    facts = [("intervention", describe(trace.manifest.get("interventions") or [])),
             ("clean trace", summary.get("clean")),
             (headline.upper() + " against the clean transcript", f"{summary.get(headline, 0):.1%}"),
             ("same tokens as clean", "yes" if summary.get("tokens_equal") else "no"),
             ("Δ log-prob of the clean transcript",
              f"{summary.get('delta_logprob_total', 0):+.2f} over {summary.get('tokens', 0)} tokens "
              f"(mean {summary.get('delta_logprob_mean', 0):+.3f})"),
             ("cross-attention change", f"{summary.get('cross_attention_change', 0):.3f} "
                                        "(mean Σ|Δ| over frames per token; 2 = nothing shared)")]
    rows = "".join(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in facts)
    diff = ""
    if clean is not None:
        diff = (f'<p class="hint">Clean → intervened, word by word:</p>'
                f'<div class="transcript">{diff_html(word_diff(clean, trace.transcript, trace.language))}</div>')
    return f"<table>{rows}</table>{diff}"
