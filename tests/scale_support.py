"""Shared by the scale tests: tiny synthetic slides, a fake endpoint's model spec, a dead pid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tissue_oracle.agent.cli import app as app
from tissue_oracle.bench.synth.generate import generate_set

#: A priced model name (so USD is counted) answered by the loopback fake with the generic profile.
PRICED_MODEL = "openai:gpt-4.1-mini"


def tiny_slides(folder: Path, count: int) -> list[Path]:
    return generate_set(folder, preset="tiny", count=count, seed=0)


def fake_args(base_url: str) -> list[str]:
    """Every role on the loopback fake (which answers by pixel analysis: no VLM)."""
    return ["--oracle", PRICED_MODEL, "--reviewer", PRICED_MODEL, "--base-url", base_url]


def dead_pid() -> int:
    """The pid of a process that has exited (a killed worker's, for a stale lock)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
