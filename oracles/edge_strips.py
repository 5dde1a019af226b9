"""Weak strips along the image's edge that are not tissue (the classical map's rule 5, second part).

A scan's edge shows the slide's dark border, a label's shadow or tinted mounting medium beyond the
coverslip. Where the map holds weak (unsaturated) pixels within a patch of the edge that run along
it, at least 4 patches long and 4x their depth, they are one of those, not tissue. Not a VLM.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


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
        strips[index] = on_edge and max(height, width) >= max(4 * patch, 4 * min(height, width))
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
