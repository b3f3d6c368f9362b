"""A headless browser for the web UI tests: Debian's chromium driven by selenium through the
system chromedriver (scripts/install.sh installs both), so selenium-manager never downloads a
browser or a driver; and where the tests' screenshots go (VETHGUARD_UI_SCREENSHOTS=DIR, e.g.
docs/img, writes them into the repository; otherwise a temporary directory)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS_ENV = "VETHGUARD_UI_SCREENSHOTS"


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A selenium WebDriver over headless chromium, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMEDRIVER} is missing: install chromium and chromium-driver (scripts/install.sh)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(default: Path) -> Path:
    """$VETHGUARD_UI_SCREENSHOTS (relative to the current directory) or `default`, created."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    path = Path(chosen) if chosen else default
    path.mkdir(parents=True, exist_ok=True)
    return path
