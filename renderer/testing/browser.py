"""Headless Chromium under Selenium, for the gallery's tests and its benchmark (Debian's chromium and
chromium-driver: `.ci/install-browser` installs them)."""
from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1400, 1000)


def headless_chromium(chromium: Path = CHROMIUM, *arguments: str):
    """A Selenium driver of `chromium` (its chromedriver beside it) in a WINDOW-sized headless window; a dialog
    opened by a page stays open for the caller to find. `arguments`: more of Chromium's switches."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = Path(chromium).with_name("chromedriver")
    if not (Path(chromium).exists() and driver_path.exists()):
        raise FileNotFoundError(f"{chromium} and {driver_path}: install Chromium and its chromedriver "
                                "(Debian: `bash .ci/install-browser`)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                     "--window-size={},{}".format(*WINDOW), *arguments):
        options.add_argument(argument)
    options.unhandled_prompt_behavior = "ignore"
    return webdriver.Chrome(options=options, service=Service(str(driver_path)))
