"""Stage 4, review_mask: a reviewer grades the mask on each region's crop.

Each region is read at a downsample that makes its long side about ``crop_size`` pixels; the
patch-grid tissue mask is rendered at that crop's resolution and drawn over it. The reviewer
sees the crop and the overlay (and, for non-VLM reviewers, the mask itself) and answers 1-4
precision and recall grades. Regions are reviewed concurrently and independently: a failed
review leaves that region's ``grades`` None and the others untouched.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from tissue_oracle.tools.errors import BudgetExceededError, OracleError, SlideError
from tissue_oracle.tools.point_ground import crop_downsample
from tissue_oracle.tools.schemas import Box, Grades, PatchGrid, ReviewRequest, Role, Usage
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import ReviewMaskSettings

RGB = tuple[int, int, int]


class ReviewMaskParams(ReviewMaskSettings):
    """Settings of review_mask."""

    overlay_colour: RGB = (0, 200, 0)
    """RGB of the tint and outline drawn over tissue."""
    overlay_alpha: float = Field(default=0.35, ge=0.0, le=1.0)
    """Opacity of the tint inside the mask (the outline is opaque)."""
    role: Role = "reviewer"
    """The role that answers."""


class ReviewMaskInput(ReviewMaskParams):
    """Settings, the regions, and the mask on the patch grid."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    regions: list[Box]
    """Regions to review, level-0 frame; results come back in this order."""
    grid: PatchGrid
    """The grid ``tissue`` is on."""
    tissue: np.ndarray = Field(repr=False, exclude=True)
    """Boolean (rows, cols) tissue mask, patch-grid frame."""


class RegionReview(BaseModel):
    """One region's grades, or why there are none."""

    index: int
    """Position of the region in the input list."""
    region: Box
    grades: Grades | None = None
    """None when the review failed or a budget stopped it."""
    error: str | None = None
    budget_exhausted: bool = False
    usage: Usage = Field(default_factory=Usage)


class ReviewMaskOutput(BaseModel):
    """Per-region grades in input order."""

    reviews: list[RegionReview]
    budget_exhausted: bool = False
    usage: Usage = Field(default_factory=Usage)


# --------------------------------------------------------------------------- pure parts


def grid_mask_for_crop(
    tissue: np.ndarray, grid: PatchGrid, region: Box, crop_shape: tuple[int, ...]
) -> np.ndarray:
    """The patch-grid ``tissue`` mask sampled at each crop pixel's centre; boolean (h, w).

    Crop pixel ``(i, j)`` of an ``h`` x ``w`` crop of ``region`` has its centre at level-0
    ``(x0 + (j + 0.5) * width / w, y0 + (i + 0.5) * height / h)``.
    """
    h, w = crop_shape[:2]
    xs = region.x0 + (np.arange(w) + 0.5) * region.width / w
    ys = region.y0 + (np.arange(h) + 0.5) * region.height / h
    cols = np.clip((xs // grid.patch_size).astype(np.int64), 0, grid.cols - 1)
    rows = np.clip((ys // grid.patch_size).astype(np.int64), 0, grid.rows - 1)
    return np.asarray(tissue, dtype=bool)[rows[:, None], cols[None, :]]


def render_overlay(
    crop: np.ndarray, mask: np.ndarray, colour: RGB = (0, 200, 0), alpha: float = 0.35
) -> np.ndarray:
    """RGB uint8 ``crop`` with ``mask`` tinted at ``alpha`` and its outline drawn opaque.

    The outline (mask pixels with a 4-neighbour outside the mask) shows the boundary even where
    the tint is faint against stained tissue.
    """
    image = np.asarray(crop)[:, :, :3].astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    if m.shape != image.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match crop shape {image.shape[:2]}")
    tint = np.asarray(colour, dtype=np.float32)
    image[m] = (1.0 - alpha) * image[m] + alpha * tint
    edge = m & ~ndimage.binary_erosion(m, border_value=0)
    image[edge] = tint
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the stage


async def _review_one(index: int, region: Box, inp: ReviewMaskInput, deps: StageDeps) -> RegionReview:
    out = RegionReview(index=index, region=region)
    try:
        crop = await deps.in_thread(deps.slide.read_box, region, crop_downsample(region, inp.crop_size))
        mask = grid_mask_for_crop(inp.tissue, inp.grid, region, crop.shape)
        overlay = render_overlay(crop, mask, inp.overlay_colour, inp.overlay_alpha)
        request = ReviewRequest(crop=crop, overlay=overlay, mask=mask, region=region)
        async with deps.slots:
            answer = await deps.oracle(inp.role).review(request, deps.context("review_mask", inp.role))
    except BudgetExceededError as exc:
        out.error, out.budget_exhausted = f"budget: {exc}", True
        return out
    except (OracleError, SlideError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    out.grades, out.usage = answer.grades, answer.usage
    return out


async def review_mask(inp: ReviewMaskInput, deps: StageDeps) -> ReviewMaskOutput:
    """Grade the mask on every region, concurrently; never raises on an oracle's account."""
    if inp.tissue.shape != inp.grid.shape:
        raise ValueError(f"tissue grid shape {inp.tissue.shape} does not match the grid {inp.grid.shape}")
    reviews = await asyncio.gather(*(_review_one(i, r, inp, deps) for i, r in enumerate(inp.regions)))
    usage = Usage()
    for review in reviews:
        usage = usage + review.usage
    return ReviewMaskOutput(
        reviews=list(reviews), budget_exhausted=any(r.budget_exhausted for r in reviews), usage=usage
    )
