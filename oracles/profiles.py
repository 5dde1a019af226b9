"""Model profiles: how each model family writes boxes and points, and the ONE model -> level-0 conversion.

Qwen3-VL answers ``{"bbox_2d": [x1, y1, x2, y2]}`` and ``{"point_2d": [x, y]}``; Gemini answers
``{"box_2d": [y1, x1, y2, x2]}`` and ``{"point": [y, x]}``; both in 0-1000 normalised image
coordinates (``norm1000``). Qwen2.5-VL writes Qwen's keys in *absolute pixels* of the image its
processor saw, after ``smart_resize`` rounded each side to a multiple of 28 within min/max pixels
(QwenLM/Qwen2.5-VL#676 and #721; ``qwen_vl_utils.smart_resize``). The oracle therefore sends
pixel-profile images already at :func:`smart_resize` size, so the processor leaves them alone
and the pixels are those of the image we sent (``ImageFrame.pixel_width``/``pixel_height``).

Every model coordinate becomes a level-0 coordinate here and nowhere else: :func:`box_to_level0`
and :func:`point_to_level0`, given the level-0 rectangle the image showed (:class:`ImageFrame`).
Values a little outside the image are clamped (models overshoot edges); values far outside
(another convention, garbage) drop the box or point. Boxes empty after clamping are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tissue_oracle.tools.errors import ConfigError

ProfileName = Literal["qwen3-vl", "qwen2.5-vl", "gemini", "generic"]
CoordinateScale = Literal["norm1000", "pixels"]

#: How far outside the image a coordinate may stray (as a fraction of the full scale) and still
#: be clamped rather than dropped.
CLAMP_SLACK_FRACTION = 0.1
NORM = 1000.0
#: Qwen2.5-VL's processor: sides are multiples of 28 (14 px patches merged 2x2), within
#: min_pixels and max_pixels (its preprocessor_config.json and qwen_vl_utils defaults).
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 16384 * 28 * 28


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
    scale: CoordinateScale = "norm1000"
    """``norm1000`` (0-1000 over the image) or ``pixels`` (of the image as sent, at smart_resize size)."""

    def coordinate_rule(self, width: int, height: int) -> str:
        """The prompt's sentence saying what the numbers mean, for a ``width`` x ``height`` image."""
        if self.scale == "pixels":
            return (
                f"Coordinates are absolute pixels of this {width}x{height} image: x from 0 (left edge) to "
                f"{width} (right edge), y from 0 (top edge) to {height} (bottom edge)."
            )
        return (
            "Coordinates are normalised to 0-1000 over the image: 0 is the left or top edge, "
            "1000 the right or bottom edge."
        )

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
    "qwen2.5-vl": ModelProfile(
        name="qwen2.5-vl",
        box_key="bbox_2d",
        box_order="xyxy",
        point_key="point_2d",
        point_order="xy",
        scale="pixels",
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
    """The profile for a model name: ``qwen2.5*`` -> qwen2.5-vl (absolute pixels), other ``qwen*`` ->
    qwen3-vl, ``gemini*`` -> gemini, else generic."""
    if override:
        return get_profile(override)
    base = model.lower().rsplit("/", 1)[-1]
    if base.startswith(("qwen2.5", "qwen2_5")):
        return PROFILES["qwen2.5-vl"]
    if base.startswith("qwen"):
        return PROFILES["qwen3-vl"]
    if base.startswith("gemini"):
        return PROFILES["gemini"]
    return PROFILES["generic"]


@dataclass(frozen=True, kw_only=True)
class ImageFrame:
    """The level-0 rectangle an image showed: the model's 0 and full scale map to its edges."""

    x0: int
    """Level-0 x of the image's left edge."""
    y0: int
    """Level-0 y of the image's top edge."""
    width: int
    """Level-0 width the image covers."""
    height: int
    """Level-0 height the image covers."""
    pixel_width: int = 0
    """Width in pixels of the image as sent (the full scale of ``pixels`` profiles)."""
    pixel_height: int = 0
    """Height in pixels of the image as sent."""

    def full_scale(self, profile: ModelProfile) -> tuple[float, float]:
        """The model value of the image's right and bottom edges: 1000, or the sent image's pixels."""
        if profile.scale == "norm1000":
            return NORM, NORM
        if self.pixel_width <= 0 or self.pixel_height <= 0:
            raise ValueError(f"profile {profile.name!r} reads pixels: the frame needs the sent image's size")
        return float(self.pixel_width), float(self.pixel_height)


def _unit(value: object, full: float) -> float | None:
    """A model number as a 0-1000 fraction of its axis, clamped, or None when it is not a number
    or strays too far outside the image."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:  # an int with hundreds of digits can't become a float
        if not math.isfinite(value):
            return None
    except OverflowError:
        return None
    slack = CLAMP_SLACK_FRACTION * full
    if value < -slack or value > full + slack:
        return None
    return min(max(float(value), 0.0), full) / full * NORM


def _pair(a: object, b: object, first_is_x: bool, scale: tuple[float, float]) -> tuple[float, float] | None:
    """``(x, y)`` in norm1000 of two model numbers given in ``xy`` or ``yx`` order, or None."""
    x_value, y_value = (a, b) if first_is_x else (b, a)
    x, y = _unit(x_value, scale[0]), _unit(y_value, scale[1])
    return None if x is None or y is None else (x, y)


def box_to_level0(
    values: object, profile: ModelProfile, frame: ImageFrame
) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` level-0 (exclusive ends) of a model box, or None to drop it.

    Reversed corners are put in order; a box empty after clamping is dropped.
    """
    if not isinstance(values, list | tuple) or len(values) != 4:
        return None
    scale = frame.full_scale(profile)
    first = _pair(values[0], values[1], profile.box_order == "xyxy", scale)
    second = _pair(values[2], values[3], profile.box_order == "xyxy", scale)
    if first is None or second is None:
        return None
    (x1, y1), (x2, y2) = first, second
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
    found = _pair(values[0], values[1], profile.point_order == "xy", frame.full_scale(profile))
    if found is None:
        return None
    px, py = found
    x = frame.x0 + min(int(px / NORM * frame.width), frame.width - 1)
    y = frame.y0 + min(int(py / NORM * frame.height), frame.height - 1)
    return x, y


def level0_to_norm(x: int, y: int, frame: ImageFrame) -> tuple[int, int]:
    """The inverse, for fakes and tests: a level-0 pixel to rounded norm1000 ``(x, y)``."""
    return round((x - frame.x0 + 0.5) / frame.width * NORM), round((y - frame.y0 + 0.5) / frame.height * NORM)


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """``(height, width)`` Qwen2.5-VL's processor resizes an image to (``qwen_vl_utils.smart_resize``).

    Each side is rounded to a multiple of ``factor``; the area is then brought within
    ``min_pixels``..``max_pixels`` keeping the aspect ratio.
    """
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
