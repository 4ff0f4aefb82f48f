"""The service's page in a real headless Chromium: it shows a grid; "more cats" loads a new one.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when it runs as root);
skips only where they are absent. The browser may reach nothing beyond loopback.
"""

from __future__ import annotations

import shutil

import pytest
from test_app import TILE, start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers have a small /dev/shm
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # no name but loopback resolves
    "--window-size=900,1100",
)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver are not installed (Debian: apt-get install chromium "
    "chromium-driver; `make test` does it when run as root)",
)


@pytest.fixture(scope="module")
def url(trained_workdir, tmp_path_factory):
    served = tmp_path_factory.mktemp("serve")  # a copy: the server may cache a gmm there
    workdir = served / "run"
    shutil.copytree(trained_workdir[0], workdir)
    proc, base, _ = start_server(workdir, served / "server.log")
    try:
        yield base
    finally:
        stop_server(proc)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with both paths given, Selenium Manager never runs
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


GRID = "document.getElementById('grid')"
LOADED = f"return {GRID}.complete && {GRID}.naturalWidth > 0 && {GRID}.src.startsWith('blob:')"


def test_more_cats_loads_a_new_grid(url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    wait.until(lambda d: d.execute_script(LOADED))
    grid = browser.find_element(By.ID, "grid")
    first = grid.get_attribute("src")
    assert grid.get_attribute("data-loads") == "1"
    assert browser.execute_script(f"return {GRID}.naturalWidth") == 8 * TILE + 2  # 64 cats
    first_seed = browser.find_element(By.ID, "status").text

    browser.find_element(By.ID, "more").click()
    wait.until(lambda d: grid.get_attribute("data-loads") == "2" and d.execute_script(LOADED))
    assert grid.get_attribute("src") != first
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("seed ") and status != first_seed  # a fresh grid, not a reload

    browser.find_element(By.ID, "seed").send_keys("5")
    browser.find_element(By.ID, "more").click()
    wait.until(lambda d: grid.get_attribute("data-loads") == "3" and d.execute_script(LOADED))
    assert browser.find_element(By.ID, "status").text.startswith("seed 5 ")

    hosts = browser.execute_script(
        "return performance.getEntries().filter(e => e.entryType in {navigation: 1, resource: 1})"
        ".map(e => e.name).filter(n => !n.startsWith('blob:')).map(n => new URL(n).host)"
    )
    assert set(hosts) == {url.removeprefix("http://")}, hosts  # nothing beyond the server
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
