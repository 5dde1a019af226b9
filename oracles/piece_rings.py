"""Where the pieces of a mask touch something: the ring just outside each piece, and the share of
it that lies on a given mask (used by the ink and precipitate rules of the classical map). Not a VLM.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def padded_box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The bounding box of ``mask``'s pixels (some must be set), grown by ``pad`` within the image.

    A rule that looks only ``pad`` pixels beyond its pieces gives the same answer inside this box
    as over the whole image, at the box's cost."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        slice(max(0, int(rows[0]) - pad), min(h, int(rows[-1]) + 1 + pad)),
        slice(max(0, int(cols[0]) - pad), min(w, int(cols[-1]) + 1 + pad)),
    )


def ring_shares(labels: np.ndarray, count: int, target: np.ndarray, width: int) -> np.ndarray:
    """Per labelled piece 1..count, the share of the ring ``width`` pixels wide just outside it
    that lies on ``target`` (0 where a piece has no ring). A ring pixel within reach of two pieces
    counts for the one with the larger label."""
    grown = ndi.grey_dilation(labels, size=2 * width + 1)
    ring = (grown > 0) & (labels == 0)
    index = np.arange(1, count + 1)
    ring_area = ndi.sum_labels(ring, grown, index)
    return np.asarray(
        ndi.sum_labels(target & ring, grown, index) / np.maximum(ring_area, 1), dtype=np.float64
    )
