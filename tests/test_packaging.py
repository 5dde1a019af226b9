"""Every package folder ships: pyproject lists it in ``packages`` and maps it in ``package-dir``."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("agent", "tools", "oracles", "policies", "prompts", "store", "bench")


def test_every_folder_with_an_init_is_a_listed_and_mapped_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = [init.parent.relative_to(ROOT) for top in TOP for init in (ROOT / top).rglob("__init__.py")]
    found = {"tissue_oracle." + ".".join(folder.parts): folder.as_posix() for folder in folders}
    assert set(setuptools["packages"]) == set(found)
    assert setuptools["package-dir"] == found
