"""Small operations on boolean pixel masks shared by the classical map's rules."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def drop_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    """``mask`` without its (4-connected) components smaller than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    labels, count = ndi.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_area
    keep[0] = False
    return np.asarray(keep[labels])
