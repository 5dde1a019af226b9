"""classify_patches: coverage, gate and scope from tables; the stage over the classical oracle."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest
from stage_support import CORES, FaultyOracle, core_boxes, core_slide_pixels, dice, make_deps, open_core_slide

from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.tools.classify_patches import (
    ClassifyPatchesInput,
    classify_patches,
    gate,
    merge_labels,
    patch_coverage,
    region_cells,
)
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS
from tissue_oracle.tools.schemas import Box, Exemplar, PatchGrid, PatchRef

DS = 16
PATCH = 256


def grid_of(w: int, h: int, size: int) -> PatchGrid:
    return PatchGrid(slide_width=w, slide_height=h, patch_size=size)


@pytest.mark.parametrize(
    ("mask_rows", "grid", "ds", "expected"),
    [
        # 4x4 mask at ds 8, 16 px patches: each patch is a 2x2 block of mask pixels
        (["##..", "#...", "....", "...#"], grid_of(32, 32, 16), 8.0, [[0.75, 0.0], [0.0, 0.25]]),
        # a slide edge inside the last patch: the thumbnail ends early, the patch is judged on what it has
        (["##.", "##.", "..."], grid_of(24, 24, 16), 8.0, [[1.0, 0.0], [0.0, 0.0]]),
        # patches smaller than a mask pixel sample the pixel they start in
        (["#.", ".."], grid_of(16, 16, 4), 8.0, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    ],
)
def test_patch_coverage(mask_rows: list[str], grid: PatchGrid, ds: float, expected: list[list[float]]):
    mask = np.array([[c == "#" for c in row] for row in mask_rows])
    assert np.allclose(patch_coverage(mask, grid, ds), expected)


@pytest.mark.parametrize(
    ("region", "expected_rows", "expected_cols"),
    [
        (None, (0, 3), (0, 4)),
        (Box(x0=0, y0=0, x1=1, y1=1), (0, 1), (0, 1)),
        (Box(x0=100, y0=100, x1=101, y1=101), (0, 1), (0, 1)),
        (Box(x0=100, y0=100, x1=129, y1=257), (0, 3), (0, 2)),  # 128 starts the next column
        (Box(x0=128, y0=256, x1=512, y1=384), (2, 3), (1, 4)),  # half-open: 256 is row 2
    ],
)
def test_region_cells(region: Box | None, expected_rows: tuple[int, int], expected_cols: tuple[int, int]):
    cells = region_cells(grid_of(500, 300, 128), region)
    expected = np.zeros((3, 4), dtype=bool)
    expected[slice(*expected_rows), slice(*expected_cols)] = True
    assert np.array_equal(cells, expected)


@pytest.mark.parametrize(
    ("gate_fraction", "expected"),
    [(0.05, [False, True, True, True]), (0.5, [False, False, True, True]), (0.0, [True, True, True, True])],
)
def test_gate(gate_fraction: float, expected: list[bool]):
    coverage = np.array([[0.0, 0.05, 0.5, 1.0]], dtype=np.float32)
    scope = np.ones((1, 4), dtype=bool)
    assert gate(coverage, scope, gate_fraction).tolist() == [expected]


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


@pytest.fixture(scope="module")
def coarse() -> np.ndarray:
    """A coarse mask M1 at ds 16: the truth, slightly eroded, as K-means would give."""
    from scipy import ndimage

    _, truth = core_slide_pixels()
    thumb = truth.reshape(truth.shape[0] // DS, DS, truth.shape[1] // DS, DS).mean(axis=(1, 3)) >= 0.5
    return ndimage.binary_erosion(thumb, iterations=2)


def truth_fraction() -> np.ndarray:
    """Fraction of each patch that is tissue in truth, (rows, cols)."""
    _, truth = core_slide_pixels()
    h, w = truth.shape
    return truth.reshape(h // PATCH, PATCH, w // PATCH, PATCH).mean(axis=(1, 3))


def inp(coarse: np.ndarray, **kw: Any) -> ClassifyPatchesInput:
    return ClassifyPatchesInput(coarse_mask=coarse, mask_downsample=DS, patch_size=PATCH, send_size=128, **kw)


def test_zero_shot_labels_match_truth_and_only_gated_patches_cost_calls(slide: Any, coarse: np.ndarray):
    deps, recorder = make_deps(slide)
    out = asyncio.run(classify_patches(inp(coarse, batch_size=3), deps))
    assert out.grid.shape == (12, 16) and out.mode == "zero_shot"
    coverage = patch_coverage(coarse, out.grid, DS)
    assert out.sent == int((coverage >= 0.05).sum()) and out.sent < out.grid.rows * out.grid.cols / 2
    assert out.gated_out == int(((coverage > 0) & (coverage < 0.05)).sum())
    assert out.answered == out.sent and out.failed == 0 and not out.budget_exhausted
    assert len(recorder.calls) == math.ceil(out.sent / 3)
    assert {c.stage for c in recorder.calls} == {"classify_patches"}
    frac = truth_fraction()
    assert out.tissue[frac >= 0.5].mean() > 0.95  # patches mostly tissue are found
    assert not out.tissue[frac == 0].any()  # and glass is never called tissue
    assert dice(out.tissue, frac >= 0.5) > 0.85
    sent_labels = [lab for lab in out.labels if lab.source == "zero_shot"]
    assert len(sent_labels) == out.sent and len(out.labels) == int(out.scope.sum())
    assert all(lab.focus in FOCUS_CODES for lab in sent_labels)
    assert out.focus.dtype == np.uint8 and (out.focus[out.scope & (coverage >= 0.05)] != NO_FOCUS).all()
    assert all(lab.ref.size == PATCH for lab in out.labels)


def test_failed_batches_keep_the_coarse_label(slide: Any, coarse: np.ndarray):
    oracle = FaultyOracle(inner=ClassicalOracle(), fail={"patch_labels": {1, 2}})
    deps, _ = make_deps(slide, oracle, max_in_flight=1)  # in order: calls 1 and 2 are the first two cells
    out = asyncio.run(classify_patches(inp(coarse), deps))
    assert out.failed == 2 and out.answered == out.sent - 2
    coarse_labels = [lab for lab in out.labels if lab.source == "coarse"]
    assert len(coarse_labels) == out.gated_out + 2
    assert len(out.errors) == 2 and "injected failure" in out.errors[0]


def test_budget_refusal_stops_sending_and_degrades_to_coarse(slide: Any, coarse: np.ndarray):
    oracle = FaultyOracle(inner=ClassicalOracle(), budget_after=5)
    deps, recorder = make_deps(slide, oracle)
    out = asyncio.run(classify_patches(inp(coarse), deps))
    assert out.budget_exhausted
    assert out.answered == 5 and out.failed == out.sent - 5
    assert len(recorder.calls) == 5 and oracle.total == 5
    coverage = patch_coverage(coarse, out.grid, DS)
    unanswered = [
        lab
        for lab in out.labels
        if lab.source == "coarse" and coverage[lab.ref.y // PATCH, lab.ref.x // PATCH] >= 0.5
    ]
    assert unanswered and all(lab.label == "tissue" for lab in unanswered)


def test_region_restricts_scope_and_few_shot_merges_back(slide: Any, coarse: np.ndarray):
    deps, _ = make_deps(slide)
    whole = asyncio.run(classify_patches(inp(coarse), deps))
    first = core_boxes()[0]
    cx, cy, _ = CORES[0]
    ex_ref = PatchRef(x=cx - PATCH // 2, y=cy - PATCH // 2, size=PATCH)
    exemplar = Exemplar(ref=ex_ref, label="tissue", focus="sharp", image=slide.read_patch(ex_ref, 128))
    part = asyncio.run(classify_patches(inp(coarse, region=first, exemplars=[exemplar]), deps))
    assert part.mode == "few_shot" and part.region == first
    assert part.scope.sum() < whole.scope.sum()
    assert not part.scope[:, 10:].any()  # the second core is outside the region
    assert all(lab.source in ("few_shot", "coarse") for lab in part.labels)
    merged = merge_labels(whole, part)
    assert np.array_equal(merged.scope, whole.scope)
    assert np.array_equal(merged.tissue[part.scope], part.tissue[part.scope])
    assert np.array_equal(merged.tissue[~part.scope], whole.tissue[~part.scope])
    assert len(merged.labels) == len(whole.labels)
    assert sum(lab.source == "few_shot" for lab in merged.labels) == part.answered
    assert merged.usage.calls == whole.usage.calls + part.usage.calls
