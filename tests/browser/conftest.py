"""A real KeyGate server on 127.0.0.1 (werkzeug ``make_server`` in a thread) and a
headless Debian Chromium driven by Selenium. Nothing is mocked; the database is the
same one the other tests use (SQLite file, or PostgreSQL via GATEWAY_TEST_DATABASE_URL)."""
from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from werkzeug.serving import make_server

from gateway import create_app

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_PASSWORD = "browser horse battery"


@pytest.fixture
def live_app(env: dict[str, str]) -> Iterator[Any]:
    app = create_app(env=env)
    with app.app_context():
        from gateway.services.admins import create as create_admin
        from gateway.transaction import committed

        with committed():
            create_admin("alice", ADMIN_PASSWORD)
    yield app
    with app.app_context():
        from gateway.extensions import db

        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def live_server(live_app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="keygate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for csp_violations
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(600, min(int(height) + 140, 4000)))
    driver.save_screenshot(str(path))
    return path


def csp_violations(driver: webdriver.Chrome) -> list[str]:
    """Console messages since the last call that report a Content-Security-Policy refusal:
    the portal's CSP must not block anything the portal itself uses."""
    return [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
