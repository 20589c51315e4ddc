"""The chat page at / of ternary-serve, in a real headless Chromium (Selenium): the server runs
the embedded default model on 127.0.0.1; the page lists the model from /v1/models, streams a
reply from /v1/chat/completions and shows its tokens/s. Also: the page's files are in the
installed package and load nothing from other hosts."""
import os
import re

import httpx
import pytest

from browser import CHROMIUM, NO_CHROMIUM, headless_chromium
from served import Served

from engine.runtime.generate import DEFAULT_MODEL
from engine.serve.server import STATIC_DIR



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert DEFAULT_MODEL.exists(), "the embedded default model is not built"
    s = Served(tmp_path_factory.mktemp("chat-log"), "--host", "127.0.0.1", "--threads", "1", "--max-batch", "2",
               "--log-level", "warning")
    yield s.base
    s.close()


def test_page_files_are_served_and_self_contained(server):
    r = httpx.get(server + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sorted(refs) == ["static/chat.css", "static/chat.js"]
    for name in ("chat.css", "chat.js"):
        assert os.path.isfile(os.path.join(STATIC_DIR, name))   # package data, installed
        text = httpx.get(f"{server}/static/{name}").raise_for_status().text
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), f"{name} refers to another host"


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_chat_page_streams_a_reply_in_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = headless_chromium()
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 30)
        model_id = httpx.get(server + "/v1/models").json()["data"][0]["id"]
        wait.until(lambda d: [o.get_attribute("value") for o in Select(d.find_element(By.ID, "model")).options]
                   == [model_id])
        assert driver.find_element(By.ID, "status").text == "ready"
        driver.execute_script(   # as a user would: the sliders' input events update their labels
            "for (const [id, v] of [['temperature', '0'], ['top-p', '0.95'], ['max-tokens', '48']]) {"
            "  const e = document.getElementById(id); e.value = v;"
            "  e.dispatchEvent(new Event('input', {bubbles: true})); }")
        assert driver.find_element(By.ID, "temperature-out").text == "0"
        box = driver.find_element(By.ID, "prompt")
        box.send_keys("Tell me a story about a cat.")
        driver.find_element(By.ID, "send").click()
        user = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.user .text"))
        assert user[0].text == "Tell me a story about a cat."
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text.strip())
        stats = wait.until(lambda d: re.search(r"(\d+) tokens · ([\d.]+) tok/s .*· (stop|length)$",
                                               d.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text))
        assert int(stats.group(1)) >= 2 and float(stats.group(2)) > 0
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text
        assert "Error" not in reply and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        assert driver.find_element(By.ID, "send").is_enabled()
        # the streamed pieces add up to what the API gives in one piece (greedy, same settings)
        want = httpx.post(server + "/v1/chat/completions", timeout=60, json={
            "model": model_id, "temperature": 0, "top_p": 0.95, "max_tokens": 48,
            "messages": [{"role": "user", "content": "Tell me a story about a cat."}]}).json()
        assert reply.split() == want["choices"][0]["message"]["content"].split()
        assert int(stats.group(1)) == want["usage"]["completion_tokens"]
        shot = os.environ.get("TERNARY_CHAT_SCREENSHOT") or str(tmp_path / "chat.png")
        assert driver.save_screenshot(shot)
        print(f"screenshot: {shot}; reply: {reply!r}; {stats.group(0)}")
    finally:
        driver.quit()
