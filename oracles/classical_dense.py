"""The classical oracle's own stage: every patch labelled from one whole-slide tissue map, no calls.

The coarse-to-fine structure of ``classify_patches`` spares a paid oracle; the classical oracle
costs nothing per question and its answers are pixel rules, so asking it patch by patch only
costs time. This stage reads the slide once at ``patch_size / patch_px`` downsample (a low
pyramid level), makes the tissue map (``oracles.tissue_map``), and labels each patch tissue when
the map covers at least ``tissue_fraction`` of it (the CLAM/TRIDENT convention: half a patch).
Focus is graded on a level-0 crop of each tissue patch only, where blur shows.

The output is a ``ClassifyPatchesOutput`` (labels source ``zero_shot``, every patch in scope)
with the map itself and the slide's scope (fluorescence, glass, nearly all tissue) attached.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.oracles.evidence import focus_from_sharpness, optical_density, sharpness
from tissue_oracle.oracles.tissue_map import (
    PATCH_PX,
    SlideScope,
    empty_grid_scope,
    small_image_scope,
    tissue_map,
)
from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput, patch_coverage
from tissue_oracle.tools.focus import NO_FOCUS, focus_code
from tissue_oracle.tools.schemas import PatchGrid, PatchLabel
from tissue_oracle.tools.slide_base import Slide
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import MIN_PATCH_SIZE

_FOCUS_OD = 0.15
"""Summed OD above which a crop pixel counts as stained when focus is graded."""


class ClassifyDenseInput(BaseModel):
    """Settings of classify_dense."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    patch_size: int = Field(default=512, ge=MIN_PATCH_SIZE, le=8192)
    """Grid patch side, level-0 pixels."""
    tissue_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    """A patch is tissue when the map covers at least this share of it."""
    patch_px: int = Field(default=PATCH_PX, ge=8, le=256)
    """Map pixels per patch side (sets the downsample read: ``patch_size / patch_px``)."""
    focus_crop: int = Field(default=128, ge=0, le=4096)
    """Side of the centred level-0 crop each tissue patch's focus is graded on (0: no grading)."""


class DenseClassifyOutput(ClassifyPatchesOutput):
    """Patch labels, plus the map they came from and the slide's scope."""

    solid: np.ndarray = Field(repr=False)
    """Boolean tissue map, thumb_xy frame at ``map_downsample``."""
    map_downsample: float
    """Level-0 px per map pixel."""
    scope_kind: str
    scope_message: str | None = None


def _grade_focus(slide: Slide, grid: PatchGrid, cells: list[tuple[int, int]], crop: int) -> dict:
    """Focus grade per tissue cell from a centred level-0 crop (None where the crop has no stain)."""
    grades = {}
    for r, c in cells:
        ref = grid.ref(r, c)
        side = min(crop, ref.size)
        x0, y0 = ref.x + (ref.size - side) // 2, ref.y + (ref.size - side) // 2
        width, height = slide.dimensions
        w, h = min(side, width - x0), min(side, height - y0)
        if w < 16 or h < 16:
            continue
        image = slide.read_region(x0, y0, 0, (w, h))
        od = optical_density(image)
        grades[(r, c)] = focus_from_sharpness(sharpness(image, od > _FOCUS_OD, od=od))
    return grades


def dense_labels(inp: ClassifyDenseInput, slide: Slide) -> DenseClassifyOutput:
    """The whole slide's labels from one map (blocking: run it in a thread)."""
    width, height = slide.dimensions
    grid = PatchGrid(slide_width=width, slide_height=height, patch_size=inp.patch_size)
    downsample = inp.patch_size / inp.patch_px
    image = slide.thumbnail(downsample)
    tmap = tissue_map(image, inp.patch_px)
    coverage = patch_coverage(tmap.solid, grid, downsample)
    tissue = coverage >= inp.tissue_fraction
    cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(tissue), strict=True)]
    grades = _grade_focus(slide, grid, cells, inp.focus_crop) if inp.focus_crop else {}
    focus = np.full(grid.shape, NO_FOCUS, dtype=np.uint8)
    confidence = (0.5 + np.abs(coverage - inp.tissue_fraction)).clip(0.5, 1.0).astype(np.float32)
    labels = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            grade = grades.get((r, c))
            focus[r, c] = focus_code(grade)
            labels.append(
                PatchLabel(
                    ref=grid.ref(r, c),
                    label="tissue" if tissue[r, c] else "background",
                    focus=grade,
                    confidence=float(confidence[r, c]),
                    source="zero_shot",
                )
            )
    scope: SlideScope = tmap.scope
    if not tissue.any() and tmap.scope.kind != "fluorescence":
        small = small_image_scope(width, height, inp.patch_size, inp.patch_px)
        scope = small or empty_grid_scope(tmap)
    return DenseClassifyOutput(
        grid=grid,
        mode="zero_shot",
        scope=np.ones(grid.shape, dtype=bool),
        coverage=coverage,
        tissue=tissue,
        focus=focus,
        confidence=confidence,
        labels=labels,
        solid=tmap.solid,
        map_downsample=downsample,
        scope_kind=scope.kind,
        scope_message=scope.message,
    )


def cut_to_patches(out: DenseClassifyOutput, tissue: np.ndarray) -> np.ndarray:
    """The map's pixels inside the accepted patches ``tissue`` (bool, grid shape): the contour mask.

    A map pixel belongs to the patch holding its centre; the result is in the map's frame.
    """
    height, width = out.solid.shape
    size, ds = out.grid.patch_size, out.map_downsample
    rows = np.minimum(((np.arange(height) + 0.5) * ds // size).astype(np.int64), out.grid.rows - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * ds // size).astype(np.int64), out.grid.cols - 1)
    return np.asarray(out.solid & tissue[np.ix_(rows, cols)], dtype=bool)


async def classify_dense(inp: ClassifyDenseInput, deps: StageDeps) -> DenseClassifyOutput:
    """Label every patch of ``deps.slide`` from the classical tissue map (no oracle is asked)."""
    return await deps.in_thread(dense_labels, inp, deps.slide)
