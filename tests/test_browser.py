"""The inspection page in a real browser: headless Debian Chromium driven by Selenium
against `mtad serve` started as a command on a free local port. Skips (saying why)
where chromium, chromedriver or selenium are missing; `.ci/run` installs them.

Set MTAD_SCREENSHOTS=DIR to keep the page's screenshots (1280 px and 400 px wide).
"""
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("selenium", reason="the browser test needs selenium (test extra)")
httpx = pytest.importorskip("httpx", reason="the browser test needs httpx (test extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import start_server, stop_server  # noqa: E402

pytestmark = pytest.mark.slow   # a server process and a browser


@pytest.fixture(scope="module")
def server(data_root, trained_run, tmp_path_factory):
    """`mtad serve` on a tiny trained run; yields (base URL, data folder)."""
    root, data = tmp_path_factory.mktemp("browser"), data_root
    proc, base = start_server(trained_run, root / "serve.log", timeout=180)
    try:
        yield base, data
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def card(driver, name):
    return driver.find_element(By.CSS_SELECTOR, f'article.card[data-name="{name}"]')


def shoot(driver, name):
    folder = os.environ.get("MTAD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.execute_script("return window.outerWidth")
        driver.set_window_size(width, min(height + 120, 4000))
        driver.save_screenshot(str(Path(folder) / name))


def test_page_scores_uploads_and_sliders_redecide_in_the_browser(server, browser, tmp_path):
    base, data = server
    # The good part the tiny model scores lowest and the defect it scores highest (which ones
    # depends on the tiny run's weights; the page must show the server's verdicts for both).
    def score(path):
        return httpx.post(f"{base}/api/predict", timeout=60, files=[
            ("files", (path.name, path.read_bytes()))]).json()["results"][0]["pred_score"]

    good = min(sorted((data / "beta/test/good").glob("*.png")), key=score)
    defective = max(sorted((data / "beta/test/square").glob("*.png")), key=score)
    # Same-named files from two folders; and one that is not an image.
    (tmp_path / "good.png").write_bytes(good.read_bytes())
    (tmp_path / "defect.png").write_bytes(defective.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    expected = {}
    for name in ("good.png", "defect.png"):
        r = httpx.post(f"{base}/api/predict", timeout=60,
                       files=[("files", (name, (tmp_path / name).read_bytes()))]).json()
        expected[name] = r["results"][0]
    assert expected["good.png"]["pred_label"] is False            # the model's own verdicts
    assert expected["defect.png"]["pred_label"] is True

    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#class-select option")) == 3)
    assert "2 classes" in browser.find_element(By.ID, "model-line").text
    assert browser.find_elements(By.CSS_SELECTOR, "#metrics table tbody tr")       # metrics table
    assert browser.find_elements(By.CSS_SELECTOR, "#loss svg polyline")          # loss curve

    browser.find_element(By.ID, "file-input").send_keys(
        "\n".join(str(tmp_path / n) for n in ("good.png", "defect.png", "notes.txt")))
    wait.until(lambda d: card(d, "good.png").get_attribute("data-status") == "done"
               and card(d, "defect.png").get_attribute("data-status") == "done"
               and card(d, "notes.txt").get_attribute("data-status") == "error")
    assert card(browser, "good.png").get_attribute("data-verdict") == "OK"
    assert card(browser, "defect.png").get_attribute("data-verdict") == "NG"
    for name in ("good.png", "defect.png"):
        assert float(card(browser, name).get_attribute("data-score")) == \
            pytest.approx(expected[name]["pred_score"], rel=1e-6)  # same server, same image, String()
    error = card(browser, "notes.txt").find_element(By.CSS_SELECTOR, ".error").text
    assert "notes.txt: not a decodable image" in error                # next to its file
    wait.until(lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('article.card img')];"
        "return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results-table tbody tr")
    assert len(rows) == 3 and browser.find_element(By.ID, "download-csv").is_enabled()
    shoot(browser, "desktop.png")

    # Keyboard only: the image-threshold slider to its top flips the defective part to OK,
    # to its bottom flips the good one to NG; no new request is made.
    served = httpx.get(f"{base}/health").json()["served"]
    slider = browser.find_element(By.ID, "image-thr")
    slider.send_keys(Keys.END)
    wait.until(lambda d: card(d, "defect.png").get_attribute("data-verdict") == "OK")
    slider.send_keys(Keys.HOME)
    wait.until(lambda d: card(d, "good.png").get_attribute("data-verdict") == "NG")
    browser.find_element(By.ID, "reset-thr").click()
    wait.until(lambda d: card(d, "good.png").get_attribute("data-verdict") == "OK"
               and card(d, "defect.png").get_attribute("data-verdict") == "NG")
    assert httpx.get(f"{base}/health").json()["served"] == served

    # A narrow window: nothing sticks out sideways.
    browser.set_window_size(400, 1000)
    time.sleep(0.3)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shoot(browser, "narrow.png")
