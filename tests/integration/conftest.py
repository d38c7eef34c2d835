"""Fixtures of the integration tests: Chromium when a test needs it, and the files tests
keep for a person to look at (listed at the end of the run, with or without -s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aifixer_sandbox import browser

KEPT = pytest.StashKey[list[str]]()


@pytest.fixture
def needs_chromium() -> str:
    """Chromium's path; without it the test skips, except in CI (CI=true), where it fails."""
    try:
        return browser.chromium()
    except browser.BrowserError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI must have it)")
        pytest.skip(str(exc))


@pytest.fixture
def keep(request):
    """keep(path, what): name a file the test leaves behind in the run's summary."""

    def add(path: Path, what: str) -> None:
        size = path.stat().st_size
        line = f"{what}: {path} ({size / 1024:.0f} KiB)"
        print(line)
        request.config.stash.setdefault(KEPT, []).append(line)

    return add


def pytest_terminal_summary(terminalreporter, config) -> None:
    lines = config.stash.get(KEPT, [])
    if lines:
        terminalreporter.section("kept for a look")
        for line in lines:
            terminalreporter.write_line(line)
