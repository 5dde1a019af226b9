"""Pixel conversions shared by the in-memory readers: anything to RGB uint8, and 2x pyramids.

Conversions work in row strips so that temporaries stay small next to the image itself.
Rules, so that nothing is guessed per image:

- grey is replicated to RGB; an alpha channel is composited onto white;
- unsigned integers are scaled by their type's full range (uint16 / 257), bool is 0 or 255;
- floats must lie in [0, 1] (values outside are clipped).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tissue_oracle.tools.errors import UnsupportedSlideError

_STRIP_ROWS = 512
#: Pyramids stop once a level fits in this many pixels a side.
_TOP_LEVEL_SIDE = 512
#: Microscope scans lie within this range of microns per pixel; a resolution tag outside it is
#: a photographic default (72 dpi is 353 um/px) and is ignored rather than believed.
_PLAUSIBLE_MPP = (0.05, 50.0)


def to_rgb_uint8(image: np.ndarray, path: Path | None) -> np.ndarray:
    """Any (H, W), (H, W, 1|2|3|4) array as a new-or-same RGB uint8 (H, W, 3) array."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedSlideError(
            path,
            f"pixel array of shape {image.shape} is not grey, grey+alpha, RGB or RGBA",
            "Give an (H, W), (H, W, 3) or (H, W, 4) image; multichannel or z-stack images are not supported",
        )
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return image
    if not (image.dtype == np.bool_ or image.dtype.kind in "uf"):
        raise UnsupportedSlideError(
            path,
            f"pixel type {image.dtype} is not supported",
            "Give unsigned-integer, bool or 0-1 float pixels",
        )
    out = np.empty((*image.shape[:2], 3), dtype=np.uint8)
    for r0 in range(0, image.shape[0], _STRIP_ROWS):
        out[r0 : r0 + _STRIP_ROWS] = _strip_to_rgb(image[r0 : r0 + _STRIP_ROWS])
    return out


def _strip_to_rgb(strip: np.ndarray) -> np.ndarray:
    unit = _to_unit_float(strip)
    channels = strip.shape[2]
    colour = unit[:, :, :3] if channels >= 3 else np.repeat(unit[:, :, :1], 3, axis=2)
    if channels in (2, 4):
        alpha = unit[:, :, -1:]
        colour = colour * alpha + (1.0 - alpha)
    return np.rint(colour * 255.0).astype(np.uint8)


def _to_unit_float(strip: np.ndarray) -> np.ndarray:
    if strip.dtype == np.bool_:
        return strip.astype(np.float32)
    if strip.dtype.kind == "u":
        return strip.astype(np.float32) / float(np.iinfo(strip.dtype).max)
    return np.clip(np.nan_to_num(strip.astype(np.float32)), 0.0, 1.0)


def halve(image: np.ndarray) -> np.ndarray:
    """RGB uint8 at half size, ``ceil(h/2) x ceil(w/2)``, each pixel the mean of its 2x2 block.

    Edge blocks cut short by an odd size repeat their last row/column, so they average the
    pixels that exist.
    """
    height, width = image.shape[:2]
    out = np.empty((math.ceil(height / 2), math.ceil(width / 2), 3), dtype=np.uint8)
    for r0 in range(0, height, 2 * _STRIP_ROWS):
        strip = image[r0 : r0 + 2 * _STRIP_ROWS]
        pad = ((0, strip.shape[0] % 2), (0, width % 2), (0, 0))
        if any(p[1] for p in pad):
            strip = np.pad(strip, pad, mode="edge")
        h2, w2 = strip.shape[0] // 2, strip.shape[1] // 2
        sums = strip.reshape(h2, 2, w2, 2, 3).sum(axis=(1, 3), dtype=np.uint16)
        out[r0 // 2 : r0 // 2 + h2] = ((sums + 2) // 4).astype(np.uint8)
    return out


def build_pyramid(level0: np.ndarray) -> list[np.ndarray]:
    """Level 0 then successive halvings until a level fits in ``_TOP_LEVEL_SIDE`` a side."""
    levels = [level0]
    while max(levels[-1].shape[:2]) > _TOP_LEVEL_SIDE:
        levels.append(halve(levels[-1]))
    return levels


def plausible_mpp(microns_per_pixel: float | None) -> float | None:
    """The value when it is a microscope's resolution, else None (see ``_PLAUSIBLE_MPP``)."""
    if microns_per_pixel is None or not math.isfinite(microns_per_pixel):
        return None
    low, high = _PLAUSIBLE_MPP
    return microns_per_pixel if low <= microns_per_pixel <= high else None
