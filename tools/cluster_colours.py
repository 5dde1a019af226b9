"""Stage 2, cluster_colours: the coarse tissue mask M1 by two-pass K-means in CIELAB.

Global pass: K=2 over the whole thumbnail; the cluster holding most pixels is background, and
its centroid is the slide's background colour. (On a slide that is mostly tissue the majority
cluster is tissue and M1 comes out inverted; ``background_rule="lightest"`` picks the cluster
with the highest L* instead. The paper's rule stays the default.) Local pass: K=3 inside each box; the cluster
whose centroid is nearest to the global background centroid is background, the rest tissue.
M1 is the union of the boxes' tissue; outside every box it is background.

Everything here is in the thumb_xy frame of a thumbnail at ``downsample``: thumbnail pixel
``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``. K-means fits on at most
``max_samples`` pixels drawn with a fixed seed, then labels every pixel, so results are
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.tools.schemas import Box
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import ClusterColoursSettings

#: A box in the thumb_xy frame: (x0, y0, x1, y1), half-open.
ThumbRect = tuple[int, int, int, int]


class ClusterColoursParams(ClusterColoursSettings):
    """Settings of cluster_colours (defaults: the paper)."""

    downsample: float = Field(default=64.0, gt=1.0)
    """Thumbnail downsample from level 0; M1 is at this resolution (the policy's ``thumbnail.downsample``)."""
    max_samples: int = Field(default=20_000, ge=100)
    """Pixels K-means fits on, per pass (a seeded random subset when there are more)."""
    n_init: int = Field(default=3, ge=1, le=20)
    """K-means restarts per fit."""
    random_state: int = 0
    """Seed of the pixel subset and of K-means."""


class ClusterColoursInput(ClusterColoursParams):
    """Settings, the regions, and the thumbnail when the caller has it."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    boxes: list[Box]
    """Regions from ground_boxes, level-0 frame."""
    thumbnail: np.ndarray | None = Field(default=None, repr=False, exclude=True)
    """RGB uint8 thumbnail at ``downsample``; None reads it from ``deps.slide``."""


class BoxMask(BaseModel):
    """One box's local tissue mask, cropped to the box in the thumb_xy frame."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    box: Box
    """The region, level-0 frame."""
    rect: ThumbRect
    """The same region in the thumb_xy frame: (x0, y0, x1, y1), half-open."""
    mask: np.ndarray = Field(repr=False)
    """Boolean (y1 - y0, x1 - x0) tissue mask of the box."""

    @property
    def coverage(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


class ClusterColoursOutput(BaseModel):
    """The coarse mask M1 and the parts it was built from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mask: np.ndarray = Field(repr=False)
    """Boolean M1 over the whole thumbnail (thumb_xy frame), shape (ceil(H/ds), ceil(W/ds))."""
    downsample: float
    """Level-0 pixels per M1 pixel."""
    box_masks: list[BoxMask]
    """Per-box tissue masks, in input box order."""
    background_lab: tuple[float, float, float]
    """Global background centroid (CIELAB L*, a*, b*)."""

    @property
    def coverage(self) -> float:
        """Fraction of the thumbnail M1 calls tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass(kw_only=True, frozen=True)
class CoarseMask:
    """What the pure two-pass clustering returns."""

    mask: np.ndarray
    """Boolean M1, thumb_xy frame."""
    box_masks: list[np.ndarray]
    """Per-box boolean masks, cropped to each rect."""
    background_lab: np.ndarray
    """Global background centroid, CIELAB."""


# --------------------------------------------------------------------------- pure parts


def box_to_thumb(box: Box, downsample: float, thumb_shape: tuple[int, ...]) -> ThumbRect:
    """A level-0 box as the thumb_xy pixels it touches (at least one pixel), clipped to the thumbnail."""
    height, width = thumb_shape[:2]
    x0 = min(max(0, math.floor(box.x0 / downsample)), width - 1)
    y0 = min(max(0, math.floor(box.y0 / downsample)), height - 1)
    x1 = min(width, max(x0 + 1, math.ceil(box.x1 / downsample)))
    y1 = min(height, max(y0 + 1, math.ceil(box.y1 / downsample)))
    return (x0, y0, x1, y1)


def _fit_kmeans(pixels: np.ndarray, k: int, params: ClusterColoursParams) -> np.ndarray:
    """Centroids (k' x 3) of K-means on a seeded subset; k' < k when there are fewer distinct colours."""
    rng = np.random.default_rng(params.random_state)
    if len(pixels) > params.max_samples:
        pixels = pixels[rng.choice(len(pixels), params.max_samples, replace=False)]
    distinct = np.unique(pixels, axis=0)
    if len(distinct) <= k:
        # K-means can't find more clusters than colours (and warns); the colours are the centroids.
        return distinct
    from sklearn.cluster import KMeans  # here, not at import: a whole-slide pass never clusters

    km = KMeans(n_clusters=k, n_init=params.n_init, random_state=params.random_state)
    return np.asarray(km.fit(pixels).cluster_centers_)


def _nearest(pixels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each pixel (N x 3 against K x 3)."""
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every c, so it drops out and
    # memory stays N x K instead of N x K x 3.
    cents = np.asarray(centroids, dtype=np.float32)
    scores = (cents**2).sum(axis=1)[None, :] - 2.0 * (pixels @ cents.T)
    return np.argmin(scores, axis=1)


def coarse_mask(
    thumbnail: np.ndarray, rects: Sequence[ThumbRect], params: ClusterColoursParams
) -> CoarseMask:
    """Two-pass CIELAB K-means on an RGB uint8 thumbnail; ``rects`` are boxes in its thumb_xy frame."""
    from skimage.color import rgb2lab  # here, like KMeans: start-up pays only for what runs

    lab = rgb2lab(np.asarray(thumbnail)[:, :, :3]).astype(np.float32)
    flat = lab.reshape(-1, 3)
    centroids = _fit_kmeans(flat, params.k_global, params)
    if params.background_rule == "lightest":
        background = centroids[int(np.argmax(centroids[:, 0]))]
    else:
        counts = np.bincount(_nearest(flat, centroids), minlength=len(centroids))
        background = centroids[int(np.argmax(counts))]
    mask = np.zeros(lab.shape[:2], dtype=bool)
    box_masks = []
    for x0, y0, x1, y1 in rects:
        pixels = lab[y0:y1, x0:x1].reshape(-1, 3)
        local = _fit_kmeans(pixels, params.k_local, params)
        bg_index = int(np.argmin(((local - background) ** 2).sum(axis=1)))
        tissue = (_nearest(pixels, local) != bg_index).reshape(y1 - y0, x1 - x0)
        mask[y0:y1, x0:x1] |= tissue
        box_masks.append(tissue)
    return CoarseMask(mask=mask, box_masks=box_masks, background_lab=background)


# --------------------------------------------------------------------------- the stage


def cluster_colours(inp: ClusterColoursInput, deps: StageDeps) -> ClusterColoursOutput:
    """Build M1 over ``inp.boxes`` (blocking CPU work: call it through ``deps.in_thread``)."""
    thumb = inp.thumbnail if inp.thumbnail is not None else deps.slide.thumbnail(inp.downsample)
    return cluster_thumbnail(thumb, inp)


def cluster_thumbnail(thumbnail: np.ndarray, inp: ClusterColoursInput) -> ClusterColoursOutput:
    """The stage on a given thumbnail (no slide needed)."""
    rects = [box_to_thumb(box, inp.downsample, thumbnail.shape) for box in inp.boxes]
    result = coarse_mask(thumbnail, rects, inp)
    return ClusterColoursOutput(
        mask=result.mask,
        downsample=inp.downsample,
        box_masks=[
            BoxMask(box=box, rect=rect, mask=m)
            for box, rect, m in zip(inp.boxes, rects, result.box_masks, strict=True)
        ],
        background_lab=(
            float(result.background_lab[0]),
            float(result.background_lab[1]),
            float(result.background_lab[2]),
        ),
    )
