"""The command line's slide arguments to files: per-argument problems are reported, not fatal.

A folder with no slide files, a glob that matches nothing, an unreadable folder or a symbolic
link loop is one argument's problem: it is reported (``InputProblem``) and the other arguments
go on. Only when no argument gives a slide does the command stop. A named file that does not
exist stays a slide, and fails as that slide with the reader's advice.
"""

from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class InputProblem:
    """An argument that gave no slide, and why."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item!r}: {self.reason}"


def expand_inputs(items: list[str], suffixes: frozenset[str]) -> tuple[list[Path], list[InputProblem]]:
    """Files as given, folders' slide files (not recursive), globs; sorted per item, first kept."""
    found: dict[Path, None] = {}
    problems: list[InputProblem] = []
    for item in items:
        try:
            matches, why = _matches(item, suffixes)
        except OSError as exc:
            matches, why = [], _os_reason(exc)
        except RuntimeError:  # pathlib's "Symlink loop from ..." (Python 3.11/3.12)
            matches, why = [], _os_reason(OSError(errno.ELOOP, "symlink loop"))
        if not matches:
            problems.append(InputProblem(item=item, reason=why))
        found.update(dict.fromkeys(matches))
    return list(found), problems


def _matches(item: str, suffixes: frozenset[str]) -> tuple[list[Path], str]:
    path = Path(item)
    if os.path.islink(item):
        path.resolve(strict=True)  # raises for a loop (ELOOP / RuntimeError) before anything else
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
        return files, f"folder has no slide files ({', '.join(sorted(suffixes))})"
    if path.exists():
        return [path], ""
    if glob.has_magic(item):
        return sorted(Path(p) for p in glob.glob(item) if Path(p).is_file()), "matches no slide files"
    return [path], ""


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link loop (it points back at itself); fix or remove the link"
    if isinstance(exc, PermissionError):
        return "can't be read (permission denied)"
    return f"can't be read ({exc.strerror or exc})"
