"""The chat page of a ternary-serve started with --api-key, in headless Chromium (Selenium):
the page itself loads without the key (as llama.cpp's web UI), asks for the key on the
first 401, says so when it is wrong, and with the right one lists the model and streams a
reply; the key is kept in the browser across a reload."""
import re

import httpx
import pytest

from browser import CHROMIUM, NO_CHROMIUM, headless_chromium
from served import Served

from engine.runtime.generate import DEFAULT_MODEL

KEY = "page-key-123"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert DEFAULT_MODEL.exists(), "the embedded default model is not built"
    s = Served(tmp_path_factory.mktemp("chat-key-log"), "--api-key", KEY, "--threads", "1", "--max-batch", "2",
               "--log-level", "warning", drop_env=("TERNARY_API_KEY",))
    yield s.base
    s.close()


@pytest.fixture
def driver():
    d = headless_chromium()
    yield d
    d.quit()


def _enter_key(d, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = d.find_element(By.ID, "api-key")
    box.clear()
    box.send_keys(key, Keys.TAB)   # leaving the field commits it (a change event)


def test_chat_page_asks_for_the_key_then_streams(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert httpx.get(server + "/v1/models").status_code == 401
    driver.get(server + "/")
    wait = WebDriverWait(driver, 30)
    status = lambda d: d.find_element(By.ID, "status").text  # noqa: E731
    wait.until(lambda d: status(d) == "API key needed")
    assert driver.find_element(By.ID, "api-key").is_displayed()
    _enter_key(driver, "not-the-key")
    wait.until(lambda d: status(d) == "wrong API key")
    _enter_key(driver, KEY)
    model_id = httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
    wait.until(lambda d: [o.get_attribute("value") for o in Select(d.find_element(By.ID, "model")).options]
               == [model_id])
    assert status(driver) == "ready"
    driver.find_element(By.ID, "prompt").send_keys("Tell me a story.")
    driver.find_element(By.ID, "send").click()
    stats = wait.until(lambda d: re.search(r"(\d+) tokens · .* · (stop|length)$",
                                           d.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text))
    assert int(stats.group(1)) >= 1
    assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
    # kept in this browser: a reload needs no key typed
    driver.refresh()
    wait.until(lambda d: status(d) == "ready")
    assert driver.find_element(By.ID, "api-key").get_attribute("value") == KEY
