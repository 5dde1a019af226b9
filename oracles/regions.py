"""Region-level evidence from the pixel maps: sections on a thumbnail, points on a crop, mask agreement.

Each function works in the pixel frame of the image it is given (``thumb_xy`` or crop pixels)
and returns pixel coordinates; callers convert to level 0 with the scale they know.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.evidence import DEFAULT_PARAMS, EvidenceParams, fill_solid, pixel_evidence


def solid_tissue(rgb: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS) -> np.ndarray:
    """The tissue map closed over small gaps and with holes filled (lumina count as tissue)."""
    return fill_solid(pixel_evidence(rgb, params).tissue)


def section_boxes(
    rgb: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS, min_area_frac: float = 0.0005
) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(x0, y0, x1, y1)`` (exclusive ends), one per tissue section, largest first.

    Fragments closer than about 2% of the image side are merged into one section, as a person
    drawing boxes on a thumbnail would.
    """
    solid = solid_tissue(rgb, params)
    labels, count = ndi.label(solid)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(4, int(min_area_frac * solid.size))
    keep[0] = False
    kept = keep[labels]
    reach = max(1, round(0.02 * max(solid.shape)))
    merged, _ = ndi.label(ndi.binary_dilation(kept, iterations=reach))
    boxes = []
    for sl in ndi.find_objects(np.where(kept, merged, 0)):
        if sl is None:
            continue
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    return boxes


def _spread_maxima(score: np.ndarray, count: int, radius: int) -> list[tuple[int, int]]:
    """Up to ``count`` (x, y) maxima of ``score`` (> 0), each at least ``radius`` from the others."""
    work = score.astype(np.float32).copy()
    yy, xx = np.ogrid[: work.shape[0], : work.shape[1]]
    points: list[tuple[int, int]] = []
    for _ in range(count):
        flat = int(np.argmax(work))
        y, x = divmod(flat, work.shape[1])
        if work[y, x] <= 0:
            break
        points.append((x, y))
        work[(yy - y) ** 2 + (xx - x) ** 2 <= radius * radius] = 0
    return points


def crop_points(
    rgb: np.ndarray, per_class: int, params: EvidenceParams = DEFAULT_PARAMS
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(tissue, background) pixel points: deep inside tissue, and far from tissue and ink."""
    ev = pixel_evidence(rgb, params)
    solid = fill_solid(ev.tissue)
    radius = max(4, round(0.08 * max(rgb.shape[:2])))
    tissue_depth = ndi.distance_transform_edt(ev.tissue)
    clear = ~solid & ~ndi.binary_dilation(ev.pen | ev.speckle, iterations=2)
    background_depth = ndi.distance_transform_edt(clear)
    return (
        _spread_maxima(tissue_depth, per_class, radius),
        _spread_maxima(background_depth, per_class, radius),
    )


@dataclass(kw_only=True, frozen=True)
class MaskAgreement:
    """How a given mask agrees with the image evidence, in percent (0-100)."""

    precision_pct: float
    """Share of the mask that the evidence supports."""
    recall_pct: float
    """Share of the evidence that the mask covers."""
    mask_frac: float
    """Share of the crop the mask covers (0-1)."""
    evidence_frac: float
    """Share of the crop the evidence calls tissue (0-1)."""


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool)
    rows = (np.arange(shape[0]) * mask.shape[0] // shape[0]).clip(0, mask.shape[0] - 1)
    cols = (np.arange(shape[1]) * mask.shape[1] // shape[1]).clip(0, mask.shape[1] - 1)
    return mask.astype(bool)[np.ix_(rows, cols)]


def mask_agreement(
    rgb: np.ndarray, mask: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS
) -> MaskAgreement:
    """Precision and recall of ``mask`` (any resolution, resized to the crop) against the evidence.

    A band of about 1.5% of the crop side (at least 3 px) around each map is tolerated: masks on a patch
    grid have blocky edges that a reviewer would not hold against them.
    """
    evidence = solid_tissue(rgb, params)
    given = _resize_mask(np.asarray(mask), evidence.shape)
    band = max(3, round(0.015 * max(evidence.shape)))
    near_evidence = ndi.binary_dilation(evidence, iterations=band)
    near_mask = ndi.binary_dilation(given, iterations=band)
    n_mask, n_evidence = int(given.sum()), int(evidence.sum())
    precision = 100.0 if n_mask == 0 else 100.0 * float((given & near_evidence).sum()) / n_mask
    recall = 100.0 if n_evidence == 0 else 100.0 * float((evidence & near_mask).sum()) / n_evidence
    return MaskAgreement(
        precision_pct=precision,
        recall_pct=recall,
        mask_frac=n_mask / given.size,
        evidence_frac=n_evidence / evidence.size,
    )
