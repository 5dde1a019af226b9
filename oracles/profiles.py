"""Model profiles: how each model family writes boxes and points, and the ONE norm1000 -> level-0 conversion.

Qwen3-VL answers ``{"bbox_2d": [x1, y1, x2, y2]}`` and ``{"point_2d": [x, y]}``; Gemini answers
``{"box_2d": [y1, x1, y2, x2]}`` and ``{"point": [y, x]}``; both in 0-1000 normalised image
coordinates (``norm1000``). Every model coordinate becomes a level-0 coordinate here and nowhere
else: :func:`box_to_level0` and :func:`point_to_level0`, given the level-0 rectangle the image
showed (:class:`ImageFrame`).

Values a little outside 0-1000 are clamped (models overshoot edges); values far outside (pixel
coordinates, garbage) drop the box or point. Boxes that are empty after clamping are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tissue_oracle.tools.errors import ConfigError

ProfileName = Literal["qwen3-vl", "gemini", "generic"]

#: How far outside 0-1000 a coordinate may stray and still be clamped rather than dropped.
CLAMP_SLACK = 100.0
NORM = 1000.0


@dataclass(frozen=True, kw_only=True)
class ModelProfile:
    """Key names and coordinate orders of one model family."""

    name: ProfileName
    """Profile name, as a spec or policy option names it."""
    box_key: str
    """JSON key holding a box's four numbers."""
    box_order: Literal["xyxy", "yxyx"]
    """Order of a box's numbers."""
    point_key: str
    """JSON key holding a point's two numbers."""
    point_order: Literal["xy", "yx"]
    """Order of a point's numbers."""

    @property
    def box_format(self) -> str:
        """How the prompt spells a box, e.g. ``[x1, y1, x2, y2]``."""
        return "[x1, y1, x2, y2]" if self.box_order == "xyxy" else "[y1, x1, y2, x2]"

    @property
    def point_format(self) -> str:
        """How the prompt spells a point, e.g. ``[x, y]``."""
        return "[x, y]" if self.point_order == "xy" else "[y, x]"


PROFILES: dict[ProfileName, ModelProfile] = {
    "qwen3-vl": ModelProfile(
        name="qwen3-vl", box_key="bbox_2d", box_order="xyxy", point_key="point_2d", point_order="xy"
    ),
    "gemini": ModelProfile(
        name="gemini", box_key="box_2d", box_order="yxyx", point_key="point", point_order="yx"
    ),
    "generic": ModelProfile(
        name="generic", box_key="box", box_order="xyxy", point_key="point", point_order="xy"
    ),
}


def get_profile(name: str) -> ModelProfile:
    """The profile called ``name``; ``ConfigError`` lists the known ones."""
    if name not in PROFILES:
        raise ConfigError(f"unknown model profile {name!r}; profiles: {', '.join(map(repr, PROFILES))}")
    return PROFILES[name]


def profile_for_model(model: str, override: str | None = None) -> ModelProfile:
    """The profile for a model name: ``qwen*`` -> qwen3-vl, ``gemini*`` -> gemini, else generic."""
    if override:
        return get_profile(override)
    base = model.lower().rsplit("/", 1)[-1]
    if base.startswith("qwen"):
        return PROFILES["qwen3-vl"]
    if base.startswith("gemini"):
        return PROFILES["gemini"]
    return PROFILES["generic"]


@dataclass(frozen=True, kw_only=True)
class ImageFrame:
    """The level-0 rectangle an image showed: ``norm1000`` 0 and 1000 map to its edges."""

    x0: int
    """Level-0 x of the image's left edge."""
    y0: int
    """Level-0 y of the image's top edge."""
    width: int
    """Level-0 width the image covers."""
    height: int
    """Level-0 height the image covers."""


def _norm(value: object) -> float | None:
    """A norm1000 number clamped to 0-1000, or None when it is not a number or strays too far."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if value < -CLAMP_SLACK or value > NORM + CLAMP_SLACK:
        return None
    return min(max(float(value), 0.0), NORM)


def box_to_level0(
    values: object, profile: ModelProfile, frame: ImageFrame
) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` level-0 (exclusive ends) of a model box, or None to drop it.

    Reversed corners are put in order; a box empty after clamping is dropped.
    """
    if not isinstance(values, list | tuple) or len(values) != 4:
        return None
    nums = [_norm(v) for v in values]
    if any(n is None for n in nums):
        return None
    a, b, c, d = (float(n) for n in nums if n is not None)
    x1, y1, x2, y2 = (a, b, c, d) if profile.box_order == "xyxy" else (b, a, d, c)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    lx0 = frame.x0 + math.floor(x1 / NORM * frame.width)
    ly0 = frame.y0 + math.floor(y1 / NORM * frame.height)
    lx1 = frame.x0 + math.ceil(x2 / NORM * frame.width)
    ly1 = frame.y0 + math.ceil(y2 / NORM * frame.height)
    if lx1 <= lx0 or ly1 <= ly0:
        return None
    return lx0, ly0, lx1, ly1


def point_to_level0(values: object, profile: ModelProfile, frame: ImageFrame) -> tuple[int, int] | None:
    """``(x, y)`` level-0 pixel of a model point (inside the frame), or None to drop it."""
    if not isinstance(values, list | tuple) or len(values) != 2:
        return None
    nums = [_norm(v) for v in values]
    if any(n is None for n in nums):
        return None
    a, b = (float(n) for n in nums if n is not None)
    px, py = (a, b) if profile.point_order == "xy" else (b, a)
    x = frame.x0 + min(int(px / NORM * frame.width), frame.width - 1)
    y = frame.y0 + min(int(py / NORM * frame.height), frame.height - 1)
    return x, y


def level0_to_norm(x: int, y: int, frame: ImageFrame) -> tuple[int, int]:
    """The inverse, for fakes and tests: a level-0 pixel to rounded norm1000 ``(x, y)``."""
    return round((x - frame.x0 + 0.5) / frame.width * NORM), round((y - frame.y0 + 0.5) / frame.height * NORM)
