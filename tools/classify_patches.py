"""Stages 3 and 6, classify_patches: tissue and focus per grid patch, zero-shot or few-shot.

The grid is the regular level-0 grid of ``patch_size`` patches from (0, 0) (``PatchGrid``).
A patch goes to the oracle only if the coarse mask M1 covers at least ``gate_fraction`` of it;
the rest are background labelled ``coarse``. Patches are read in threads at ``send_size``
pixels, sent ``batch_size`` per question, with at most ``deps.max_in_flight`` questions in flight
for the slide. A question that fails (``OracleError``) or that a budget refuses
(``BudgetExceededError``, after which nothing more is sent) leaves its patches with the coarse
label: tissue when M1 covers at least ``coarse_tissue_fraction`` of them; when part of a question
was answered (``PartialPatchLabels``, from the cascade), only the unanswered patches do. The stage
itself never raises on an oracle's account.

Per-patch arrays are (rows, cols) in the patch-grid frame. ``focus`` holds ``tools.focus`` codes
(``FOCUS_CODES``) and ``NO_FOCUS`` where no focus grade exists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.tools.clean import CleanOutput
from tissue_oracle.tools.errors import BudgetExceededError, OracleError, SlideError
from tissue_oracle.tools.focus import NO_FOCUS, focus_code
from tissue_oracle.tools.oracle_protocol import PartialPatchLabels
from tissue_oracle.tools.schemas import (
    Box,
    Exemplar,
    LabelSource,
    PatchGrid,
    PatchLabel,
    PatchLabelsRequest,
    PatchRef,
    Role,
    Usage,
)
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import ClassifyPatchesSettings
from tissue_oracle.tools.student_tiles import band_ranges, read_tile_rows

_MAX_ERRORS_KEPT = 20


class ClassifyPatchesParams(ClassifyPatchesSettings):
    """Settings of classify_patches (defaults: the paper)."""

    coarse_tissue_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """An unanswered patch is tissue when M1 covers at least this fraction of it."""
    role: Role = "classifier"
    """The role that answers."""


class ClassifyPatchesInput(ClassifyPatchesParams):
    """Settings, the coarse mask, and optionally a region and exemplars."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    coarse_mask: np.ndarray = Field(repr=False, exclude=True)
    """Boolean M1 over the whole slide, thumb_xy frame at ``mask_downsample``."""
    mask_downsample: float = Field(gt=0.0)
    """Level-0 pixels per M1 pixel."""
    region: Box | None = None
    """Only patches intersecting this level-0 box are decided; None: the whole slide."""
    exemplars: list[Exemplar] = Field(default_factory=list, exclude=True)
    """Labelled examples prepended to every question (few-shot); empty: zero-shot."""


class ClassifyPatchesSummary(BaseModel):
    """The counts of a classify_patches run (what a planner sees)."""

    mode: Literal["zero_shot", "few_shot"]
    region: Box | None
    in_scope: int
    """Patches this call decided (in the region, touched by M1)."""
    sent: int
    """Patches that passed the gate and went to the oracle."""
    gated_out: int
    """Patches touched by M1 below the gate: background, source ``coarse``."""
    answered: int
    """Sent patches the oracle labelled."""
    failed: int
    """Sent patches left with the coarse label after an oracle error or a budget refusal."""
    tissue: int
    """Patches in scope labelled tissue."""
    budget_exhausted: bool
    usage: Usage


class ClassifyPatchesOutput(BaseModel):
    """Labels for the patches in scope, as a list and as patch-grid arrays."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    grid: PatchGrid
    mode: Literal["zero_shot", "few_shot"]
    region: Box | None = None
    scope: np.ndarray = Field(repr=False)
    """Boolean (rows, cols): the patches this call decided (region ∩ M1 > 0)."""
    coverage: np.ndarray = Field(repr=False)
    """Float32 (rows, cols): fraction of each patch M1 covers."""
    tissue: np.ndarray = Field(repr=False)
    """Boolean (rows, cols): tissue labels (False outside ``scope``)."""
    focus: np.ndarray = Field(repr=False)
    """Uint8 (rows, cols): ``tools.focus`` code per patch, ``NO_FOCUS`` for none."""
    confidence: np.ndarray = Field(repr=False)
    """Float32 (rows, cols): label confidence 0-1."""
    labels: list[PatchLabel]
    """One label per patch in ``scope``, row-major."""
    sent: int = 0
    gated_out: int = 0
    answered: int = 0
    failed: int = 0
    budget_exhausted: bool = False
    errors: list[str] = Field(default_factory=list)
    """The first few oracle/read errors, for the log."""
    usage: Usage = Field(default_factory=Usage)

    def summary(self) -> ClassifyPatchesSummary:
        return ClassifyPatchesSummary(
            mode=self.mode,
            region=self.region,
            in_scope=int(self.scope.sum()),
            sent=self.sent,
            gated_out=self.gated_out,
            answered=self.answered,
            failed=self.failed,
            tissue=int((self.tissue & self.scope).sum()),
            budget_exhausted=self.budget_exhausted,
            usage=self.usage,
        )


# --------------------------------------------------------------------------- pure parts


def _edges(count: int, patch_size: int, downsample: float, limit: int) -> np.ndarray:
    """Thumb-frame edges of ``count`` cells (count + 1 values), clipped to ``[0, limit]``."""
    edges = np.round(np.arange(count + 1) * patch_size / downsample).astype(np.int64)
    return np.clip(edges, 0, limit)


def patch_coverage(mask: np.ndarray, grid: PatchGrid, downsample: float) -> np.ndarray:
    """Fraction of each grid patch that ``mask`` (thumb_xy frame at ``downsample``) covers.

    Float32 (rows, cols). A patch whose thumb-frame extent rounds to no pixel samples the one
    pixel it starts in; patches beyond the mask are 0.
    """
    m = np.asarray(mask, dtype=bool)
    height, width = m.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = m.cumsum(axis=0).cumsum(axis=1)
    xs = _edges(grid.cols, grid.patch_size, downsample, width)
    ys = _edges(grid.rows, grid.patch_size, downsample, height)
    x0, y0 = xs[:-1], ys[:-1]
    x1 = np.minimum(np.maximum(xs[1:], x0 + 1), width)
    y1 = np.minimum(np.maximum(ys[1:], y0 + 1), height)
    total = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return np.where(area > 0, total / np.maximum(area, 1), 0.0).astype(np.float32)


def region_cells(grid: PatchGrid, region: Box | None) -> np.ndarray:
    """Boolean (rows, cols): the patches intersecting a level-0 ``region`` (all when None)."""
    cells = np.zeros(grid.shape, dtype=bool)
    if region is None:
        cells[:] = True
        return cells
    c0, r0 = max(0, region.x0 // grid.patch_size), max(0, region.y0 // grid.patch_size)
    c1 = min(grid.cols, (region.x1 - 1) // grid.patch_size + 1)
    r1 = min(grid.rows, (region.y1 - 1) // grid.patch_size + 1)
    cells[r0:r1, c0:c1] = True
    return cells


def gate(coverage: np.ndarray, scope: np.ndarray, gate_fraction: float) -> np.ndarray:
    """Boolean (rows, cols): patches in ``scope`` that go to the oracle."""
    return scope & (coverage >= gate_fraction) & ((coverage > 0) | (gate_fraction <= 0))


def merge_labels(base: ClassifyPatchesOutput, update: ClassifyPatchesOutput) -> ClassifyPatchesOutput:
    """``base`` with every patch in ``update.scope`` replaced by ``update``'s label (same grid)."""
    if base.grid != update.grid:
        raise ValueError(f"cannot merge labels on different grids: {base.grid} and {update.grid}")
    take = update.scope
    by_cell = {(lab.ref.y, lab.ref.x): lab for lab in base.labels}
    by_cell.update({(lab.ref.y, lab.ref.x): lab for lab in update.labels})
    return base.model_copy(
        update={
            "scope": base.scope | take,
            "tissue": np.where(take, update.tissue, base.tissue),
            "focus": np.where(take, update.focus, base.focus).astype(np.uint8),
            "confidence": np.where(take, update.confidence, base.confidence).astype(np.float32),
            "labels": [by_cell[key] for key in sorted(by_cell)],
            "region": None,
            "usage": base.usage + update.usage,
            "budget_exhausted": base.budget_exhausted or update.budget_exhausted,
        }
    )


def answered_only(out: ClassifyPatchesOutput) -> ClassifyPatchesOutput:
    """``out`` restricted to the patches the oracle answered: a failed or refused few-shot question
    must not overwrite a zero-shot answer with the coarse label."""
    answered = [lab for lab in out.labels if lab.source != "coarse"]
    scope = np.zeros_like(out.scope)
    for lab in answered:
        scope[out.grid.cell_of(lab.ref.x, lab.ref.y)] = True
    return out.model_copy(update={"scope": scope, "labels": answered})


def final_labels(raw: ClassifyPatchesOutput, cleaned: CleanOutput) -> list[PatchLabel]:
    """Every labelled patch after cleaning; patches the clean stage flipped get source ``clean``."""
    by_cell = {raw.grid.cell_of(lab.ref.x, lab.ref.y): lab for lab in raw.labels}
    for r, c in zip(*np.nonzero(cleaned.changed), strict=True):
        cell = (int(r), int(c))
        label = "tissue" if cleaned.tissue[cell] else "background"
        old = by_cell.get(cell)
        ref = old.ref if old is not None else raw.grid.ref(*cell)
        focus = old.focus if old is not None else None
        by_cell[cell] = PatchLabel(ref=ref, label=label, focus=focus, confidence=1.0, source="clean")
    return [by_cell[cell] for cell in sorted(by_cell)]


# --------------------------------------------------------------------------- the stage


@dataclass(kw_only=True)
class _Run:
    """Mutable bookkeeping of one stage call (local to the call)."""

    answers: dict[tuple[int, int], PatchLabel] = field(default_factory=dict)
    failed: int = 0
    budget_exhausted: bool = False
    errors: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def note(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)


def read_size(inp: ClassifyPatchesParams, oracle: object) -> int:
    """Side of the patch images read: ``send_size`` (at most ``patch_size``), or less when the backend
    says it sees patches smaller (a student's ``image_px``): the slide is then read at a lower
    pyramid level, which is most of what a student saves."""
    size = min(inp.send_size, inp.patch_size)
    wanted = getattr(oracle, "image_px", None)
    return min(size, int(wanted)) if wanted else size


def request_size(inp: ClassifyPatchesParams, oracle: object) -> int:
    """Patches per question: ``batch_size``, or the backend's own ``request_batch`` when larger (a
    student labels 64 patches in one forward pass; a cascade re-batches its unsure ones itself)."""
    wanted = getattr(oracle, "request_batch", None)
    return max(inp.batch_size, int(wanted)) if wanted else inp.batch_size


def _read_batch(deps: StageDeps, refs: list[PatchRef], send_size: int) -> list[np.ndarray]:
    return [deps.slide.read_patch(ref, send_size) for ref in refs]


async def _ask(
    batch: list[tuple[int, int]],
    grid: PatchGrid,
    inp: ClassifyPatchesParams,
    deps: StageDeps,
    run: _Run,
    *,
    exemplars: list[Exemplar],
    tiles: np.ndarray | None = None,
) -> None:
    """One question for one batch of cells; outcomes go into ``run``. ``tiles`` holds the batch's
    images when they were read already (``classify_grid``); otherwise they are read here."""
    refs = [grid.ref(r, c) for r, c in batch]
    async with deps.slots:
        if run.budget_exhausted:
            run.failed += len(batch)
            return
        try:
            if tiles is None:
                size = read_size(inp, deps.oracle(inp.role))
                images = await deps.in_thread(_read_batch, deps, refs, size)
            else:
                images = list(tiles)
            request = PatchLabelsRequest(patches=refs, images=images, exemplars=exemplars)
            answer = await deps.oracle(inp.role).patch_labels(
                request, deps.context("classify_patches", inp.role)
            )
        except BudgetExceededError as exc:
            run.budget_exhausted = True
            run.failed += len(batch)
            run.note(f"budget: {exc}")
            return
        except PartialPatchLabels as exc:  # keep what was answered (and paid for)
            run.usage = run.usage + exc.usage
            run.budget_exhausted = run.budget_exhausted or exc.budget_exhausted
            run.failed += len(batch) - len(exc.answered)
            run.note(f"{type(exc).__name__}: {exc}")
            for i, label in exc.answered.items():
                run.answers[batch[i]] = label.model_copy(update={"ref": refs[i]})
            return
        except (OracleError, SlideError) as exc:
            run.failed += len(batch)
            run.note(f"{type(exc).__name__}: {exc}")
            return
    run.usage = run.usage + answer.usage
    if len(answer.labels) != len(batch):
        run.failed += len(batch)
        run.note(f"oracle answered {len(answer.labels)} labels for {len(batch)} patches")
        return
    for cell, ref, label in zip(batch, refs, answer.labels, strict=True):
        run.answers[cell] = label.model_copy(update={"ref": ref})


async def classify_patches(inp: ClassifyPatchesInput, deps: StageDeps) -> ClassifyPatchesOutput:
    """Label every patch in scope: oracle for gated-in patches, coarse for the rest."""
    width, height = deps.slide.dimensions
    grid = PatchGrid(slide_width=width, slide_height=height, patch_size=inp.patch_size)
    coverage = patch_coverage(inp.coarse_mask, grid, inp.mask_downsample)
    scope = region_cells(grid, inp.region) & ((coverage > 0) | (inp.gate_fraction <= 0))
    send = gate(coverage, scope, inp.gate_fraction)
    cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(send), strict=True)]
    size = request_size(inp, deps.oracle(inp.role))
    batches = [cells[i : i + size] for i in range(0, len(cells), size)]
    run = _Run()
    await asyncio.gather(*(_ask(batch, grid, inp, deps, run, exemplars=inp.exemplars) for batch in batches))
    source: LabelSource = "few_shot" if inp.exemplars else "zero_shot"
    out = _assemble(grid, inp, inp.region, coverage, scope, send, run, source)
    out.sent, out.answered = len(cells), len(run.answers)
    return out


async def classify_grid(inp: ClassifyPatchesParams, deps: StageDeps) -> ClassifyPatchesOutput:
    """Label every grid patch with ``inp.role``'s backend, from the slide's tiles (the dense path).

    For a backend that sees small patches (a student's ``image_px``): no M1 and no gate. The slide
    is read in bands of grid rows at ``patch_size / image_px`` (``tools.student_tiles``, the
    pixels distillation trains on), each band cut into tiles and sent ``request_size`` patches
    per question (one forward pass and one ``calls`` row each); the next band is read while the
    current one is classified. A band that won't read, or a question that fails, leaves its
    patches background, source ``coarse``, counted in ``failed`` (there is no M1 to fall back on).
    """
    width, height = deps.slide.dimensions
    grid = PatchGrid(slide_width=width, slide_height=height, patch_size=inp.patch_size)
    oracle = deps.oracle(inp.role)
    px, size = read_size(inp, oracle), request_size(inp, oracle)
    run = _Run()
    bands = band_ranges(grid, px)

    async def read(band: tuple[int, int]) -> np.ndarray | None:
        try:
            return await deps.in_thread(read_tile_rows, deps.slide, grid, px, *band)
        except SlideError as exc:
            run.failed += (band[1] - band[0]) * grid.cols
            run.note(f"{type(exc).__name__}: {exc}")
            return None

    reading = asyncio.ensure_future(read(bands[0]))
    for i, (first, stop) in enumerate(bands):
        tiles = await reading
        if i + 1 < len(bands):
            reading = asyncio.ensure_future(read(bands[i + 1]))
        if tiles is None:
            continue
        cells = [(r, c) for r in range(first, stop) for c in range(grid.cols)]
        await asyncio.gather(
            *(
                _ask(cells[j : j + size], grid, inp, deps, run, exemplars=[], tiles=tiles[j : j + size])
                for j in range(0, len(cells), size)
            )
        )
    everything = np.ones(grid.shape, dtype=bool)
    none = np.zeros(grid.shape, dtype=np.float32)
    out = _assemble(grid, inp, None, none, everything, everything, run, "zero_shot")
    out.sent, out.answered = grid.rows * grid.cols, len(run.answers)
    return out


def tissue_pieces(out: ClassifyPatchesOutput) -> list[Box]:
    """One level-0 box per tissue piece of the patch labels (8-connected), largest first.

    The regions of a whole-slide pass (the classical map, a student's grid) come from its labels,
    so no box can cut a piece off and no grounding fallback is needed.
    """
    from scipy import ndimage as ndi

    grid = out.grid
    labels, _ = ndi.label(out.tissue, structure=np.ones((3, 3), dtype=bool))
    found = []
    for window in ndi.find_objects(labels):
        if window is None:
            continue
        rows, cols = window
        box = Box(
            x0=cols.start * grid.patch_size,
            y0=rows.start * grid.patch_size,
            x1=min(cols.stop * grid.patch_size, grid.slide_width),
            y1=min(rows.stop * grid.patch_size, grid.slide_height),
        )
        found.append(box)
    return sorted(found, key=lambda b: (b.x1 - b.x0) * (b.y1 - b.y0), reverse=True)


def _assemble(
    grid: PatchGrid,
    inp: ClassifyPatchesParams,
    region: Box | None,
    coverage: np.ndarray,
    scope: np.ndarray,
    send: np.ndarray,
    run: _Run,
    source: LabelSource,
) -> ClassifyPatchesOutput:
    """Grids and the label list from the answers, with coarse labels where there is none."""
    tissue = np.zeros(grid.shape, dtype=bool)
    focus = np.full(grid.shape, NO_FOCUS, dtype=np.uint8)
    confidence = np.zeros(grid.shape, dtype=np.float32)
    labels: list[PatchLabel] = []
    for r, c in zip(*np.nonzero(scope), strict=True):
        cell = (int(r), int(c))
        label = run.answers.get(cell)
        if label is not None:
            # A student's label keeps saying so ("student" as classifier, "cascade" when the cascade
            # kept it): distillation must never learn from a student, and reports count who decided.
            by_student = label.source in ("student", "cascade")
            label = label.model_copy(update={"source": label.source if by_student else source})
        else:
            cov = float(coverage[cell])
            is_tissue = bool(send[cell]) and cov >= inp.coarse_tissue_fraction
            label = PatchLabel(
                ref=grid.ref(*cell),
                label="tissue" if is_tissue else "background",
                confidence=max(cov, 1.0 - cov) if send[cell] else 1.0 - cov,
                source="coarse",
            )
        tissue[cell] = label.label == "tissue"
        focus[cell] = focus_code(label.focus)
        confidence[cell] = label.confidence
        labels.append(label)
    return ClassifyPatchesOutput(
        grid=grid,
        mode="few_shot" if source == "few_shot" else "zero_shot",
        region=region,
        scope=scope,
        coverage=coverage,
        tissue=tissue,
        focus=focus,
        confidence=confidence,
        labels=labels,
        gated_out=int((scope & ~send).sum()),
        failed=run.failed,
        budget_exhausted=run.budget_exhausted,
        errors=run.errors,
        usage=run.usage,
    )
