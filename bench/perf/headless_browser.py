"""Open a local HTML file in headless Debian chromium: its DOM, console messages and a screenshot.

Used by the report test and the scale benchmark. Chromium runs with a fresh profile, no network
services (``--disable-background-networking`` etc.) and, as root in containers, ``--no-sandbox``;
``--enable-logging=stderr --v=0`` makes it print every console message of the page as a
``CONSOLE`` log line, which is how console errors are caught.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
_CONSOLE = re.compile(r":CONSOLE[:(]")


@dataclass(kw_only=True)
class PageLoad:
    """What chromium saw."""

    dom: str
    """The DOM after load (``--dump-dom``)."""
    console: list[str]
    """Every console message the page logged (errors, uncaught exceptions, warnings)."""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(page: Path, action: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, page.resolve().as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def load(page: Path, *, timeout_s: float = 120.0) -> PageLoad:
    """Load ``page`` and return its DOM and console messages."""
    done = _run(page, ["--dump-dom"], timeout_s)
    console = [line for line in done.stderr.splitlines() if _CONSOLE.search(line)]
    return PageLoad(dom=done.stdout, console=console)


def screenshot(
    page: Path, target: Path, *, width: int = 1400, height: int = 2000, timeout_s: float = 120.0
) -> Path:
    """A PNG screenshot of ``page`` at ``width`` x ``height`` CSS pixels."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(page, [f"--window-size={width},{height}", f"--screenshot={target.resolve()}"], timeout_s)
    if not target.exists():
        raise RuntimeError(f"chromium wrote no screenshot of {page}")
    return target
