"""Pictures of an intervention's effect on the clean transcript (:mod:`probe.effect`'s records):
how each clean token's log-probability moved, and how the alignment heads' cross-attention from
those tokens changed, window by window."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from probe.constants import ENCODER_FRAMES_PER_SECOND
from probe.errors import StoreError
from probe.figures.base import ATTENTION_CMAP, draws, imshow, new_figure, page, page_note, require, tick_tokens
from probe.figures.legible import MIN_FONT_PT

LOGPROBS = "effect.logprobs"
CROSS_ATTENTION = "effect.cross_attention"
TOKENS_SHOWN = 40  # tokens per page of the log-prob figure
HINT = "re-run the intervened trace with a clean trace of the clip in the store (probe run CLIP, then --intervene)"


def effect_rows(trace, window: int | None = None) -> list[dict]:
    """The ``effect.logprobs`` rows (of one clean window, numbered from 0, when given), with their
    row number in the table (``row``), which indexes ``effect.cross_attention``'s token axis."""
    require(trace, LOGPROBS, HINT)
    rows = [dict(row, row=i) for i, row in enumerate(trace.table(LOGPROBS))]
    if window is None:
        return rows
    chosen = [row for row in rows if row["window"] == window]
    if not chosen:
        found = sorted({row["window"] + 1 for row in rows})
        raise StoreError(f"trace {trace.id}'s effect has no tokens for window {window + 1}; it has windows "
                         f"{', '.join(map(str, found)) or '(none)'}")
    return chosen


def _subtitle(trace) -> str:
    effect = trace.manifest.get("effect") or {}
    if not effect:
        return ""
    rate = effect.get(effect.get("headline", "wer"), 0.0)
    return f" — {effect.get('headline', 'wer').upper()} {rate:.0%} against the clean transcript"


@draws
def effect_logprobs(trace, first: int = 0, count: int = TOKENS_SHOWN) -> Figure:
    """Each clean token's log-probability, as the model is and as intervened (teacher-forced on
    the clean transcript), and the change (bars: red where the intervention made it less likely)."""
    every_row = [row for row in effect_rows(trace) if row["in_transcript"]] or effect_rows(trace)
    shown = page(len(every_row), first, count)
    rows = every_row[shown.start:shown.stop]
    steps = np.arange(len(rows))
    clean = np.array([row["clean"] for row in rows], dtype=np.float32)  # [token]
    changed = np.array([row["intervened"] for row in rows], dtype=np.float32)  # [token]
    delta = changed - clean  # [token]
    fig = new_figure(max(8, 0.35 * len(rows) + 3), 6.5)
    ax_lp, ax_delta = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
    ax_lp.plot(steps, clean, color="0.2", marker="o", markersize=3, linewidth=1, label="clean")
    ax_lp.plot(steps, changed, color="tab:purple", marker="s", markersize=3, linewidth=1, label="intervened")
    ax_lp.set_ylabel("log p(clean token)")
    ax_lp.legend(loc="lower left", fontsize=MIN_FONT_PT)
    ax_lp.set_title("Log-probability of each clean token (teacher-forced)", fontsize=10)
    limit = max(1e-3, float(np.abs(delta).max(initial=0)))
    norm = colors.TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    ax_delta.bar(steps, delta, color=[_delta_color(norm(d)) for d in delta], edgecolor="0.3", linewidth=0.4)
    ax_delta.axhline(0, color="0.3", linewidth=0.6)
    ax_delta.set_ylabel("Δ log-prob (intervened − clean)")
    ax_delta.set_xlabel("clean token")
    tick_tokens(ax_delta, [row.get("text", "") for row in rows], "x")
    fig.suptitle(f"Effect of the intervention{_subtitle(trace)}{page_note(shown, len(every_row))}")
    return fig


def _delta_color(value: float):
    from matplotlib import colormaps

    return colormaps["RdBu"](value)


@draws
def effect_cross_attention(trace, window: int = 0, first: int = 0, count: int = TOKENS_SHOWN) -> Figure:
    """Cross-attention of the alignment heads (mean) from each clean token to the window's audio,
    clean and intervened, and the difference (red: more attention after the intervention)."""
    require(trace, CROSS_ATTENTION, HINT)
    rows = effect_rows(trace, window)
    shown = page(len(rows), first, count)
    rows = rows[shown.start:shown.stop]
    weights = trace.tensor(CROSS_ATTENTION)  # [arm, token, frame]
    entries = {w["index"]: w for w in ((trace.manifest.get("effect") or {}).get("windows") or [])}
    clean_window = entries.get(window) or {}  # where the clean window starts, how many frames hold audio
    frames = int(clean_window.get("n_frames") or weights.shape[-1])
    start = float(clean_window.get("start") or 0.0)
    picked = np.asarray(weights[:, [row["row"] for row in rows], :frames], dtype=np.float32)  # [arm, token, frame]
    difference = picked[1] - picked[0]  # [token, frame]
    extent = (start, start + frames / ENCODER_FRAMES_PER_SECOND, -0.5, len(rows) - 0.5)
    fig = new_figure(11, max(6.0, 0.16 * len(rows) * 3 + 2.5))
    axes = fig.subplots(3, 1, sharex=True)
    top = float(picked.max(initial=1e-6))
    for ax, image, title in zip(axes[:2], picked, ("clean", "intervened")):
        shown_image = imshow(ax, image, extent, ATTENTION_CMAP, norm=colors.Normalize(0, top))
        ax.set_title(f"Cross-attention, {title}", fontsize=10)
    fig.colorbar(shown_image, ax=list(axes[:2]), label="attention weight", shrink=0.8)
    limit = max(1e-6, float(np.abs(difference).max(initial=0)))
    diff_image = imshow(axes[2], difference, extent, "RdBu_r", norm=colors.TwoSlopeNorm(0.0, -limit, limit))
    axes[2].set_title("Intervened − clean", fontsize=10)
    fig.colorbar(diff_image, ax=axes[2], label="Δ weight", shrink=0.8)
    for item in trace.manifest.get("interventions") or []:
        if item.get("kind") == "block":  # the seconds the decoder could not hear
            for ax in axes:
                ax.axvspan(max(item["start"], extent[0]), min(item["end"], extent[1]), fill=False,
                           edgecolor="0.75", hatch="//", linewidth=0.8, label="blocked span")
    labels = [row.get("text", "") for row in rows]
    for ax in axes:
        ax.set_ylabel("clean token")
        tick_tokens(ax, labels, "y")
    axes[2].set_xlabel("time in the clip (s)")
    fig.suptitle(f"Window {window + 1}: where the clean tokens listen{page_note(shown, len(effect_rows(trace, window)))}")
    return fig
