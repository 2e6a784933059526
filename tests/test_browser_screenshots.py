"""Screenshots of every view, taken in a real browser, for the traces a lecturer worries about:
a Mandarin trace (characters split over byte-level tokens) and a two-window trace.

``probe dashboard`` is served for real (the fixtures of :mod:`tests.test_browser`) and headless
Chromium opens every page the sidebar lists for each trace.  Every page must render without an
exception and show no U+FFFD (a split character drawn as "�"); the Mandarin transcript must read
as the trace's text; every Lesson step of the Mandarin trace is shot; on the two-window trace,
each page with a window picker is shot again at window 2, and its figures must change (each
window shows its own content: its figures or its text change).  The Mandarin trace's HTML export is shot too.  The PNGs go to
``$PROBE_SCREENSHOTS`` (or a temporary folder) to be looked at by eye.
"""

from __future__ import annotations

import pytest

from probe import figures
from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)
from tests.test_browser import check, dashboard_url, page, screenshots, settle, shows_text  # noqa: F401  (fixtures)
from tests.test_browser_state import choose

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REPLACEMENT = "\ufffd"


def listed_views(page, url: str, trace_id: str) -> list[str]:
    """The url paths of the pages the sidebar lists for a trace ("" for the overview), New trace left out."""
    page.goto(f"{url}/?trace={trace_id}")
    settle(page)
    links = page.locator('[data-testid="stSidebarNavLink"]')
    views = []
    for i in range(links.count()):
        view = (links.nth(i).get_attribute("href") or "").split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        view = "" if view.startswith("127.0.0.1") or ":" in view else view
        if view != "new_trace" and view not in views:
            views.append(view)
    assert len(views) >= 8, views
    return views


def readable(page, where: str) -> str:
    text = page.inner_text("body")
    assert REPLACEMENT not in text, f"{where} shows '\ufffd': {text[max(0, text.index(REPLACEMENT) - 80):][:200]!r}"
    return text


def images(page) -> list[str]:
    return [image.get_attribute("src") for image in page.locator('[data-testid="stImage"] img').all()]


def test_every_view_of_a_mandarin_trace(dashboard_url, dashboard_store, page, screenshots):
    trace = dashboard_store.mandarin
    groups = figures.token_groups(trace, trace.manifest["windows"][0]["tokens"])
    assert trace.manifest["language"] == "zh" and any(g["stop"] - g["start"] > 1 for g in groups), \
        "the Mandarin trace should have a character split over tokens"
    for view in listed_views(page, dashboard_url, trace.id):
        page.goto(f"{dashboard_url}/{view}?trace={trace.id}")
        settle(page)
        name = view or "overview"
        check(page, name, screenshots, f"zh-{name}")
        text = readable(page, name)
        if view == "":
            assert trace.transcript.strip() in text, "the overview's transcript is not the trace's text"
        if view == "lesson":
            step = 1
            while page.get_by_role("button", name="Next ▶").is_enabled():
                page.get_by_role("button", name="Next ▶").click()
                settle(page, after_input=True)
                step += 1
                shows_text(page, f"Step {step} of", "lesson")
                check(page, "lesson", screenshots, f"zh-lesson-step-{step}")
                readable(page, f"lesson step {step}")
            assert step >= 8


def test_every_view_of_a_two_window_trace_at_each_window(dashboard_url, dashboard_store, page, screenshots):
    trace = dashboard_store.two_windows
    windows = trace.manifest["windows"]
    assert len(windows) == 2
    pickers = 0
    for view in listed_views(page, dashboard_url, trace.id):
        page.goto(f"{dashboard_url}/{view}?trace={trace.id}")
        settle(page)
        name = view or "overview"
        check(page, name, screenshots, f"two-windows-{name}")
        readable(page, name)
        window_box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Window", exact=True))
        if not window_box.count():
            continue
        pickers += 1
        before = images(page), page.inner_text("body")
        second = windows[1]
        choose(page, "Window", f"window 2: {second['start']:.1f}–{second['end']:.1f} s")
        check(page, name, screenshots, f"two-windows-{name}-window-2")
        after = images(page), readable(page, f"{name}, window 2")
        # window 2's own content: its figures are redrawn, or (a page whose figure spans every
        # window, such as the windows timeline) what it says about the window changes
        assert after[0] != before[0] or after[1] != before[1], f"{name}: nothing changed at window 2"
    assert pickers >= 3, "the pages that show one window at a time should offer the window picker"


def test_the_html_export_of_a_mandarin_trace(dashboard_store, page, screenshots, tmp_path):
    from probe.export import export_trace

    trace = dashboard_store.mandarin
    (path,) = export_trace(trace, "html", tmp_path)
    page.goto(path.resolve().as_uri())
    page.wait_for_function("() => Array.from(document.images).every(image => image.complete)")
    text = readable(page, "the HTML export")
    assert trace.transcript.strip()[:4] in text
    page.screenshot(path=str(screenshots / "zh-export.png"), full_page=True)
