"""token_probs in the lecture export: the transcript coloured by confidence (in place of the plain
one under the player), the language detection of each window, the token-by-token table, and the
``tokens`` and ``languages`` tables of the json/csv exports."""

from __future__ import annotations

from probe.export.markup import esc, number
from probe.figures import token_labels
from probe.plugins.token_probs.figures import MULTITASK, TOKENS, transcript_html


def transcript_section(trace, windows) -> str:
    return (f'<div class="transcript">{transcript_html(trace)}</div>'
            '<p class="hint">Colour shows how sure the model was of each token (red: unsure, '
            'green: sure); hover a token for its alternatives.</p>')


def language_rows(trace) -> list[dict]:
    """One row per (window, language), most probable first within each window."""
    multitask = trace.json(MULTITASK) if MULTITASK in trace.records else {}
    entries = multitask.get("windows", []) if isinstance(multitask, dict) else []
    return [{"window": window.get("window", index), "language": code, "probability": prob}
            for index, window in enumerate(entries)
            for code, prob in sorted(window.get("language_probs", {}).items(), key=lambda item: -item[1])]


def languages_section(trace, windows, top: int = 5) -> str:
    """The most probable languages: of the clip, or of each window of long audio."""
    by_window: dict[int, list[dict]] = {}
    for row in language_rows(trace):
        by_window.setdefault(row["window"], []).append(row)
    if not by_window:
        return ""
    if len(by_window) == 1:
        body = "".join(f'<tr><td>{esc(row["language"])}</td><td class="num">{number(row["probability"])}</td></tr>'
                       for row in next(iter(by_window.values()))[:top])
        return ('<p>At the first step the decoder gives every language token a probability; the most '
                f'likely one is forced into the prompt.</p><table><tr><th>language</th><th>p</th></tr>{body}</table>')
    body = "".join(
        f'<tr><td class="num">{window + 1}</td><td>'
        + ", ".join(f"{esc(row['language'])} {number(row['probability'])}" for row in rows[:3]) + "</td></tr>"
        for window, rows in sorted(by_window.items()))
    return ('<p>Each window detects its language again from its own audio: its three most probable '
            f'languages.</p><table><tr><th>window</th><th>top languages</th></tr>{body}</table>')


def tokens_section(trace, windows) -> str:
    rows = trace.table(TOKENS)
    if not rows:
        return ""
    by_window = len(trace.manifest.get("windows") or []) > 1  # steps count from 0 in each window
    labels = token_labels(trace, [row.get("token_id") for row in rows], [row.get("window", 0) for row in rows])
    body = "".join(
        (f'<tr><td class="num">{row.get("window", 0) + 1}</td>' if by_window else '<tr>')
        + f'<td class="num">{esc(str(row.get("step")))}</td>'
        f'<td><code>{esc(label)}</code></td>'
        f'<td class="num">{number(row.get("prob"))}</td>'
        f'<td class="num">{number(row.get("entropy"), 2)}</td>'
        f'<td>{_alternatives(row)}</td></tr>' for row, label in zip(rows, labels))
    return ('<table><tr>' + ('<th>window</th>' if by_window else '') + '<th>step</th>'
            '<th>token</th><th>p</th><th>entropy</th><th>top alternatives</th></tr>'
            f'{body}</table>')


def _alternatives(row: dict) -> str:
    pairs = zip(row.get("top_k_tokens") or [], row.get("top_k_probs") or [])
    return ", ".join(f"<code>{esc(repr(token)[1:-1])}</code> {number(prob, 2)}" for token, prob in pairs)


def token_table(trace) -> dict[str, list[dict]]:
    return {"tokens": trace.table(TOKENS)}


def language_table(trace) -> dict[str, list[dict]]:
    return {"languages": language_rows(trace)}
