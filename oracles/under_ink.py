"""Tissue under a wide pen stroke: ink pixels that hold more than the pen's own ink.

Marker ink and stain both absorb light, so under a stroke their optical densities add
(Beer-Lambert). A stroke over glass has its ink's own OD colour everywhere; its streaks and soft
edges change how much ink there is, not its colour. Where the stroke crosses tissue, the stain's
OD adds a colour the ink does not have.

Per stroke (a connected piece of the ink mask), the rule first finds its inks: the colour classes
(black, green, blue, red) that its rim shows where it faces glass, and wide, even areas of one colour (a
stroke drawn over another one; tissue is mottled). It then measures how far each pixel's OD lies
from any mix of one or two of those inks, in any amounts (so streaks, soft edges and crossings
of two strokes lie on it). Pixels that lie off it by more than a fixed floor and a multiple of the
stroke's own median, over at least a quarter patch, are tissue.

What it cannot see: tissue whose OD colour is a mix of the stroke's inks (neutral tissue under
black ink), and an ink whose rim never faces glass and that is not even (it reads as tissue).

Not a VLM: part of the classical map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.tools.clean import remove_small_components

_NEUTRAL, _GREEN, _BLUE, _RED = 1, 2, 3, 4


@dataclass(kw_only=True, frozen=True)
class UnderInkParams:
    """Thresholds of the under-ink rule (summed OD units, after a 1/8-patch mean)."""

    stray_floor: float = 0.03
    """A pixel's OD colour must stray from its stroke's by at least this much ..."""
    stray_factor: float = 3.0
    """... and by this many times the stroke's own median stray (streaky or mixed inks stray more)."""
    min_group_area: float = 0.25
    """Colour areas of a stroke, and pieces found under ink, under this share of a patch are ignored."""
    glass_od: float = 0.1
    """Summed OD under which a pixel beside a stroke is glass."""
    min_rim_share: float = 0.03
    """A colour class of the stroke's glass-facing rim is one of its inks when it holds this share."""
    even_stray: float = 0.01
    """A colour area of a stroke this even (median stray from its own colour) is ink ..."""
    even_area: float = 1.0
    """... when it covers at least this many patches."""


DEFAULT_UNDER_INK = UnderInkParams()


def pen_colour(od_rgb: np.ndarray) -> np.ndarray:
    """Ink colour class per pixel from its OD colour: neutral (black), red (red absorbed least),
    green (red and blue absorbed most) or blue (blue absorbed least).

    Without the red class, a red stroke and a blue one that crosses or touches it fell in one
    class whose median is neither ink, and both inks read as tissue under it."""
    high, low = od_rgb.max(axis=-1), od_rgb.min(axis=-1)
    neutral = (high - low) < 0.35 * np.maximum(od_rgb.mean(axis=-1), 1e-3)
    red = (od_rgb[..., 0] < od_rgb[..., 1]) & (od_rgb[..., 0] < od_rgb[..., 2])
    green = od_rgb[..., 1] <= od_rgb[..., 2]
    colour = np.where(red, _RED, np.where(green, _GREEN, _BLUE))
    return np.where(neutral, _NEUTRAL, colour).astype(np.uint8)


def tissue_under_ink(
    od_rgb: np.ndarray, ink: np.ndarray, patch_px: int, params: UnderInkParams = DEFAULT_UNDER_INK
) -> np.ndarray:
    """Ink pixels (bool H, W) whose OD colour shows stain under the pen; ``od_rgb`` is (H, W, 3)."""
    out = np.zeros(ink.shape, dtype=bool)
    if not ink.any():
        return out
    k = max(3, patch_px // 8) | 1
    smooth = np.asarray(ndi.uniform_filter(od_rgb, size=(k, k, 1)), dtype=np.float32)
    glass = (smooth.sum(axis=-1) < params.glass_od) & ~ink
    strokes, _ = ndi.label(ink)
    min_area = params.min_group_area * patch_px * patch_px
    pad = k + 1
    for index, window in enumerate(ndi.find_objects(strokes), start=1):
        if window is None:
            continue
        rows, cols = (slice(max(0, w.start - pad), w.stop + pad) for w in window)
        in_stroke = strokes[rows, cols] == index
        local = smooth[rows, cols]
        inks = _stroke_inks(local, in_stroke, glass[rows, cols], k, patch_px * patch_px, params)
        if not inks:
            continue
        stray = _cone_distance(local, inks)
        level = float(np.median(stray[in_stroke]))
        out[rows, cols] |= in_stroke & (stray > max(params.stray_floor, params.stray_factor * level))
    return remove_small_components(out, math.ceil(min_area))[0]


def _stroke_inks(
    local: np.ndarray,
    in_stroke: np.ndarray,
    glass: np.ndarray,
    k: int,
    patch_area: int,
    params: UnderInkParams,
) -> list[np.ndarray]:
    """The median OD of each ink colour (black, green, blue, red) of one stroke.

    A colour is an ink when the stroke's rim shows it where it faces glass (a stroke's rim over
    glass shows its inks alone), or when it covers a wide, even area of the stroke (a stroke drawn
    over another one: its colour only varies in density, where tissue is mottled). The rim is the
    band ``k`` to ``2k`` px deep (``k``: the smoothing width) within ``2k`` px of glass.
    """
    depth = ndi.distance_transform_edt(in_stroke)
    rim = in_stroke & (depth > k) & (depth <= 2 * k) & ndi.binary_dilation(glass, iterations=2 * k)
    colour = pen_colour(local)
    inks = []
    for c in (_NEUTRAL, _GREEN, _BLUE, _RED):
        group = in_stroke & (colour == c)
        if group.sum() < params.min_group_area * patch_area:
            continue
        median = np.median(local[group], axis=0)
        on_rim = (rim & group).sum() >= params.min_rim_share * max(int(rim.sum()), 1)
        even = float(np.median(_stray(local[group], median))) < params.even_stray
        if on_rim or (even and group.sum() >= params.even_area * patch_area):
            inks.append(median)
    return inks


def _stray(od_rgb: np.ndarray, median: np.ndarray) -> np.ndarray:
    """Length of each OD vector's part orthogonal to ``median``'s direction."""
    unit = median / max(float(np.linalg.norm(median)), 1e-6)
    along = od_rgb @ unit
    return np.asarray(np.linalg.norm(od_rgb - along[..., None] * unit, axis=-1), dtype=np.float32)


def _cone_distance(od_rgb: np.ndarray, inks: list[np.ndarray]) -> np.ndarray:
    """Per pixel, how far its OD lies from any mix of one or two of the stroke's inks (any amounts).

    One ink: the OD's part orthogonal to the ink's direction. Two inks (strokes that cross, soft
    edges included): what a non-negative mix of both leaves unexplained.
    """
    distance = np.min([_stray(od_rgb, ink_od) for ink_od in inks], axis=0)
    flat = od_rgb.reshape(-1, 3).T
    for i in range(len(inks)):
        for j in range(i + 1, len(inks)):
            basis = np.stack([inks[i], inks[j]], axis=1)  # (3, 2)
            coef, *_ = np.linalg.lstsq(basis, flat, rcond=None)  # (2, N)
            left = np.linalg.norm(flat - basis @ coef, axis=0)
            inside = (coef >= 0).all(axis=0)
            distance = np.minimum(distance, np.where(inside, left, np.inf).reshape(distance.shape))
    return np.asarray(distance, dtype=np.float32)
