"""The one numbering of focus grades, wherever a grade is stored as a number.

``FOCUS_CODES`` maps each grade to its code and ``NO_FOCUS`` (255) marks a patch or pixel with no
grade (background, or not asked). The same codes are used by ``classify_patches`` (its per-patch
focus grid), by the output writer (``focus.png`` colours), and by the synthetic truth
(``focus.png`` in a truth folder, ``Truth.patch_focus``) and the benchmark's focus scores.
"""

from __future__ import annotations

from tissue_oracle.tools.schemas import Focus

FOCUS_CODES: dict[Focus, int] = {"sharp": 0, "mild_blur": 1, "out_of_focus": 2}
"""Grade -> code (uint8)."""
FOCUS_NAMES: dict[int, Focus] = {code: name for name, code in FOCUS_CODES.items()}
"""Code -> grade."""
NO_FOCUS = 255
"""The code of "no grade" (uint8)."""


def focus_code(focus: Focus | None) -> int:
    """The code of a grade, ``NO_FOCUS`` for None."""
    return NO_FOCUS if focus is None else FOCUS_CODES[focus]
