"""Token texts in every script: byte-level BPE pieces grouped back into the characters they spell
(probe.tokens), labels that never show "�", and figures that find a font for every glyph without
a warning (probe.figures.font_families)."""

from __future__ import annotations

import io
import logging
import re
import warnings

import numpy as np
import pytest

from probe import figures, tokens
from tests import dashboard_fixtures

TEXTS = {
    "Mandarin": "对,这就是我万人迷的太以真人。",
    "Japanese": "こんにちは、世界。カタカナと漢字",
    "Korean": "안녕하세요 세계",
    "Arabic": "مرحبا بالعالم",
    "Hindi": "नमस्ते दुनिया",
    "emoji": "Hello 😀👍🏽 🇫🇷",
}


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny.processor.tokenizer


_PART = re.compile("(.)([¹²³⁰⁴-⁹]+)/[₀-₉]+")


def _pieces(tokenizer, text: str) -> tuple[list[int], list[bytes]]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    found = tokens.token_bytes(tokenizer, ids)
    return ids, [found[i] for i in ids]


@pytest.mark.parametrize("script", sorted(TEXTS))
def test_pieces_group_back_into_the_text(tokenizer, script):
    text = TEXTS[script]
    ids, pieces = _pieces(tokenizer, text)
    assert b"".join(pieces) == text.encode("utf-8")
    found = tokens.groups(pieces)
    assert "".join(group.text for group in found) == text
    assert all(group.valid for group in found)
    labels = tokens.labels(pieces)
    assert len(labels) == len(ids) and "\ufffd" not in "".join(labels)
    # the labels spell the text: a split character kept at its first part, dropped at the others
    first_parts = [_PART.sub(lambda m: m.group(1) if m.group(2) == "¹" else "", label) for label in labels]
    assert "".join(first_parts) == text
    if script in ("Mandarin", "Hindi", "emoji"):  # these do split characters over tokens
        assert any(_PART.search(label) for label in labels)


def test_split_characters_are_marked_and_isolated_pieces_show_their_bytes(tokenizer):
    ids, pieces = _pieces(tokenizer, "迷")  # one character, two tokens in Whisper's vocabulary
    assert len(ids) == 2 and "\ufffd" in tokenizer.decode([ids[0]])  # what the captures used to store
    assert tokens.labels(pieces) == ["迷¹/₂", "迷²/₂"]
    assert tokens.piece_texts(tokenizer, ids) == ["‹e8 bf›", "‹b7›"]
    assert tokens.describe(pieces) == "‹e8 bf› + ‹b7›"
    # a piece no neighbour completes stays itself, shown as bytes; the rest still groups
    assert [g.text for g in tokens.groups([pieces[0], b"<|endoftext|>"])] == ["‹e8 bf›", "<|endoftext|>"]
    # a piece may end one character and start the next
    raw = "万人".encode()
    assert tokens.labels([raw[:2], raw[2:4], raw[4:]]) == ["万¹/₂", "万²/₂人¹/₂", "人²/₂"]
    special = tokenizer.convert_tokens_to_ids("<|zh|>")
    assert tokens.token_bytes(tokenizer, [special]) == {special: b"<|zh|>"}


def test_bytes_map_round_trips_and_skips_bad_entries(tokenizer):
    ids, pieces = _pieces(tokenizer, TEXTS["Mandarin"])
    stored = tokens.bytes_map(tokenizer, ids)
    assert tokens.read_bytes_map({**stored, "x": "zz", "5": None}) == dict(zip(ids, pieces))


def _font_problems(caplog, draw) -> list[str]:
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, "matplotlib.font_manager"):
        warnings.simplefilter("always")
        draw()
    return [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_script_has_a_font_and_bold_text_warns_nothing(tokenizer, caplog):
    families = figures.base.font_families()
    for needed in ("Noto Sans CJK SC", "Noto Sans Arabic", "Noto Sans Devanagari", "Symbola"):
        assert needed in families, f"{needed} is not installed: run scripts/setup.sh"
    labels = [label for text in TEXTS.values() for label in tokens.labels(_pieces(tokenizer, text)[1])]

    @figures.draws
    def draw():
        fig = figures.new_figure(12, 3)
        ax = fig.add_subplot()
        ax.imshow(np.zeros((2, len(labels))), aspect="auto")
        figures.tick_tokens(ax, labels, "x")
        ax.text(0, 0, " ".join(TEXTS.values()), fontweight="bold")
        fig.suptitle("Token probabilities " + TEXTS["Mandarin"], fontweight="bold")
        return fig

    fig = draw()
    assert _font_problems(caplog, lambda: fig.savefig(io.BytesIO(), format="png")) == []


@pytest.fixture(scope="module")
def mixed_trace(tiny, tmp_path_factory):
    """The tiny model forced through a prefix in several scripts (split characters in the prompt)."""
    import probe
    from probe.store import Store

    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return probe.run(tone, model=tiny, store=Store(tmp_path_factory.mktemp("scripts") / "store"), name="mixed",
                     language="zh", prefix="迷人的नमस्ते😀", max_new_tokens=3)


def test_a_trace_keeps_token_bytes_and_every_display_joins_them(mixed_trace, caplog):
    from probe.export.markup import prompt_tokens
    from probe.export.sections import _window_prompt

    window = mixed_trace.manifest["windows"][0]
    assert set(window["token_bytes"]) >= {str(t) for t in window["prompt"] + window["tokens"]}
    labels = figures.token_labels(mixed_trace, figures.window_sequence(mixed_trace, 0))
    assert "迷¹/₂" in labels and "迷²/₂" in labels and "\ufffd" not in "".join(labels)
    chips = [entry["token"] for entry in prompt_tokens(mixed_trace)]
    assert chips[:2] == ["<|startoftranscript|>", "<|zh|>"] and "迷¹/₂" in chips
    assert "\ufffd" not in _window_prompt(window)
    vocab = figures.vocabulary(mixed_trace)
    assert "\ufffd" not in "".join(str(text) for text in vocab.values())
    for name in ("decoder_attention", "token_probs", "logit_lens", "cross_attention"):
        fig = figures.figure(name)(mixed_trace)
        shown = [t.get_text() for ax in fig.axes for t in [*ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts]]
        assert "\ufffd" not in "".join(shown), name
        assert _font_problems(caplog, lambda: figures.png_bytes(fig)) == [], name


def test_old_traces_without_token_bytes_label_as_before(mixed_trace):
    manifest = {**mixed_trace.manifest,
                "windows": [{k: v for k, v in w.items() if k != "token_bytes"} for w in mixed_trace.manifest["windows"]]}

    class Old:
        def __init__(self, trace):
            self.manifest, self.records, self.id = manifest, {}, trace.id

    old = Old(mixed_trace)
    window = manifest["windows"][0]
    assert figures.token_bytes(old) == {}
    assert figures.token_labels(old, window["prompt"])[:2] == ["<|startoftranscript|>", "<|zh|>"]
    assert figures.token_labels(old, [5]) == ["#5"]


@pytest.fixture(scope="session")
def mandarin_trace(base, tmp_path_factory):
    """The dashboard store's Mandarin transcription (the store is built once per session)."""
    return dashboard_fixtures.build_dashboard_store(base, tmp_path_factory.getbasetemp() / "dashboard").transcribe


@pytest.mark.integration
def test_the_mandarin_trace_shows_no_replacement_character(mandarin_trace):
    from probe.plugins.token_probs.export import tokens_section
    from probe.plugins.token_probs.figures import transcript_html

    trace = mandarin_trace
    rows = trace.table("token_probs.tokens")
    labels = figures.token_labels(trace, [r["token_id"] for r in rows], [r["window"] for r in rows])
    assert any(_PART.search(label) for label in labels)  # 语 and 识 are two tokens each here
    shown = [*labels, transcript_html(trace), tokens_section(trace, [0]),
             *(str(t) for r in rows for t in r["top_k_tokens"]), *(str(r["token"]) for r in rows)]
    assert "\ufffd" not in "".join(shown)
    text = "".join(g["text"] for g in figures.token_groups(trace, [r["token_id"] for r in rows if r["kind"] == "text"]))
    assert "".join(text.split()) == "".join(trace.transcript.split())  # decode() may tidy spaces
