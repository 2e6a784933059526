"""The sidebar's trace picker in a real browser (issue #16, item 7): the one-line picker is
narrow, so its label leads with what tells traces apart (name, task and language, model) and
the whole id, audio source and transcript are written out under it.

Reuses the served dashboard and the browser of ``tests/test_browser.py`` (started again for
this module).
"""

from __future__ import annotations

import pytest

from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)
from tests.test_browser import dashboard_url, page, screenshots, shows_text  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_the_sidebar_shows_what_the_picked_trace_is(dashboard_url, dashboard_store, page, screenshots):
    translate = dashboard_store.translate
    page.goto(f"{dashboard_url}/?trace={translate.id}")
    shows_text(page, translate.id, "the sidebar")  # the whole id, in the caption under the picker
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert translate.transcript[:40] in sidebar.inner_text()
    picked = sidebar.locator('[data-testid="stSelectbox"]').first.locator('[data-baseweb="select"]')
    shown = picked.text_content()
    assert shown.startswith(f"{translate.name} · translate <|zh|> · base")
    # the one line is cut with an ellipsis where the box ends: the name, task and language fit before it
    lead = f"{translate.name} · translate <|zh|>"
    fits = picked.evaluate("""(element, lead) => {
        const value = Array.from(element.querySelectorAll('div')).find(
            d => d.children.length === 0 && d.textContent.startsWith(lead));
        const style = getComputedStyle(value);
        const context = document.createElement('canvas').getContext('2d');
        context.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
        return {room: value.clientWidth, lead: context.measureText(lead).width};
    }""", lead)
    assert 0 < fits["lead"] < fits["room"], fits
    page.screenshot(path=str(screenshots / "sidebar-picker.png"))
