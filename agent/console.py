"""The rich console every command prints through.

Rich sizes tables to the terminal, and without one (a pipe, a log file, CI) it falls back to 80
columns, which folds a per-slide table into unreadable slivers. Off a terminal we print wide.
"""

from __future__ import annotations

import sys

from rich.console import Console

#: Columns used when the output is not a terminal.
WIDE = 160


def make_console(*, stderr: bool = False) -> Console:
    """A console for tables and messages: the terminal's width, or ``WIDE`` off a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else WIDE
    return Console(stderr=stderr, width=width)
