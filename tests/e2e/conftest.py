"""Fixtures of the browser tests: Debian's Chromium driven by Playwright (no browser download).

`scripts/install-system-deps.sh` installs /usr/bin/chromium. Without it these tests skip,
saying how to enable them; with CI=true they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in a container has no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT_MS = 30_000


def missing(reason: str) -> None:
    """Skip a test whose system dependency is missing; in CI, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required here; `make test` runs scripts/install-system-deps.sh)")
    pytest.skip(f"{reason}; to run these tests: sudo bash scripts/install-system-deps.sh")


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium for the whole session (Playwright's sync API)."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found (Debian package `chromium`)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        missing("the playwright Python package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
            )
        except Error as e:
            missing(f"{CHROMIUM} did not start: {str(e).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()
