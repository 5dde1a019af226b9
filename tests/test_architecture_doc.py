"""docs/architecture.md names every module, and every module path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
TOP = ("agent", "tools", "oracles", "policies", "prompts", "store", "bench")
PATH = re.compile(r"\b((?:" + "|".join(TOP) + r")/[\w/]+\.py)\b")


def _modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for top in TOP
        for path in (ROOT / top).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_every_module_is_named_in_the_architecture_doc() -> None:
    named = set(PATH.findall(DOC.read_text()))
    missing = sorted(_modules() - named)
    assert not missing, f"docs/architecture.md does not name {missing}: add each to its folder's list"


def test_every_module_path_in_the_architecture_doc_exists() -> None:
    named = set(PATH.findall(DOC.read_text()))
    gone = sorted(path for path in named if not (ROOT / path).is_file())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
