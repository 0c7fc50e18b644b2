"""Say how to enable the browser tests when they were skipped for want of Chromium.

The skip reason is only listed with ``-rs``; a plain ``python -m pytest`` (the README's test
command) gets this line at the end of its summary instead.
"""

from __future__ import annotations

from typing import Any

from .chromium import find_chromium

ENABLE_HINT = ("browser tests skipped: headless Chromium not found. Enable them with `apt-get install chromium` "
               "(or set CHARBENCH_CHROMIUM=/path/to/chromium), then rerun; CI (.ci/run) installs it")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """One line naming the fix when browser tests were skipped because Chromium is missing."""
    skipped = terminalreporter.stats.get("skipped", [])
    if find_chromium() is None and any("browser" in getattr(r, "keywords", {}) for r in skipped):
        terminalreporter.write_line(ENABLE_HINT, yellow=True)
