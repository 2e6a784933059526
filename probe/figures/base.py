"""What every figure shares: building a figure without pyplot, fonts for any script, reading a
record safely, token labels, paging and pooling, and writing a figure out.

Plugins build their figures with these (:func:`new_figure`, :func:`draws`, :func:`require`, ...),
as the built-ins do.  Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probe.constants import N_TIMESTAMP_TOKENS, TIMESTAMP_SECONDS
from probe.errors import StoreError

MAX_COLUMNS = 1500  # widest image drawn; wider arrays are mean-pooled along time
TOKENS_PER_PAGE = 40  # token-by-token figures show this many tokens at a time
PROBABILITY_CMAP = "RdYlGn"
ATTENTION_CMAP = "magma"
_CJK_FALLBACKS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Noto Sans Thai",
                  "Noto Sans")



@functools.cache
def font_families() -> list[str]:
    """DejaVu Sans, then whichever installed fonts cover scripts it lacks (CJK, Thai)."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [name for name in _CJK_FALLBACKS if name in installed]


def draws(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure with fonts that fall back to other scripts (token texts can be any)."""

    @functools.wraps(function)
    def draw(*args, **kwargs) -> Figure:
        with matplotlib.rc_context({"font.family": font_families()}):
            return function(*args, **kwargs)

    return draw


@contextlib.contextmanager
def quiet_missing_glyphs():
    # A token in a script no installed font covers is drawn as boxes; one warning per glyph
    # would only flood the log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        yield


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def require(trace, name: str, hint: str | None = None) -> None:
    """Raise a one-line :class:`StoreError` if ``trace`` lacks record ``name``; ``hint`` says how
    to get it (default: re-run with the plugin the name starts with)."""
    if name not in trace.records:
        plugin = name.partition(".")[0]
        hint = hint or f"re-run the trace with the {plugin} plugin enabled"
        raise StoreError(f"trace {trace.id} has no record {name!r} (made by the {plugin} plugin); {hint}")


def config_value(trace, key: str, default: int) -> int:
    config = (trace.manifest.get("model") or {}).get("config") or {}
    return int(config.get(key) or default)


def pool_columns(array: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """Mean-pool the last axis by a whole factor until it has at most ``max_columns`` columns;
    returns (pooled, factor)."""
    factor = max(1, math.ceil(array.shape[-1] / max_columns))
    if factor == 1:
        return array, 1
    pad = (-array.shape[-1]) % factor
    padded = np.pad(array.astype(np.float32), [(0, 0)] * (array.ndim - 1) + [(0, pad)], mode="edge")
    return padded.reshape(*array.shape[:-1], -1, factor).mean(-1), factor


def vocabulary(trace) -> dict[int, str]:
    """Token id → text for every token the trace has decoded text for: each window's prompt and
    emitted tokens (the manifest's ``token_texts``), and the id/text columns of any table a plugin
    describes with ``token_columns`` (``probe_describe_records``), such as top-k alternatives.
    The store keeps no tokenizer, so other ids stay unknown."""
    from probe.contributions import current

    vocab: dict[int, str] = {}
    for window in trace.manifest.get("windows") or []:
        vocab.update(zip(window.get("prompt") or [], window.get("prompt_tokens") or []))
        vocab.update(zip(window.get("tokens") or [], window.get("token_texts") or []))
    described = current()
    for name, entry in trace.records.items():
        pairs = described.describe(name, entry).get("token_columns") if entry.get("kind") == "table" else None
        if not pairs:
            continue
        for row in trace.table(name):
            for ids, texts in pairs:
                value = row.get(ids)
                if isinstance(value, (list, tuple)):
                    vocab.update(zip(value, row.get(texts) or []))
                elif value is not None:
                    vocab[int(value)] = row.get(texts)
    return vocab


def token_label(trace, vocab: dict[int, str], token_id: int) -> str:
    """A short, visible label for a token: timestamps as ``<|1.20|>``, unknown ids as ``#id``."""
    first_timestamp = config_value(trace, "vocab_size", 51865) - N_TIMESTAMP_TOKENS
    if token_id >= first_timestamp:
        return f"<|{(token_id - first_timestamp) * TIMESTAMP_SECONDS:.2f}|>"
    text = vocab.get(int(token_id))
    if text is None:
        return f"#{token_id}"
    return text.strip() or "␣"


def imshow(ax, image: np.ndarray, extent, cmap: str, norm=None, **kwargs):
    return ax.imshow(image, aspect="auto", origin="lower", extent=extent, cmap=cmap, norm=norm,
                     interpolation="nearest", **kwargs)


def grid_shape(n: int) -> tuple[int, int]:
    columns = min(n, 4 if n <= 8 else 5)
    return math.ceil(n / columns), columns


def tick_tokens(ax, labels: list[str], axis: str, max_labels: int = 60) -> None:
    """Token labels on an axis whose cells are centred on 0, 1, ...; thinned past ``max_labels``."""
    step = max(1, math.ceil(len(labels) / max_labels))
    positions = list(range(0, len(labels), step))
    shown = [labels[i] for i in positions]
    if axis == "x":
        ax.set_xticks(positions, shown, rotation=90, fontsize=7)
    else:
        ax.set_yticks(positions, shown, fontsize=7)


def page(n: int, first: int, count: int) -> range:
    first = min(max(0, first), max(0, n - 1))
    return range(first, min(n, first + count))


def page_note(shown: range, total: int) -> str:
    if len(shown) == total:
        return ""
    return f" (tokens {shown.start + 1}–{shown.stop} of {total})"


def head_grid(fig: Figure, heads: list[int], draw: Callable, title: str, colorbar_label: str,
               xlabel: str, ylabel: str):
    """One panel per head (``draw(ax, head)`` returns its image), outer axes labelled, one colour bar."""
    rows, columns = grid_shape(len(heads))
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    image = None
    for index, ax in enumerate(axes.flat):
        if index >= len(heads):
            ax.set_visible(False)
            continue
        image = draw(ax, heads[index])
        ax.set_title(f"head {heads[index]}", fontsize=9)
        if index % columns == 0:
            ax.set_ylabel(ylabel)
        if index >= len(heads) - columns:
            ax.set_xlabel(xlabel)
    fig.suptitle(title)
    fig.colorbar(image, ax=[ax for ax in axes.flat if ax.get_visible()], label=colorbar_label, shrink=0.8)
    return axes


def heads_of(n_heads: int, head: int | None) -> list[int]:
    if head is None:
        return list(range(n_heads))
    if not 0 <= head < n_heads:
        raise StoreError(f"head {head} does not exist; the model has heads 0–{n_heads - 1}")
    return [head]


def layer_index(trace, name: str, layer: int) -> int:
    """``layer`` (negative counts from the end) checked against record ``name``'s first axis."""
    require(trace, name)
    n_layers = trace.records[name]["shape"][0]
    if not -n_layers <= layer < n_layers:
        raise StoreError(f"layer {layer} does not exist; record {name} has layers 0–{n_layers - 1}")
    return layer % n_layers


def layer_slice(trace, name: str, layer: int) -> tuple[int, np.ndarray]:
    """(layer index, that layer of a [layer, ...] tensor record), read without loading the others."""
    index = layer_index(trace, name, layer)
    return index, np.asarray(trace.tensor(name, lazy=True)[index], dtype=np.float32)


def middle_layer(trace, key: str) -> int:
    return config_value(trace, key, 2) // 2


def save(fig: Figure, path: str | Path, dpi: int = 200) -> Path:
    """Write ``fig`` to ``path``; the format follows the suffix (png, svg, pdf)."""
    path = Path(path)
    with quiet_missing_glyphs():
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes, for screens (the dashboard) rather than print."""
    buffer = io.BytesIO()
    with quiet_missing_glyphs():
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
