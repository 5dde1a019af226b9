"""CLAM's ``WholeSlideImage.segmentTissue``, re-implemented with scipy/scikit-image (no OpenCV).

Written from what CLAM's code does (mahmoodlab/CLAM ``wsi_core/WholeSlideImage.py``), step by step:

1. RGB -> HSV; the saturation channel in OpenCV's 0-255 scale (``255 * (max - min) / max``);
2. median blur of ``mthresh`` (7) px;
3. binary threshold: Otsu (``use_otsu``), else ``sthresh`` (8 in CLAM's presets);
4. closing with a ``close`` x ``close`` (4) square;
5. contour filtering: a foreground contour is kept when its area minus its holes' exceeds
   ``a_t`` reference patches (``ref_patch_size`` level-0 px squared, scaled to the segmentation
   level); of each kept contour's holes, the ``max_n_holes`` (8) largest above ``a_h`` (16)
   reference patches stay holes, the rest are filled.

CLAM segments at the level nearest downsample 64. CLAM's default ``a_t`` is 100 reference
patches (a 5120 px square at level 0), which drops needle biopsies and small fragments whole;
the bench states the ``a_t`` it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(kw_only=True, frozen=True)
class ClamParams:
    """``segmentTissue`` arguments (CLAM's names)."""

    use_otsu: bool = True
    sthresh: int = 8
    mthresh: int = 7
    close: int = 4
    a_t: float = 100.0
    a_h: float = 16.0
    max_n_holes: int = 8
    ref_patch_size: int = 512


def opencv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation as OpenCV's ``COLOR_RGB2HSV`` gives it for uint8 (0-255)."""
    arr = rgb[..., :3].astype(np.float32)
    high, low = arr.max(axis=2), arr.min(axis=2)
    sat = np.where(high > 0, 255.0 * (high - low) / np.maximum(high, 1.0), 0.0)
    return np.round(sat).astype(np.uint8)


def clam_mask(rgb: np.ndarray, downsample: float, params: ClamParams = ClamParams()) -> np.ndarray:
    """CLAM's tissue mask of ``rgb``, a whole-slide image at ``downsample`` level-0 px per pixel."""
    from skimage.filters import threshold_otsu

    sat = ndi.median_filter(opencv_saturation(rgb), size=params.mthresh, mode="nearest")
    if params.use_otsu:
        mask = sat > (threshold_otsu(sat) if sat.min() < sat.max() else 255)
    else:
        mask = sat > params.sthresh
    if params.close > 0:
        pad = params.close
        padded = np.pad(mask, pad)
        closed = ndi.binary_closing(padded, structure=np.ones((params.close, params.close), dtype=bool))
        mask = closed[pad:-pad, pad:-pad]
    ref_area = params.ref_patch_size**2 / (downsample * downsample)
    return _filter_contours(mask, params.a_t * ref_area, params.a_h * ref_area, params.max_n_holes)


def _filter_contours(mask: np.ndarray, min_area: float, min_hole: float, max_holes: int) -> np.ndarray:
    labels, _ = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))  # contours are 8-connected
    out = np.zeros_like(mask)
    for index, window in enumerate(ndi.find_objects(labels), start=1):
        if window is None:
            continue
        piece = labels[window] == index
        filled = np.asarray(ndi.binary_fill_holes(piece))
        holes = filled & ~piece
        hole_labels, n_holes = ndi.label(holes)
        areas = np.bincount(hole_labels.ravel(), minlength=n_holes + 1)[1:]
        if float(piece.sum()) <= min_area:
            continue
        kept = np.zeros(n_holes + 1, dtype=bool)
        for hole in np.argsort(-areas)[:max_holes]:
            kept[hole + 1] = areas[hole] > min_hole
        out[window] |= filled & ~kept[hole_labels]
    return out
