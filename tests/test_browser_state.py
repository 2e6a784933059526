"""Window-dependent choices in a real browser: ``probe dashboard`` served for real (the fixtures of
:mod:`tests.test_browser`), headless Chromium picks a token of window 1 on the Cross-attention page
of the two-window trace, then window 2, and the page must show window 2's first token and words —
not the token picked before.  Screenshots go where :mod:`tests.test_browser` puts them."""

from __future__ import annotations

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from probe import figures
from probe.plugins.cross_attention.figures import cross_attention_rows, timed_words, token_word
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)
from tests.test_browser import check, dashboard_url, page, screenshots, settle, shows_text  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def choose(page, label: str, option: str) -> None:
    """Open the selectbox labelled ``label`` (again if a rerun swallowed the click), type ``option``
    to filter its list (long lists are drawn only in part) and click it."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True)).first
    name = " ".join(option.split())  # as HTML shows it
    for _ in range(3):
        box.click()
        try:
            page.get_by_role("option").first.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            settle(page)
    page.keyboard.type(name)
    page.get_by_role("option", name=name, exact=True).click()
    settle(page, after_input=True)


def word_timing(trace, window: int, index: int) -> str:
    """The caption's DTW timing of token ``index`` of ``window`` (a token of a word)."""
    _, tokens = cross_attention_rows(trace, None, None, window)
    word = token_word(trace, tokens, index, window)
    assert word is not None, (window, tokens[index])
    return f"places at {word['start']:.2f}–{word['end']:.2f} s"


def test_switching_the_window_resets_the_picked_token(dashboard_url, dashboard_store, page, screenshots):
    trace = dashboard_store.two_windows
    page.goto(f"{dashboard_url}/cross-attention?trace={trace.id}")
    settle(page)
    _, tokens = cross_attention_rows(trace, None, None, 0)
    labels = figures.token_labels(trace, [token["token_id"] for token in tokens])
    picked = 5
    shows_text(page, word_timing(trace, 0, 0), "cross-attention")
    choose(page, "Token", f"{tokens[picked]['step']}: {labels[picked]}")
    shows_text(page, word_timing(trace, 0, picked), "cross-attention, a token of window 1 picked")
    second = trace.manifest["windows"][1]
    choose(page, "Window", f"window 2: {second['start']:.1f}–{second['end']:.1f} s")
    shows_text(page, word_timing(trace, 1, 0), "cross-attention, window 2")  # its first token, not the one picked
    assert word_timing(trace, 0, picked) not in page.inner_text("body")
    shows_text(page, f"{len(timed_words(trace, 1))} words of window 2", "cross-attention, window 2")
    check(page, "cross-attention", screenshots, "cross-attention-window-2")
