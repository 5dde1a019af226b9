"""cluster_colours: the two-pass CIELAB K-means against exact truth, and its frame conversions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from stage_support import core_boxes, core_slide_pixels, dice, make_deps, open_core_slide

from tissue_oracle.tools.classify_patches import patch_coverage
from tissue_oracle.tools.cluster_colours import (
    ClusterColoursInput,
    ClusterColoursParams,
    box_to_thumb,
    cluster_colours,
    coarse_mask,
)
from tissue_oracle.tools.ground_boxes import GroundBoxesInput, ground_boxes
from tissue_oracle.tools.schemas import Box
from tissue_oracle.tools.slides import open_slide


@pytest.mark.parametrize(
    ("box", "ds", "shape", "expected"),
    [
        (Box(x0=0, y0=0, x1=64, y1=64), 64.0, (10, 10), (0, 0, 1, 1)),
        (Box(x0=65, y0=10, x1=129, y1=70), 64.0, (10, 10), (1, 0, 3, 2)),  # partial pixels count
        (Box(x0=600, y0=600, x1=900, y1=900), 64.0, (10, 10), (9, 9, 10, 10)),  # clipped, one pixel left
        (Box(x0=10, y0=10, x1=11, y1=11), 64.0, (10, 10), (0, 0, 1, 1)),  # never empty
        (Box(x0=100, y0=50, x1=300, y1=150), 50.0, (10, 10), (2, 1, 6, 3)),
    ],
)
def test_box_to_thumb(box: Box, ds: float, shape: tuple[int, int], expected: tuple[int, int, int, int]):
    assert box_to_thumb(box, ds, shape) == expected


def test_two_cores_match_truth_and_outside_boxes_is_background():
    slide = open_core_slide()
    deps, _ = make_deps(slide)
    out = cluster_colours(ClusterColoursInput(downsample=16, boxes=core_boxes()), deps)
    _, truth = core_slide_pixels()
    truth_thumb = truth.reshape(truth.shape[0] // 16, 16, truth.shape[1] // 16, 16).mean(axis=(1, 3)) >= 0.5
    assert out.mask.shape == truth_thumb.shape
    assert dice(out.mask, truth_thumb) > 0.95
    assert len(out.box_masks) == 2 and all(bm.coverage > 0.6 for bm in out.box_masks)
    assert out.background_lab[0] > 90  # glass is bright: L* near 100
    only_first = cluster_colours(ClusterColoursInput(downsample=16, boxes=core_boxes()[:1]), deps)
    assert not only_first.mask[:, 140:].any()  # the second core lies outside every box


def test_same_input_same_mask():
    image, _ = core_slide_pixels()
    thumb = np.ascontiguousarray(image[::16, ::16])
    rects = [(40, 40, 120, 120)]
    params = ClusterColoursParams(max_samples=500, n_init=1)
    a = coarse_mask(thumb, rects, params)
    c = coarse_mask(thumb, rects, params)
    assert np.array_equal(a.mask, c.mask)


def test_flat_glass_gives_an_empty_mask_without_warnings():
    thumb = np.full((40, 60, 3), 235, dtype=np.uint8)  # one colour: fewer colours than K
    out = coarse_mask(thumb, [(0, 0, 60, 40)], ClusterColoursParams())
    assert not out.mask.any()


def test_local_background_is_the_cluster_nearest_the_global_one():
    # A box holding tissue and a dark pen line: with K=3 the glass stays background even though
    # the box itself is mostly tissue and pen.
    thumb = np.full((60, 60, 3), 238, dtype=np.uint8)
    thumb[10:50, 10:40] = (200, 120, 170)  # tissue
    thumb[10:50, 40:44] = (20, 40, 120)  # pen
    out = coarse_mask(thumb, [(5, 5, 50, 55)], ClusterColoursParams())
    assert out.mask[10:50, 10:44].all()
    assert not out.mask[5:10, 5:50].any() and not out.mask[:, 50:].any()


def test_mostly_tissue_inverts_under_the_majority_rule_but_not_the_lightest():
    thumb = np.full((40, 40, 3), 238, dtype=np.uint8)
    thumb[4:36, 4:36] = (200, 120, 170)  # 64% tissue: the majority cluster is tissue
    rects = [(0, 0, 40, 40)]
    majority = coarse_mask(thumb, rects, ClusterColoursParams())
    lightest = coarse_mask(thumb, rects, ClusterColoursParams(background_rule="lightest"))
    assert not majority.mask[4:36, 4:36].any()  # the paper's rule calls the tissue background
    assert lightest.mask[4:36, 4:36].all() and lightest.mask.sum() == 32 * 32


@pytest.mark.real
def test_real_tcga_frozen_section_m1_agrees_with_histolab(real_data: Path):
    """Agreement with histolab's threshold mask (another tool's output, not ground truth)."""
    reference = np.load(real_data / "masks" / "tissue-mask-tcga-cr-7395.npy")
    with open_slide(real_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        deps, _ = make_deps(slide)
        boxes = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16), deps))
        assert boxes.fallback  # ~70% tissue: the lone box is rejected, then the whole slide is used
        inp = ClusterColoursInput(downsample=16, boxes=boxes.boxes, background_rule="lightest")
        out = cluster_colours(inp, deps)
        grid = slide.patch_grid(256)
        ours = patch_coverage(out.mask, grid, 16) >= 0.5
        theirs = patch_coverage(reference, grid, slide.dimensions[0] / reference.shape[1]) >= 0.5
    assert dice(ours, theirs) > 0.9
