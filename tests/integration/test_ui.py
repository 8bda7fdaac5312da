"""Issue 6, the station page in a real browser: Debian's Chromium, headless, driven by Playwright
(the Python package, with the system browser: nothing is downloaded). Against the real Serve app on
the tiny model: enter the key, submit a job through the page, see the queue position or steps
advance and live previews, see the result image rendered beside the input, and cancel a second job.

Skipped where no Chromium is installed, except in CI (``.ci/run`` installs it and sets
QWEN_REQUIRE_BROWSER, so a missing browser fails there)."""

import os
import shutil

import pytest

from tests.helpers import IMAGE, KEY

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a container, without the network: no sandbox, no background connections to Google.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture
def page(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("QWEN_REQUIRE_BROWSER"):
            pytest.fail("no Chromium on this machine: `apt-get install chromium` (.ci/run does)")
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        context.close()
        browser.close()


@pytest.mark.timeout(240)
def test_station_page_edits_shows_progress_and_result_and_cancels(api, page, tmp_path):
    api.drain()
    photo = tmp_path / "photo.png"
    photo.write_bytes(IMAGE)

    page.goto(api.base + "/ui/")
    assert "Enter your station's API key" in page.locator("#error").inner_text()
    page.fill("#key", KEY)
    page.click("#key-form button")
    page.wait_for_function("document.querySelectorAll('#preset option').length > 0")
    assert page.locator("#error").is_hidden()

    page.set_input_files("#images", str(photo))
    page.fill("#instruction", "make the sky blue")
    page.select_option("#preset", "long")
    page.fill("#seed", "7")
    page.click("#submit")
    # Live: the page shows the job's denoising steps advancing (from the events stream)...
    page.wait_for_function("window.qwenEditSeen.some(v => v.status === 'processing' && v.step > 0)")
    assert page.locator("#job-state").inner_text().startswith(("Editing: step", "Queued"))
    # ...and the picture forming: live previews in the result's place while it runs...
    page.wait_for_function("document.querySelector('#result-caption').textContent.startsWith('Preview, step')"
                           " && document.querySelector('#result').naturalWidth > 0")
    # ...then the result, rendered beside the input, with a download link.
    page.wait_for_function("document.querySelector('#job-state').dataset.status === 'completed'")
    # (the result replaces the preview: its caption says Result and the download link appears)
    page.wait_for_function("(() => { const i = document.querySelector('#result');"
                           " return !document.querySelector('#download').hidden"
                           " && document.querySelector('#result-caption').textContent === 'Result'"
                           " && !i.classList.contains('preview') && i.complete && i.naturalWidth > 0; })()")
    assert page.locator("#input-view").evaluate("i => i.naturalWidth") > 0
    assert page.locator("#download").get_attribute("download").endswith(".png")
    assert page.locator("#result-caption").inner_text() == "Result"
    assert "Done in" in page.locator("#job-state").inner_text() and "seed 7" in page.locator("#job-state").inner_text()
    first = page.evaluate("window.qwenEditSeen.at(-1).job_id")
    assert api.status(first).json()["status"] == "completed"

    # A second job, cancelled from the page while it runs.
    page.fill("#instruction", "make it snow")
    page.click("#submit")
    page.wait_for_function(f"window.qwenEditSeen.some(v => v.job_id !== '{first}' && v.status === 'processing')")
    second = page.evaluate(f"window.qwenEditSeen.filter(v => v.job_id !== '{first}').at(-1).job_id")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#job-state').dataset.status === 'cancelled'")
    assert api.status(second).json()["status"] == "cancelled"

    # The recent jobs list shows both, newest first, and the queue panel its counts.
    # (the list redraws from the cancel's own refresh; a row drawn before the cancel may linger
    # until that answer lands, so wait for the row's final state rather than its existence)
    page.wait_for_function(f"(document.querySelector('#jobs tr[data-job=\"{second}\"]') || {{}})"
                           ".textContent?.includes('Cancelled')", timeout=10_000)
    rows = page.locator("#jobs tr").evaluate_all("rows => rows.map(r => r.dataset.job)")
    assert rows.index(second) < rows.index(first)
    assert page.locator("#q-max").inner_text() == "10"
    assert page.locator("#error").is_hidden()  # nothing went wrong on the way
    page.screenshot(path=str(tmp_path / "station-page.png"), full_page=True)


def test_station_page_shows_api_errors_as_sentences(api, page, tmp_path):
    page.goto(api.base + "/ui/")
    page.fill("#key", "not-a-key")
    page.click("#key-form button")
    page.wait_for_function("!document.querySelector('#error').hidden")
    assert "Invalid or missing API key. Enter your station's API key above." in page.locator("#error").inner_text()

    # a prompt the policy refuses: the page shows the server's sentence (issue 23)
    photo = tmp_path / "photo.png"
    photo.write_bytes(IMAGE)
    page.fill("#key", KEY)
    page.click("#key-form button")
    page.wait_for_function("document.querySelectorAll('#preset option').length > 0")
    page.set_input_files("#images", str(photo))
    page.fill("#instruction", "make her nude")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#error').textContent.includes('disallowed')")
    assert page.locator("#error").inner_text() == ("Prompt contains disallowed term(s): nude. Please revise and "
                                                   "try again.")
