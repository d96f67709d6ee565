"""Headless Chromium (Debian's chromium and chromium-driver) driven through Selenium: the
report's browser tests and its screenshots use it. Selenium comes with the `dev` extra."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium(width: int = 1280, height: int = 900) -> Chrome:
    """A headless Chromium that records the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--allow-file-access-from-files"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver from Debian: Selenium Manager would try to download one
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def file_url(path: Path) -> str:
    return path.resolve().as_uri()
