"""Thumbnail-level baselines, done the way the tools people actually use do them.

- ``otsu_mask``: CLAM's segmentation (``WholeSlideImage.segmentTissue`` with ``use_otsu``):
  HSV saturation, median blur, Otsu threshold, morphological closing, then contour filtering,
  which we express as small-object removal and filling of small holes.
- ``kmeans_mask``: a histolab-style clustering: per-pixel optical density (OD = -log10(I/255)),
  K-means with K=2, the cluster with the larger mean OD is tissue, then morphology
  (opening, small-object removal, hole filling).

Both run on an RGB thumbnail (``thumb_xy`` frame) and return a boolean mask of the same shape;
``to_patch_grid`` maps it onto the level-0 patch grid with the same coverage threshold the
truth uses. Area parameters are in units of one patch's area, as CLAM's ``a_t``/``a_h`` are
(CLAM's defaults, 100 and 16 reference patches, assume large resections; a needle core is a
few tens of patches, so the defaults here are smaller and stated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.bench.evaluation.labelled import mask_to_patches


@dataclass(kw_only=True, frozen=True)
class MorphParams:
    """Morphology after thresholding; areas in patch areas, lengths in thumbnail pixels."""

    patch_area_px: float
    """One patch's area in thumbnail pixels (``(patch_size / downsample) ** 2``)."""
    min_object_patches: float = 1.0
    """Tissue components smaller than this are removed (CLAM ``a_t``)."""
    max_hole_patches: float = 16.0
    """Background holes smaller than this are filled (CLAM ``a_h``)."""
    close_px: int = 4
    """Side of the square closing element (CLAM ``close``)."""
    median_px: int = 7
    """Median blur kernel (CLAM ``mthresh``)."""


def _clean(mask: np.ndarray, params: MorphParams) -> np.ndarray:
    import skimage.morphology as morphology

    min_obj = max(1, round(params.min_object_patches * params.patch_area_px))
    max_hole = max(1, round(params.max_hole_patches * params.patch_area_px))
    mask = morphology.remove_small_objects(mask, max_size=min_obj - 1) if min_obj > 1 else mask
    return morphology.remove_small_holes(mask, max_size=max_hole - 1) if max_hole > 1 else mask


def otsu_mask(thumb: np.ndarray, params: MorphParams) -> np.ndarray:
    """CLAM-style tissue mask of an RGB uint8 thumbnail (True is tissue), ``thumb_xy`` frame."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    sat = (rgb2hsv(thumb[..., :3])[..., 1] * 255).astype(np.uint8)
    sat = ndi.median_filter(sat, size=max(1, params.median_px))
    if sat.min() == sat.max():
        return np.zeros(sat.shape, dtype=bool)
    mask = sat > threshold_otsu(sat)
    if params.close_px > 1:
        mask = ndi.binary_closing(mask, structure=np.ones((params.close_px, params.close_px)), border_value=0)
    return _clean(mask, params)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-channel optical density ``-log10((I + 1) / 256)`` of RGB uint8, float (H, W, 3)."""
    return -np.log10((rgb[..., :3].astype(np.float32) + 1.0) / 256.0)


def kmeans_mask(thumb: np.ndarray, params: MorphParams, *, seed: int = 0, sample: int = 20000) -> np.ndarray:
    """K=2 clustering of optical density; the denser cluster is tissue. ``thumb_xy`` frame."""
    from sklearn.cluster import KMeans

    od = optical_density(thumb)
    flat = od.reshape(-1, 3)
    rng = np.random.default_rng(seed)
    fit_on = flat if flat.shape[0] <= sample else flat[rng.choice(flat.shape[0], sample, replace=False)]
    if np.ptp(fit_on, axis=0).max() == 0:
        return np.zeros(thumb.shape[:2], dtype=bool)
    km = KMeans(n_clusters=2, n_init=4, random_state=seed).fit(fit_on)
    tissue_cluster = int(np.argmax(km.cluster_centers_.sum(axis=1)))
    mask = (km.predict(flat) == tissue_cluster).reshape(thumb.shape[:2])
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3)))
    return _clean(mask, params)


def to_patch_grid(
    thumb_mask: np.ndarray, slide_width: int, slide_height: int, patch_size: int, threshold: float = 0.5
) -> np.ndarray:
    """A thumbnail mask onto the level-0 patch grid: tissue where coverage >= ``threshold``."""
    return mask_to_patches(thumb_mask, slide_width, slide_height, patch_size, threshold)


BASELINES = {"otsu": otsu_mask, "kmeans": kmeans_mask}
