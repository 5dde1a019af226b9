"""review_mask: mask rendering and overlay from tables, then per-region review over the classical reviewer."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from stage_support import FaultyOracle, core_boxes, core_slide_pixels, make_deps, open_core_slide

from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.tools.review_mask import ReviewMaskInput, grid_mask_for_crop, render_overlay, review_mask
from tissue_oracle.tools.schemas import Box, PatchGrid


@pytest.mark.parametrize(
    ("region", "crop_shape", "expected"),
    [
        # the whole 2x2-patch slide at 2 px per patch
        (Box(x0=0, y0=0, x1=20, y1=20), (4, 4), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]),
        # one patch, upsampled into a 3x3 crop
        (Box(x0=10, y0=0, x1=20, y1=10), (3, 3), [[0] * 3] * 3),
        # straddling the patch boundary: pixel centres decide
        (Box(x0=5, y0=5, x1=15, y1=15), (2, 2), [[1, 0], [0, 1]]),
        # running past the grid: clamped to the last patch
        (Box(x0=15, y0=15, x1=35, y1=35), (2, 2), [[1, 1], [1, 1]]),
    ],
)
def test_grid_mask_for_crop(region: Box, crop_shape: tuple[int, int], expected: list[list[int]]):
    tissue = np.array([[True, False], [False, True]])
    grid = PatchGrid(slide_width=20, slide_height=20, patch_size=10)
    assert grid_mask_for_crop(tissue, grid, region, crop_shape).astype(int).tolist() == expected


def test_render_overlay_tints_inside_outlines_the_edge_and_leaves_outside():
    crop = np.full((7, 7, 3), 200, dtype=np.uint8)
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    out = render_overlay(crop, mask, colour=(0, 100, 0), alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == crop.shape
    assert out[0, 0].tolist() == [200, 200, 200]  # outside untouched
    assert out[1, 1].tolist() == [0, 100, 0]  # the edge is opaque
    assert out[3, 3].tolist() == [100, 150, 100]  # the inside is blended
    assert np.array_equal(render_overlay(crop, np.zeros((7, 7), bool)), crop)
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(crop, np.zeros((3, 3), bool))


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


def masks() -> tuple[PatchGrid, np.ndarray]:
    _, truth = core_slide_pixels()
    grid = PatchGrid(slide_width=truth.shape[1], slide_height=truth.shape[0], patch_size=128)
    good = truth.reshape(grid.rows, 128, grid.cols, 128).mean(axis=(1, 3)) >= 0.5
    return grid, good


def test_good_mask_grades_well_and_a_half_mask_grades_badly(slide: Any):
    deps, recorder = make_deps(slide)
    grid, good = masks()
    bad = good.copy()
    bad[:, : grid.cols // 4] = False  # the left half of the first core is missed
    regions = core_boxes()
    out = asyncio.run(
        review_mask(ReviewMaskInput(regions=regions, grid=grid, tissue=bad, crop_size=512), deps)
    )
    assert [r.index for r in out.reviews] == [0, 1] and [r.region for r in out.reviews] == regions
    first, second = (r.grades for r in out.reviews)
    assert first is not None and second is not None
    assert first.recall >= 3 and second.worst <= 2
    assert first.notes.startswith("classical:")
    assert {c.stage for c in recorder.calls} == {"review_mask"} and {c.role for c in recorder.calls} == {
        "reviewer"
    }
    assert out.usage.calls == 2


def test_one_failed_review_leaves_the_other_region_graded(slide: Any):
    reviewer = FaultyOracle(inner=ClassicalOracle(), fail={"review": {1}})
    deps, _ = make_deps(slide, reviewer=reviewer, max_in_flight=1)
    grid, good = masks()
    out = asyncio.run(review_mask(ReviewMaskInput(regions=core_boxes(), grid=grid, tissue=good), deps))
    # Regions are read concurrently, so which one asks first is not fixed: exactly one fails.
    failed = [r for r in out.reviews if r.grades is None]
    assert len(failed) == 1 and "injected" in (failed[0].error or "")
    assert not out.budget_exhausted


def test_budget_refusal_marks_the_reviews(slide: Any):
    reviewer = FaultyOracle(inner=ClassicalOracle(), budget_after=1)
    deps, _ = make_deps(slide, reviewer=reviewer, max_in_flight=1)
    grid, good = masks()
    out = asyncio.run(review_mask(ReviewMaskInput(regions=core_boxes(), grid=grid, tissue=good), deps))
    assert out.budget_exhausted
    assert sorted(r.grades is not None for r in out.reviews) == [False, True]
    assert sorted(r.budget_exhausted for r in out.reviews) == [False, True]


def test_mask_on_another_grid_is_refused(slide: Any):
    deps, _ = make_deps(slide)
    grid, _good = masks()
    with pytest.raises(ValueError, match="does not match the grid"):
        asyncio.run(review_mask(ReviewMaskInput(regions=[], grid=grid, tissue=np.zeros((2, 2), bool)), deps))
