"""Untrusted text on its way to a terminal or a file: secrets scrubbed, control characters and rich
markup made inert.

File names, slide ids, model answers and error messages (a 401 body can echo the key that was
sent) come from outside. Before any of it is printed or written:

- ``plain``: the store's ``Scrubber`` (keys, tokens, signed-URL signatures, ``user:pass@`` in
  URLs), then every C0/C1 control character except tab and newline shown as ``\\xNN``, so an ESC
  sequence can't recolour, move the cursor or retitle the terminal;
- ``cell``: ``plain`` and then ``rich.markup.escape``, for text a rich ``Table`` or
  ``Console.print`` would otherwise parse as markup (``[/red]`` in a file name crashed it);
- ``scrubbed_tree``: ``plain`` applied to every string in a JSON-like value (``summary.json``).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from tissue_oracle.store.scrub import Scrubber

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@functools.lru_cache(maxsize=1)
def _scrubber() -> Scrubber:
    return Scrubber()


def plain(text: object) -> str:
    """``text`` as a string with secrets redacted and control characters made visible."""
    value = _scrubber()(str(text)) or ""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def cell(text: object) -> str:
    """``plain(text)`` with rich markup escaped: safe in a ``Table`` cell or ``Console.print``."""
    from rich.markup import escape

    return escape(plain(text))


def scrubbed_tree(value: Any) -> Any:
    """``value`` with ``plain`` applied to every string (dict keys included)."""
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, dict):
        return {scrubbed_tree(k): scrubbed_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed_tree(v) for v in value]
    return value
