"""The dashboard as users get it: ``probe dashboard`` served for real, driven by headless Chromium.

Starts ``probe dashboard --store <fixture store> --port <free port>`` as a subprocess, visits
every view with Playwright (Debian's ``/usr/bin/chromium``; never ``playwright install``), picks
another layer and head in the attention explorer, and saves a screenshot of each page to
``$PROBE_SCREENSHOTS`` (or a temporary folder).  Fails if a page shows a Streamlit exception.
The server's process group is always killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard_fixtures import dashboard_store  # noqa: F401  (session fixture)

from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
# url path (the overview is the default page, at the root) -> text the page must show
VIEWS = {
    "": "Transcript", "audio": "log-Mel", "multitask-prompt": "Language detection",
    "token-probabilities": "Every emitted token", "windows": "Every window", "conv-stem": "Channels shown",
    "attention-explorer": "Every encoder head", "cross-attention": "Word timestamps", "logit-lens": "unembedding",
    "lesson": "Step 1 of 8", "compare": "Compare with", "plugin_records": "kind tensor · shape [1, 1500]", "new_trace": "Record trace",
    # (Plugin records opens on the README's conv_energy.rms, [window, frame]: a plugin with no page of its own)
    # pages of third-party plugins, installed as entry points: the loudness test plugin and the
    # worked example examples/plugins/encoder_change
    "loudness": "Peak RMS loudness", "encoder-change": "Biggest changes",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"probe dashboard exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the dashboard at {url} did not come up in {timeout} s")


# One served dashboard for the whole session: the other browser test modules import these
# fixtures, and each import would otherwise start its own server (~15 s, and cold caches).
_SHARED: dict = {}


@pytest.fixture(scope="session")
def dashboard_url(dashboard_store):
    if "url" in _SHARED:
        yield _SHARED["url"]
        return
    assert CHROMIUM.exists(), "needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it)"
    port = free_port()
    script = Path(sys.executable).with_name("probe")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "probe"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(dashboard_store.plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])])}
    server = subprocess.Popen([*command, "dashboard", "--store", str(dashboard_store.path), "--port", str(port)],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server)
        _SHARED["url"] = url
        yield url
    finally:
        _SHARED.pop("url", None)
        os.killpg(server.pid, signal.SIGKILL)  # the CLI and the Streamlit process it started
        server.wait()


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("PROBE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def settle(page, after_input: bool = False, timeout: float = 90_000) -> None:
    """Wait until the script run is over and every image has loaded (``after_input``: first let
    the rerun a widget triggered start)."""
    if after_input:
        try:
            page.wait_for_selector('[data-testid="stApp"]:not([data-test-script-state="notRunning"])', timeout=2_000)
        except PlaywrightTimeout:
            pass  # the rerun was over before we looked
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_function("() => Array.from(document.images).every(image => image.complete)", timeout=timeout)


def shows_text(page, text: str, view: str, timeout: float = 60_000) -> None:
    """The page comes to show ``text`` (a script run may still be starting when settle() looks)."""
    try:
        page.wait_for_function("text => document.body.innerText.includes(text)", arg=text, timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"{view} does not show {text!r}: {page.inner_text('body')[:500]!r}") from None
    settle(page)


def check(page, view: str, screenshots: Path, name: str | None = None) -> None:
    """No exception on the page; then a screenshot of all of it (Streamlit scrolls inside its main
    block, so the viewport is stretched to the content first)."""
    assert page.locator('[data-testid="stException"]').count() == 0, \
        f"{view} shows an exception: {page.locator('[data-testid=stException]').first.inner_text()}"
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], height + 120)})
    page.wait_for_function("() => Array.from(document.images).every(image => image.complete)")
    page.screenshot(path=str(screenshots / f"{name or view}.png"))
    page.set_viewport_size(VIEWPORT)


def test_every_view_renders_without_exceptions(dashboard_url, dashboard_store, page, screenshots):
    trace = dashboard_store.english
    started = time.perf_counter()
    page.goto(f"{dashboard_url}/?trace={trace.id}")
    settle(page)
    shows_text(page, trace.transcript, "overview")
    print(f"\nfirst view (overview, cold) drawn in {time.perf_counter() - started:.2f} s")
    for view, text in VIEWS.items():
        started = time.perf_counter()
        page.goto(f"{dashboard_url}/{view}?trace={trace.id}")
        settle(page)
        shows_text(page, text, view)
        print(f"{view or 'overview'}: {time.perf_counter() - started:.2f} s")
        check(page, view or "overview", screenshots)


def test_attention_explorer_picks_another_layer_and_head(dashboard_url, dashboard_store, page, screenshots):
    page.goto(f"{dashboard_url}/attention-explorer?trace={dashboard_store.english.id}")
    settle(page)
    before = page.locator('[data-testid="stImage"] img').first.get_attribute("src")
    for label, option in (("Layer", "4"), ("Head", "2")):
        page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
        page.get_by_role("option", name=option, exact=True).click()
        settle(page, after_input=True)
    try:  # the figure is redrawn for the new layer and head
        page.wait_for_function("before => document.querySelector('[data-testid=\"stImage\"] img').getAttribute('src') !== before",
                               arg=before, timeout=60_000)
    except PlaywrightTimeout:
        raise AssertionError("the attention figure did not change after picking layer 4, head 2") from None
    settle(page)
    check(page, "attention", screenshots, "attention-layer4-head2")


def navigation(page) -> list[str]:
    """The page titles the sidebar's navigation lists."""
    return [link.inner_text().strip().splitlines()[-1].strip()  # the title, after its icon's name
            for link in page.locator('[data-testid="stSidebarNavLink"]').all()]


def test_a_trace_without_a_plugin_lists_none_of_its_pages(dashboard_url, dashboard_store, page, screenshots):
    page.goto(f"{dashboard_url}/?trace={dashboard_store.transcribe.id}")  # ran without logit_lens, attention, ...
    settle(page)
    shown = navigation(page)
    assert "Cross-attention" in shown and "Logit lens" not in shown and "Attention explorer" not in shown
    check(page, "overview", screenshots, "overview-without-plugins")


@pytest.mark.parametrize("name", ["activations", "attention", "cross_attention", "token_probs", "logit_lens"])
def test_every_page_of_a_trace_made_with_a_builtin_off_renders_cleanly(name, dashboard_url, dashboard_store, page,
                                                                        screenshots):
    trace = dashboard_store.without[name]
    page.goto(f"{dashboard_url}/?trace={trace.id}")
    settle(page)
    links = page.locator('[data-testid="stSidebarNavLink"]')
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert len(hrefs) >= 8
    for href in hrefs:
        if any(core in href for core in ("new_trace", "audio", "compare")):  # they show no plugin's parts
            continue
        view = href.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "overview"
        page.goto(f"{dashboard_url}/{'' if view == 'overview' else view}?trace={trace.id}")
        settle(page)
        check(page, view, screenshots, f"without-{name}-{view}")
        alerts = page.locator('[data-testid="stAlert"]')
        errors = [alerts.nth(i).inner_text() for i in range(alerts.count())]
        assert not [e for e in errors if "no record" in e or "raised" in e], (name, view, errors)
