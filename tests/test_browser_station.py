"""The station part of the page in a real browser (Chromium + Selenium, as
tests/test_browser.py): a flagged part appears in the review queue, marking it good
takes it out, and the history shows the mark. Skips where the browser is missing."""

import pytest

from conftest import start_server, stop_server
import test_browser  # skips this module where test_browser skips (no chromium or selenium)
from test_browser import httpx, shoot

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

browser = test_browser.browser   # its Chromium fixture; tiny_run (untrained) is conftest's
pytestmark = pytest.mark.slow    # a server process and a browser


@pytest.fixture(scope="module")
def station_server(data_root, tiny_run, tmp_path_factory):
    """`mtad serve --log` on the tiny run, every part flagged (--threshold far below)."""
    root = tmp_path_factory.mktemp("browser-station")
    proc, base = start_server(tiny_run, root / "serve.log", "--log", root / "inspections.db",
                              "--threshold=-1e9", "--station", "line1", timeout=180)
    try:
        yield base, data_root
    finally:
        stop_server(proc)


def test_a_flagged_part_is_queued_marked_good_and_shown_in_the_history(station_server, browser):
    base, data = station_server
    part = data / "alpha/test/square/000.png"
    r = httpx.post(f"{base}/api/predict", timeout=60, data={"class": "alpha"},
                   files=[("files", ("part.png", part.read_bytes(), "image/png"))]).json()
    result = r["results"][0]
    assert result["pred_label"] is True
    row_id = result["inspection_id"]

    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'.qcard[data-id="{row_id}"]'))
    card = browser.find_element(By.CSS_SELECTOR, f'.qcard[data-id="{row_id}"]')
    assert card.get_attribute("data-verdict") in ("REVIEW", "NG")
    wait.until(lambda d: d.execute_script(
        f"const i = [...document.querySelectorAll('.qcard[data-id=\"{row_id}\"] img')];"
        "return i.length === 2 && i.every(x => x.complete && x.naturalWidth > 0);"))  # image, overlay
    assert browser.find_elements(By.CSS_SELECTOR, '#score-plots figure[data-class="alpha"] circle')
    shoot(browser, "station-queue.png")
    card.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys("glare")
    card.find_element(By.CSS_SELECTOR, ".mark-good").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'.qcard[data-id="{row_id}"]'))
    wait.until(lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#history tr[data-id="{row_id}"][data-review="good"]'))
    row = browser.find_element(By.CSS_SELECTOR, f'#history tr[data-id="{row_id}"]')
    assert "good: glare" in row.text and "alpha" in row.text
    stored = httpx.get(f"{base}/api/inspections", params={"class_name": "alpha"}).json()
    assert stored["items"][0]["review"] == "good" and stored["items"][0]["review_note"] == "glare"
