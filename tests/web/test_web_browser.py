"""The live page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

A real tracker process with ``--http``, two real device-server processes and a small campaign
(a client that submits jobs to them one by one and reports through the campaign's reporter,
as ``farm tune`` does). The browser logs in, sees both devices and the campaign, sees the
campaign's curve gain points while it runs, sees a device turn lost within 2 s of the
tracker noticing its server was killed, and after logging out gets only the login page (and
no data) with a wrong token. A screenshot is saved in the test's tmp dir.

Marked ``browser``: `.ci/run` installs chromium, chromium-driver and selenium and runs it.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from farm.campaign.report import CampaignReporter
from rpc.client import Client
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import FAKE_KIND, LocalFarm
from tests.web.support import Reply

pytestmark = pytest.mark.browser
KEY = "web"
CAMPAIGN = "browser-campaign"


def chromium() -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (.ci/run installs it: pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must never fetch a driver or a browser
    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2000",
                "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to read CSP violations, if any
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # only because CI runs as root, where Chromium's sandbox cannot start
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def until(what: str, pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except Exception:  # noqa: BLE001 - the DOM is being redrawn under us: look again
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class Campaign(threading.Thread):
    """A small campaign: one task, jobs one at a time on the two devices, reported as farm tune does."""

    def __init__(self, address: str, token: bytes, trials: int = 40) -> None:
        super().__init__(name="browser-campaign", daemon=True)
        self.client = Client(address, token)
        session = SimpleNamespace(client=self.client)
        self.reporter = CampaignReporter(CAMPAIGN, lambda: session, host="test-laptop")
        self.task = SimpleNamespace(name="matmul(64,64,64)@web", wl=SimpleNamespace(name="matmul"), key=KEY,
                                    budget=trials, done_trials=0, errors=0, in_flight=0, best_gflops=0.0, best_s=None,
                                    finished=False, error="", history=[])
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t = self.task
            while t.done_trials < t.budget and not self.stop.is_set():
                mode = "wrong" if t.done_trials % 7 == 3 else "ok"
                art = fake_artifact(mode, sleep=0.15, tag=t.done_trials)
                t.in_flight = 1
                job = self.client.submit(art.header(), art.code, KEY, {"repeat": 1, "timeout_s": 10},
                                         queue_timeout_s=30)
                res = self.client.result(job, timeout=60)
                t.in_flight, t.done_trials = 0, t.done_trials + 1
                if res["outcome"] == "OK":
                    t.best_gflops = max(t.best_gflops, 1.0 + t.done_trials * 0.1)
                else:
                    t.errors += 1
                t.history.append((t.done_trials, t.best_gflops))
                self.reporter([t], {})
            t.finished = True
            self.reporter([t], {})
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.error = e

    def close(self) -> None:
        self.stop.set()
        self.join(30)
        self.reporter.close()
        self.client.close()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[tuple[LocalFarm, str]]:
    farm = LocalFarm(tmp_path / "farm", heartbeat=0.5, frame_timeout=10.0)
    try:
        farm.start_tracker(0, "--http", "127.0.0.1:0")
        assert farm.tracker is not None and farm.tracker.popen.stdout is not None
        line = farm.tracker.popen.stdout.readline().decode()
        m = re.search(r"tracker page on (http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        farm.start_server(KEY, FAKE_KIND, name="dev-a")
        farm.start_server(KEY, FAKE_KIND, name="dev-b")
        farm.wait_devices(farm.client(), 2, KEY, timeout=60)
        yield farm, m.group(1)
    finally:
        leaked = farm.close()
    assert not leaked, f"processes outlived the farm: {leaked}"


def api_state(url: str, token: str, name: str) -> str:
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=5)
    try:
        conn.request("GET", "/api/devices", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        data = Reply(r.status, r.headers, r.read()).json()
    finally:
        conn.close()
    return next((d["state"] for d in data["devices"] if d["name"] == name), "")


def test_the_live_page_in_chromium(farm: tuple[LocalFarm, str], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    lf, url = farm
    driver = chromium()
    campaign = Campaign(lf.address, lf.token.encode())
    try:
        # a wrong token: the login page again, and no data
        driver.get(url)
        until("the login form", lambda: driver.find_element(By.ID, "login-form"))
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        driver.find_element(By.ID, "login-button").click()
        until("the refusal", lambda: "Wrong token" in driver.find_element(By.ID, "login-error").text)
        assert not driver.find_elements(By.ID, "devices") and "dev-a" not in driver.page_source
        driver.get(url + "api/devices")
        assert "dev-a" not in driver.page_source and "unauthorized" in driver.page_source
        # the right one: the page, with both devices
        driver.get(url)
        driver.find_element(By.ID, "token").send_keys(lf.token)
        driver.find_element(By.ID, "login-button").click()
        rows = '#devices tbody tr[data-name="{}"]'
        until("both devices",
              lambda: all(driver.find_elements(By.CSS_SELECTOR, rows.format(n)) for n in ("dev-a", "dev-b")))
        cookie = driver.get_cookie("kf_session")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and lf.token not in cookie["value"]
        assert "CPU" in driver.find_element(By.CSS_SELECTOR, rows.format("dev-a")).text
        # the campaign, and its curve gaining points while it runs
        campaign.start()
        card = f'article.campaign[data-name="{CAMPAIGN}"]'
        until("the campaign", lambda: driver.find_elements(By.CSS_SELECTOR, card))

        def points() -> int:
            svgs = driver.find_elements(By.CSS_SELECTOR, f"{card} svg.curve")
            return int(svgs[0].get_attribute("data-points") or 0) if svgs else 0

        first = until("a first curve point", points)
        until("the curve gaining points", lambda: points() > first + 2)
        running = driver.find_element(By.CSS_SELECTOR, card).get_attribute("data-state")
        assert running == "running", running
        assert campaign.is_alive() and campaign.error is None
        until("a WRONG_ANSWER in the failures", lambda: driver.find_elements(
            By.CSS_SELECTOR, '#failures tbody tr[data-outcome="WRONG_ANSWER"]'))
        assert "WRONG_ANSWER" in driver.find_element(By.CSS_SELECTOR, card).text
        # a device server killed: lost on the page within 2 s of the tracker knowing
        dev_b = next(p for p in lf.procs if p.what == "dev-b")
        dev_b.kill9()
        t_api = until("the API to report dev-b lost", lambda: api_state(url, lf.token, "dev-b") == "lost" and
                      time.monotonic(), timeout=15)
        lost = rows.format("dev-b") + '[data-state="lost"]'
        until("dev-b lost on the page", lambda: driver.find_elements(By.CSS_SELECTOR, lost), timeout=10)
        assert time.monotonic() - t_api < 2.0, "the page took more than 2 s to show the loss"
        assert "lost" in driver.find_element(By.CSS_SELECTOR, lost + " td.state").text
        until("the campaign to finish on dev-a", lambda: driver.find_element(By.CSS_SELECTOR, card).get_attribute(
            "data-state") == "finished", timeout=60)
        assert points() == campaign.task.budget
        csp = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not csp, csp  # no inline script or style, nothing from elsewhere
        shot = tmp_path / "farm-page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        # logged out, a wrong token sees nothing again
        driver.find_element(By.ID, "logout").click()
        until("the login form after logout", lambda: driver.find_element(By.ID, "login-form"))
        driver.find_element(By.ID, "token").send_keys(lf.token + "x")
        driver.find_element(By.ID, "login-button").click()
        until("the refusal", lambda: "Wrong token" in driver.find_element(By.ID, "login-error").text)
        assert CAMPAIGN not in driver.page_source and "dev-a" not in driver.page_source
    finally:
        campaign.close()
        driver.quit()
    assert campaign.error is None, repr(campaign.error)
