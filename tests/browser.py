"""Headless Chromium for the chat-page tests (Selenium; Debian's chromium + chromium-driver)."""
import shutil

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None)
NO_CHROMIUM = "no chromium binary found (apt-get install chromium chromium-driver)"


def headless_chromium():
    """A Selenium Chrome driver on CHROMIUM, headless, 1100x720, 30 s page-load timeout."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1100,720", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    driver_path = shutil.which("chromedriver")
    d = webdriver.Chrome(options=opts, service=Service(driver_path) if driver_path else Service())
    d.set_page_load_timeout(30)
    return d
