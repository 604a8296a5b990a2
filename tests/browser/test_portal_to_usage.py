"""End to end in headless Chromium: an admin signs in, creates a user and a key, copies
the key; the user pastes it on /usage and watches the bar move; the admin revokes it
and /usage says so. In between, the key is used for real: the OpenAI SDK sends a
completion and a stream through the same server to the fake upstream."""
from __future__ import annotations

from typing import Any

import openai
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from gateway.fake_upstream import count_prompt_tokens
from tests.browser.conftest import ADMIN_PASSWORD, csp_violations, screenshot

WAIT = 10


def _wait(driver: Any) -> WebDriverWait:
    return WebDriverWait(driver, WAIT)


def _register_fake_upstream(app: Any, upstream_url: str) -> None:
    with app.app_context():
        from gateway.services import backends as backend_service
        from gateway.transaction import committed

        with committed():
            backend = backend_service.create_backend({"name": "fake-openai", "kind": "openai",
                                                      "base_url": upstream_url + "/v1", "models": ["gpt-*"]},
                                                     "test", None)
            backend_service.add_key(backend, {"secret": "sk-browser-upstream-secret-0001"}, "test", None)


def _use_key(base: str, key: str) -> None:
    """Two calls worth exactly 200 tokens each (the fake's usage is deterministic)."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
    words = "hello from the browser test"
    prompt = count_prompt_tokens({"messages": [{"role": "user", "content": f"[[tokens:1]] {words}"}]})
    messages = [{"role": "user", "content": f"[[tokens:{200 - prompt}]] {words}"}]
    completion = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert completion.usage.total_tokens == 200
    chunks = list(client.chat.completions.create(model="gpt-3.5-turbo", messages=messages, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 200 - prompt


def _check_usage(driver: Any, base: str, key: str, paste: bool) -> None:
    driver.get(f"{base}/usage")
    field = driver.find_element(By.ID, "usage-key")
    if paste:
        field.send_keys(Keys.CONTROL, "v")
        if field.get_attribute("value") != key:  # no system clipboard in this headless session
            field.clear()
            field.send_keys(key)
    else:
        field.send_keys(key)
    assert field.get_attribute("value") == key
    driver.find_element(By.ID, "usage-submit").click()
    _wait(driver).until(EC.visibility_of_element_located((By.ID, "usage-result")))
    assert key not in driver.current_url and "key=" not in driver.current_url


def _bar_width(driver: Any) -> str:
    return driver.find_element(By.ID, "usage-fill").get_attribute("style")


def test_admin_creates_a_key_user_sees_usage_then_revocation(live_app, live_server, browser, fake_upstream):
    base, driver = live_server, browser

    # Sign in.
    driver.get(f"{base}/admin/")
    _wait(driver).until(EC.presence_of_element_located((By.ID, "username"))).send_keys("alice")
    driver.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD + Keys.ENTER)
    _wait(driver).until(EC.title_contains("Dashboard"))

    # Create a user with a 1,000-token total quota.
    driver.get(f"{base}/admin/users/new")
    driver.find_element(By.ID, "name").send_keys("Browser Betty")
    driver.find_element(By.ID, "email").send_keys("betty@example.com")
    Select(driver.find_element(By.ID, "tier")).select_by_visible_text("pro")
    driver.find_element(By.ID, "token_quota").send_keys("1000")
    Select(driver.find_element(By.ID, "quota_period")).select_by_visible_text("total")
    driver.find_element(By.CSS_SELECTOR, "form.grid-form button[type=submit]").click()
    _wait(driver).until(EC.title_contains("Browser Betty"))
    user_id = int(driver.current_url.rstrip("/").rsplit("/", 1)[1])

    # Create a key: shown once, with a copy button.
    driver.find_element(By.ID, "label").send_keys("laptop")
    driver.find_element(By.CSS_SELECTOR, "form.row-form button[type=submit]").click()
    key_box = _wait(driver).until(EC.presence_of_element_located((By.ID, "new-key")))
    key = key_box.get_attribute("value")
    assert key.startswith("sk-pro-") and len(key) >= len("sk-pro-") + 32
    assert "shown only this once" in driver.page_source
    driver.find_element(By.ID, "copy-key").click()
    _wait(driver).until(lambda d: d.find_element(By.ID, "copy-key").text in ("Copied", "Press Ctrl+C to copy"))

    # The user checks usage: nothing used yet.
    _check_usage(driver, base, key, paste=True)
    assert driver.find_element(By.ID, "usage-status").text == "active"
    assert "width: 0%" in _bar_width(driver)
    assert "Browser Betty" in driver.find_element(By.ID, "usage-result").text

    # The key is used through the proxy against the fake upstream; the bar moves.
    _register_fake_upstream(live_app, fake_upstream.url)
    _use_key(base, key)
    driver.find_element(By.ID, "usage-submit").click()
    _wait(driver).until(lambda d: "width: 40%" in _bar_width(d))
    result = driver.find_element(By.ID, "usage-result").text
    assert "40% used, 600 tokens remaining." in result
    assert "gpt-4o" in result and "gpt-3.5-turbo" in result and "120 requests per minute" in result
    assert driver.execute_script("return window.localStorage.length + window.sessionStorage.length") == 0
    assert all(key not in (c.get("value") or "") for c in driver.get_cookies())
    screenshot(driver, "usage")

    # The dashboard shows the traffic.
    driver.get(f"{base}/admin/")
    _wait(driver).until(EC.title_contains("Dashboard"))
    assert "Browser Betty" in driver.find_element(By.CSS_SELECTOR, ".grid2").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.tin")) == 30
    screenshot(driver, "dashboard")

    # Revoke the key in the portal (accepting the confirmation dialog).
    driver.get(f"{base}/admin/users/{user_id}")
    driver.find_element(By.CSS_SELECTOR, "button.danger[data-confirm^='Revoke']").click()
    _wait(driver).until(EC.alert_is_present()).accept()
    _wait(driver).until(lambda d: "Revoked" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    screenshot(driver, "user-detail")

    # /usage now says revoked.
    _check_usage(driver, base, key, paste=False)
    _wait(driver).until(lambda d: d.find_element(By.ID, "usage-status").text == "revoked")
    screenshot(driver, "usage-revoked")
    assert csp_violations(driver) == []


def test_usage_page_rejects_an_unknown_key(live_server, browser):
    browser.get(f"{live_server}/usage")
    browser.find_element(By.ID, "usage-key").send_keys("sk-dev-not-a-real-key")
    browser.find_element(By.ID, "usage-submit").click()
    error = _wait(browser).until(EC.visibility_of_element_located((By.ID, "usage-error")))
    assert "not valid" in error.text
    assert not browser.find_element(By.ID, "usage-result").is_displayed()


def test_pages_fit_a_phone_screen(live_server, browser):
    browser.set_window_size(390, 844)
    browser.get(f"{live_server}/admin/login")
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD + Keys.ENTER)
    _wait(browser).until(EC.title_contains("Dashboard"))
    for path in ("/admin/", "/admin/users", "/admin/tiers", "/admin/logs", "/admin/audit", "/usage"):
        browser.get(live_server + path)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (path, overflow)
    assert csp_violations(browser) == []
    browser.get(live_server + "/admin/tiers")
    screenshot(browser, "tiers-phone")
