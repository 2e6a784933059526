"""What every figure shares: building a figure without pyplot, fonts for any script, reading a
record safely, token labels, paging and pooling, and writing a figure out.

Plugins build their figures with these (:func:`new_figure`, :func:`draws`, :func:`require`, ...),
as the built-ins do.  Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Callable

import matplotlib
import matplotlib.axis
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import NullFormatter, NullLocator

from probe.constants import N_TIMESTAMP_TOKENS, TIMESTAMP_SECONDS
from probe.errors import StoreError
from probe.figures.legible import MIN_FONT_PT, PRINT_DPI, SCREEN_DPI, SOLVED, TICKS, bounded_size, settle, thin_ticks
from probe.tokens import describe, groups, labels, piece_text, read_bytes_map

MAX_COLUMNS = 1500  # widest image drawn; wider arrays are mean-pooled along time
FIXED = "_probe_layout_fixed"  # figure attribute: laid out once and kept (fix_layout)
PDF_COMPRESS_LEVEL = 1  # zlib, PDF streams: 2 % larger than matplotlib's 6, a tenth quicker to save
PNG_COMPRESS_LEVEL = 3  # zlib: as small as the default 6 within 10 %, and quicker to write
TOKENS_PER_PAGE = 20  # token-by-token figures show this many tokens at a time (cell text ≥ MIN_FONT_PT fits)
PROBABILITY_CMAP = "RdYlGn"
ATTENTION_CMAP = "magma"
# Per script, the fonts that cover what DejaVu Sans lacks, best first; scripts/setup.sh installs the
# first of each (Debian: fonts-noto-cjk, fonts-noto-core, fonts-symbola).  One font per script is
# enough: matplotlib falls back glyph by glyph along the list, and libraqm shapes Arabic (joined,
# right to left) and Devanagari.  Symbola has monochrome emoji outlines; colour emoji fonts (CBDT)
# are bitmaps Agg cannot draw.
_SCRIPT_FALLBACKS = (
    ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei"),  # Han, kana, Hangul
    ("Noto Sans Arabic", "Noto Naskh Arabic"),
    ("Noto Sans Devanagari",),
    ("Noto Sans Thai",),
    ("Symbola",),  # emoji
    ("Noto Sans",),  # Latin, Greek and Cyrillic letters DejaVu lacks
)


@functools.cache
def font_families() -> list[str]:
    """DejaVu Sans, then for each script it lacks (CJK, Arabic, Devanagari, Thai, emoji) the
    first installed font that covers it."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    found = [next((name for name in names if name in installed), None) for names in _SCRIPT_FALLBACKS]
    return ["DejaVu Sans"] + [name for name in found if name]


class _FallbackWeights:
    """A filter for matplotlib's font log: a fallback font without a bold face (Symbola, WenQuanYi)
    draws its few glyphs in bold text at its regular weight, as intended, without a warning for
    every text that asks for bold."""

    def filter(self, record) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("findfont: Failed to find font weight") and len(args) > 1
                    and any(args[1] in names for names in _SCRIPT_FALLBACKS))


logging.getLogger("matplotlib.font_manager").addFilter(_FallbackWeights())


@functools.cache
def _charmap(family: str) -> frozenset[int]:
    """The code points font ``family`` has glyphs for (empty if it is not installed)."""
    try:
        path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        return frozenset(font_manager.get_font(path).get_charmap())
    except (ValueError, OSError, RuntimeError):
        return frozenset()


def families_for(text: str) -> list[str]:
    """DejaVu Sans and, in :func:`font_families` order, only the fallback fonts that ``text``'s
    characters need.  Every family in the list costs a font lookup per drawn text, so an English
    trace draws with DejaVu Sans alone; characters no installed font has are left to fall back
    (and draw as boxes) as with the full list."""
    families = font_families()
    missing = {ord(char) for char in set(text) if not char.isspace()} - _charmap(families[0])
    chosen = [families[0]]
    for family in families[1:]:
        if not missing:
            break
        covered = missing & _charmap(family)
        if covered:
            chosen.append(family)
            missing -= covered
    return chosen


def fit_fonts(fig: Figure) -> Figure:
    """Give every text of ``fig`` drawn in the default fallback fonts (:func:`font_families`) only
    those its texts need (:func:`families_for`): an English figure draws in DejaVu Sans alone,
    whatever scripts the trace's other figures hold.  Texts a figure set its own font for keep it;
    tick labels made later copy the first tick's font."""
    every = font_families()
    texts = [text for text in fig.findobj(Text) if text.get_fontfamily() == every]
    families = families_for("".join(text.get_text() for text in texts))
    if families != every:
        for text in texts:
            text.set_fontfamily(families)
    return fig


def draws(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure with fonts that fall back to other scripts (token texts can be any), keep
    only the fonts its texts need (:func:`fit_fonts`), then settle its crowded labels against the
    drawn layout (:func:`probe.figures.legible.settle`)."""

    @functools.wraps(function)
    def draw(*args, **kwargs) -> Figure:
        with matplotlib.rc_context({"font.family": font_families()}):
            fig = function(*args, **kwargs)
            for finish in (_nearest_from_data, _inner_ticks_off, _titles_above, fit_fonts, settle):
                fig = finish(fig)
            return fig

    return draw


def _nearest_from_data(fig: Figure) -> Figure:
    """Heatmaps drawn cell by cell (``interpolation="nearest"``) are resampled as data and coloured
    after: the same pixels as colouring every cell first (each pixel shows one cell either way),
    for a quarter of the resampling (one channel, not four)."""
    for ax in fig.axes:
        for image in ax.get_images():
            if image.get_interpolation() == "nearest" and image.get_interpolation_stage() == "auto":
                image.set_interpolation_stage("data")
    return fig


def _inner_ticks_off(fig: Figure) -> Figure:
    """An axis that shares its limits with a neighbour and shows no tick labels (an inner panel of
    a grid, the upper panels of a stack) draws no ticks either: its neighbour labels the shared
    scale.  Each tick is a handful of artists laid out and drawn on every save, most of what a
    grid of panels costs.  Such an axis gets a ticker of its own that places none (its limits stay
    shared); one with grid lines keeps its ticks, which draw them."""
    for ax in fig.axes:
        for axis, shared, sides in ((ax.xaxis, ax.get_shared_x_axes(), ("labelbottom", "labeltop")),
                                    (ax.yaxis, ax.get_shared_y_axes(), ("labelleft", "labelright"))):
            params = axis.get_tick_params()
            if len(shared.get_siblings(ax)) < 2 or params.get("gridOn") or any(params.get(side) for side in sides):
                continue
            axis.major, axis.minor = _no_ticks(), _no_ticks()
            with contextlib.suppress(AttributeError):
                delattr(axis, TICKS)  # nothing for settle() to thin
    return fig


def _no_ticks() -> matplotlib.axis.Ticker:
    ticker = matplotlib.axis.Ticker()
    ticker.locator, ticker.formatter = NullLocator(), NullFormatter()
    return ticker


def _titles_above(fig: Figure) -> Figure:
    """Titles of axes whose x tick labels and label sit at the bottom stay where they are put (just
    above the axes).  Matplotlib otherwise checks, at every layout pass and every save, whether
    tick labels on top would hit each title, measuring every sibling's y axis to find out: a
    large part of what laying out a grid of titled panels costs, to move nothing."""
    for ax in fig.axes:
        ticks = ax.xaxis.get_tick_params()
        if ax.get_title() and not ticks.get("labeltop") and ax.xaxis.get_label_position() == "bottom" \
                and not ax.child_axes:
            ax._autotitlepos = False  # what set_title(y=...) sets; harmless if matplotlib drops it
    return fig


def fix_layout(fig: Figure) -> Figure:
    """Solve ``fig``'s constrained layout once (unless :func:`~probe.figures.legible.settle` just
    did, drawing its final labels) and keep those positions: every later save only draws.

    A constrained figure is otherwise laid out again on every save, twice over (matplotlib draws
    it once without rendering to solve the layout, then solves it again as it renders), which is
    most of what saving a figure with many labels costs; the layout engine is run here on its
    own, without the drawing around it.  The positions are figure fractions and
    points, so they hold at any dpi.  For figures that are finished (exports, the dashboard's
    PNGs); one a user goes on adding to keeps its layout engine."""
    engine = fig.get_layout_engine()
    if engine is None:
        return fig
    if type(engine).__name__ == "ConstrainedLayoutEngine" and not getattr(fig, SOLVED, False):
        engine.execute(fig)  # what drawing does first; the positions come out the same, pixel for pixel
    # set_layout_engine("none") would leave a placeholder engine (colour bars made under a layout
    # keep one), and any engine makes every save draw the figure twice; this figure needs none.
    fig._layout_engine = None
    setattr(fig, FIXED, True)
    return fig


def save_options(fig: Figure, fmt: str) -> dict:
    """``savefig`` keywords for a finished figure: a figure laid out by its engine
    (:func:`fix_layout`) is saved as it stands, one drawing; any other (a plugin's figure built
    without :func:`new_figure`) with ``bbox_inches="tight"`` so nothing outside it is cut.  PNGs
    are compressed at :data:`PNG_COMPRESS_LEVEL`."""
    options: dict = {} if getattr(fig, FIXED, False) else {"bbox_inches": "tight"}
    if fmt == "png":
        options["pil_kwargs"] = {"compress_level": PNG_COMPRESS_LEVEL}
    return options


@contextlib.contextmanager
def quiet_missing_glyphs():
    # A token in a script no installed font covers is drawn as boxes; one warning per glyph
    # would only flood the log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        yield


def new_figure(width: float, height: float) -> Figure:
    """An Agg figure of ``width`` × ``height`` inches, bounded to what a screen and a page hold
    (:func:`probe.figures.legible.bounded_size`), with constrained layout."""
    fig = Figure(figsize=bounded_size(width, height), layout="constrained")
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


def token_bytes(trace) -> dict[int, bytes]:
    """Token id → raw bytes of every token a window of the trace names (its prompt, emitted and
    rejected tokens: each window's ``token_bytes`` in the manifest).  Empty for traces written
    before they were kept; labels then fall back to the stored texts."""
    found: dict[int, bytes] = {}
    for window in trace.manifest.get("windows") or []:
        found.update(read_bytes_map(window.get("token_bytes")))
    return found


def vocabulary(trace) -> dict[int, str]:
    """Token id → the text of that token on its own, for every token the trace has text for: each
    window's prompt and emitted tokens (from their bytes: part of a character shows as
    ``‹e4 b8›``, see :func:`probe.tokens.piece_text`), and the id/text columns of any table a
    plugin describes with ``token_columns`` (``probe_describe_records``), such as top-k
    alternatives.  The store keeps no tokenizer, so other ids stay unknown.  Label a sequence
    with :func:`token_labels`, which joins split characters."""
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
    vocab.update({token_id: piece_text(raw) for token_id, raw in token_bytes(trace).items()})
    return vocab


def token_label(trace, vocab: dict[int, str], token_id: int) -> str:
    """A short, visible label for one token on its own (a top-k alternative): timestamps as
    ``<|1.20|>``, unknown ids as ``#id``.  Tokens of a sequence: :func:`token_labels`."""
    first_timestamp = config_value(trace, "vocab_size", 51865) - N_TIMESTAMP_TOKENS
    if token_id >= first_timestamp:
        return f"<|{(token_id - first_timestamp) * TIMESTAMP_SECONDS:.2f}|>"
    text = vocab.get(int(token_id))
    if text is None:
        return f"#{token_id}"
    return text.strip() or "␣"


def _pieces(trace, vocab: dict[int, str], ids) -> list[bytes]:
    raw = token_bytes(trace)
    first_timestamp = config_value(trace, "vocab_size", 51865) - N_TIMESTAMP_TOKENS
    return [raw[int(t)] if int(t) in raw and int(t) < first_timestamp
            else token_label(trace, vocab, int(t)).encode("utf-8") for t in ids]


def _runs(ids: list[int], windows) -> list[range]:
    """Index ranges of ``ids`` within one window (characters are never joined across windows)."""
    windows = list(windows) if windows is not None else [0] * len(ids)
    bounds = [i for i in range(1, len(ids)) if windows[i] != windows[i - 1]]
    return [range(a, b) for a, b in zip([0, *bounds], [*bounds, len(ids)])]


def token_labels(trace, ids, windows=None, vocab: dict[int, str] | None = None) -> list[str]:
    """One label per token of a sequence, split characters joined (``迷¹/₂ 迷²/₂``, see
    :func:`probe.tokens.labels`); ``windows`` (one per id) keeps windows apart.  Label the whole
    sequence, then take a page of it, so a character split at a page edge still reads right."""
    ids = [int(t) for t in ids]
    vocab = vocabulary(trace) if vocab is None else vocab
    pieces = _pieces(trace, vocab, ids)
    out: list[str] = []
    for run in _runs(ids, windows):
        out += [label.strip() or "␣" for label in labels([pieces[i] for i in run])]
    return out


def token_groups(trace, ids, windows=None, vocab: dict[int, str] | None = None) -> list[dict]:
    """A sequence as the characters its tokens spell, for running text (a transcript): one
    ``{"start", "stop", "text", "pieces"}`` per group of tokens ``start`` … ``stop - 1``, with
    ``pieces`` naming them for a hover (``‹e8 bf› + ‹b7›``)."""
    ids = [int(t) for t in ids]
    vocab = vocabulary(trace) if vocab is None else vocab
    pieces = _pieces(trace, vocab, ids)
    found = []
    for run in _runs(ids, windows):
        for group in groups([pieces[i] for i in run]):
            start, stop = run.start + group.start, run.start + group.stop
            found.append({"start": start, "stop": stop, "text": group.text,
                          "pieces": describe(pieces[start:stop])})
    return found


def imshow(ax, image: np.ndarray, extent, cmap: str, norm=None, **kwargs):
    return ax.imshow(image, aspect="auto", origin="lower", extent=extent, cmap=cmap, norm=norm,
                     interpolation="nearest", **kwargs)


def grid_shape(n: int) -> tuple[int, int]:
    columns = min(n, 4 if n <= 8 else 5)
    return math.ceil(n / columns), columns


def tick_tokens(ax, labels: list[str], axis: str, max_labels: int | None = None, first: int = 0) -> None:
    """Token labels on an axis whose cells are centred on ``first``, ``first + 1``, ...; every
    n-th one where they would overlap (:func:`probe.figures.legible.thin_ticks`) or past
    ``max_labels``, at least :data:`~probe.figures.legible.MIN_FONT_PT`; x labels lie flat where
    they fit, else upright."""
    thin_ticks(ax, range(first, first + len(labels)), labels, axis, max_labels=max_labels)


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
        ax.set_title(f"head {heads[index]}", fontsize=max(9, MIN_FONT_PT))
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


def figure_file(fig: Figure, fmt: str, dpi: int) -> bytes:
    """``fig`` as a ``fmt`` file (png, svg, pdf) at ``dpi``, laid out once for this and every later
    save (:func:`fix_layout`); every figure whisper-probe writes is saved through here."""
    buffer = io.BytesIO()
    fix_layout(fig)
    with quiet_missing_glyphs(), matplotlib.rc_context({"pdf.compression": PDF_COMPRESS_LEVEL}):
        fig.savefig(buffer, format=fmt, dpi=dpi, **save_options(fig, fmt))
    return buffer.getvalue()


def save(fig: Figure, path: str | Path, dpi: int = PRINT_DPI) -> Path:
    """Write ``fig`` to ``path``; the format follows the suffix (png, svg, pdf)."""
    path = Path(path)
    path.write_bytes(figure_file(fig, path.suffix.lstrip(".").lower(), dpi))
    return path


def png_bytes(fig: Figure, dpi: int = SCREEN_DPI) -> bytes:
    """``fig`` as PNG bytes, for screens (the dashboard) rather than print."""
    return figure_file(fig, "png", dpi)
