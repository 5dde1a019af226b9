"""Prompt templates as package data, and ``render(name, **vars)``.

Templates are ``prompts/<name>.txt`` with ``$var`` placeholders (``string.Template``). A rendered
prompt carries the template's name and the sha256 of the template text, which every oracle call
records, so an audit row says exactly which wording produced an answer. This package imports
nothing from the project (it sits at the bottom of the layering).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["Rendered", "UnknownPromptError", "names", "render", "template_text"]


class UnknownPromptError(LookupError):
    """No template has that name; the message lists the names there are."""


@dataclass(frozen=True, kw_only=True)
class Rendered:
    """A filled-in prompt and where it came from."""

    text: str
    """The prompt as sent."""
    name: str
    """Template name (file stem)."""
    sha256: str
    """sha256 hex of the template text (not of the filled-in prompt)."""


@cache
def names() -> tuple[str, ...]:
    """Every template name, sorted."""
    files = resources.files(__name__).iterdir()
    return tuple(sorted(f.name.removesuffix(".txt") for f in files if f.name.endswith(".txt")))


@cache
def template_text(name: str) -> str:
    """The raw template text of ``name``."""
    if name not in names():
        raise UnknownPromptError(f"no prompt template {name!r}; templates: {', '.join(names())}")
    return resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")


def render(name: str, **variables: object) -> Rendered:
    """Fill template ``name`` with ``variables``; every placeholder must be given.

    Raises ``UnknownPromptError`` for an unknown name and ``KeyError`` naming a missing variable.
    """
    text = template_text(name)
    try:
        filled = string.Template(text).substitute({k: str(v) for k, v in variables.items()})
    except KeyError as exc:
        raise KeyError(f"prompt {name!r} needs variable {exc.args[0]!r}") from exc
    return Rendered(text=filled, name=name, sha256=hashlib.sha256(text.encode()).hexdigest())
