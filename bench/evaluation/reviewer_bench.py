"""The reviewer benchmark: masks corrupted on purpose to known precision and recall grades.

Like the paper's: for each stain, every cell of the 4x4 (precision grade, recall grade) grid
gets one region whose ground-truth mask is damaged to land in that cell. Recall drops by
erasing blobby parts of the tissue; precision drops by adding background, artefact regions
first (pen, debris, speckle: what a real segmenter wrongly keeps), then glass near the tissue.
The reviewer under test sees the crop, the overlay (``review_mask.render_overlay``) and the
mask, as the ``review_mask`` stage sends them, and its grades are scored against the grades
of the *achieved* percentages.

All images here are in one ``thumb_xy`` frame per source (``downsample`` level-0 pixels per
image pixel); regions sent to the reviewer are converted to the level-0 frame.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.bench.evaluation.metrics import weighted_kappa
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.review_mask import render_overlay
from tissue_oracle.tools.schemas import Box, CallRecorder, Grades, ReviewRequest, grade_from_percent

#: The percentage aimed at for each grade: the middle of its band (1: >=95, 2: 80-95, 3: 50-80, 4: <50).
GRADE_TARGETS: dict[int, float] = {1: 97.5, 2: 87.5, 3: 65.0, 4: 35.0}


@dataclass(kw_only=True)
class ReviewSource:
    """One slide's image with its tissue (and artefact) truth, all in the same ``thumb_xy`` frame."""

    slide_id: str
    stain: str
    image: np.ndarray
    """RGB uint8 (H, W, 3) at ``downsample``."""
    tissue: np.ndarray
    """Boolean (H, W) tissue truth."""
    downsample: float
    """Level-0 pixels per image pixel."""
    artefact: np.ndarray | None = None
    """Boolean (H, W) union of artefact masks on glass, preferred for false positives."""


@dataclass(kw_only=True)
class ReviewItem:
    """One corrupted mask on one region, with the targets and what corruption achieved."""

    slide_id: str
    stain: str
    region: Box
    """The crop in the level-0 frame."""
    crop: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    target_precision: int
    target_recall: int
    precision_pct: float
    """Achieved precision of ``mask`` against ``truth``, percent."""
    recall_pct: float

    @property
    def precision_grade(self) -> int:
        return grade_from_percent(self.precision_pct)

    @property
    def recall_grade(self) -> int:
        return grade_from_percent(self.recall_pct)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Low-frequency noise, so that erased or added regions are blobs, not salt and pepper."""
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, scale))


def corrupt_mask(
    truth: np.ndarray,
    *,
    precision_pct: float,
    recall_pct: float,
    rng: np.random.Generator,
    artefact: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``truth`` with tissue erased to ``recall_pct`` and background added to ``precision_pct``.

    Exact to the pixel when the crop holds enough background; otherwise precision stays above
    the target (all background is added) and the caller sees it in the achieved numbers.
    """
    truth = truth.astype(bool)
    scale = max(truth.shape) / 10.0
    tissue_idx = np.flatnonzero(truth)
    keep = round(recall_pct / 100.0 * tissue_idx.size)
    mask = np.zeros(truth.shape, dtype=bool)
    order = np.argsort(_smooth_field(truth.shape, rng, scale).ravel()[tissue_idx], kind="stable")
    mask.flat[tissue_idx[order[tissue_idx.size - keep :]]] = True
    p = precision_pct / 100.0
    need = round(keep * (1.0 - p) / p) if p > 0 else 0
    bg_idx = np.flatnonzero(~truth)
    # Nearness to tissue plus noise: grown-over margins and blobs, artefacts first of all.
    dist = ndi.distance_transform_edt(~truth).ravel()[bg_idx]
    priority = dist / max(1.0, dist.max()) - 0.5 * _smooth_field(truth.shape, rng, scale).ravel()[bg_idx]
    if artefact is not None:
        priority -= 10.0 * artefact.astype(bool).ravel()[bg_idx]
    mask.flat[bg_idx[np.argsort(priority, kind="stable")[: min(need, bg_idx.size)]]] = True
    return mask


def achieved(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(precision %, recall %) of ``mask`` against ``truth``; 100 when undefined (nothing to miss)."""
    tp = float(np.sum(mask & truth))
    prec = 100.0 * tp / mask.sum() if mask.sum() else 100.0
    rec = 100.0 * tp / truth.sum() if truth.sum() else 100.0
    return prec, rec


def _regions(tissue: np.ndarray, max_regions: int) -> list[tuple[slice, slice]]:
    """Crops around the largest tissue components, padded until glass is >= 2x the tissue area.

    Grade 4 precision at grade 1 recall needs about 1.9x the tissue area in added background.
    """
    labels, n = ndi.label(tissue)
    if n == 0:
        return []
    sizes = ndi.sum_labels(tissue, labels, index=np.arange(1, n + 1))
    boxes = ndi.find_objects(labels)
    out = []
    h, w = tissue.shape
    for i in np.argsort(sizes)[::-1][:max_regions]:
        ys, xs = boxes[i]
        y0, y1, x0, x1 = ys.start, ys.stop, xs.start, xs.stop
        for _ in range(64):
            crop = tissue[y0:y1, x0:x1]
            if (~crop).sum() >= 2.2 * crop.sum() or (y0, x0, y1, x1) == (0, 0, h, w):
                break
            py, px = max(1, (y1 - y0) // 8), max(1, (x1 - x0) // 8)
            y0, y1, x0, x1 = max(0, y0 - py), min(h, y1 + py), max(0, x0 - px), min(w, x1 + px)
        out.append((slice(y0, y1), slice(x0, x1)))
    return out


def build_items(
    sources: list[ReviewSource], *, seed: int = 0, max_stains: int = 3, regions_per_slide: int = 4
) -> list[ReviewItem]:
    """16 items (the 4x4 grade grid) per stain, cycling through that stain's slides and regions."""
    rng = np.random.default_rng(seed)
    by_stain: dict[str, list[tuple[ReviewSource, tuple[slice, slice]]]] = {}
    for src in sources:
        for reg in _regions(src.tissue, regions_per_slide):
            by_stain.setdefault(src.stain, []).append((src, reg))
    items = []
    for stain in sorted(by_stain)[:max_stains]:
        pool = itertools.cycle(by_stain[stain])
        for gp, gr in itertools.product(GRADE_TARGETS, GRADE_TARGETS):
            src, (ys, xs) = next(pool)
            truth = src.tissue[ys, xs]
            art = None if src.artefact is None else src.artefact[ys, xs]
            mask = corrupt_mask(
                truth, precision_pct=GRADE_TARGETS[gp], recall_pct=GRADE_TARGETS[gr], rng=rng, artefact=art
            )
            prec, rec = achieved(mask, truth)
            ds = src.downsample
            region = Box(
                x0=int(xs.start * ds), y0=int(ys.start * ds), x1=int(xs.stop * ds), y1=int(ys.stop * ds)
            )
            items.append(
                ReviewItem(
                    slide_id=src.slide_id,
                    stain=stain,
                    region=region,
                    crop=src.image[ys, xs, :3],
                    truth=truth,
                    mask=mask,
                    target_precision=gp,
                    target_recall=gr,
                    precision_pct=prec,
                    recall_pct=rec,
                )
            )
    return items


async def _ask(
    reviewer: Oracle, items: list[ReviewItem], recorder: CallRecorder, run_id: str
) -> list[Grades]:
    grades = []
    for item in items:
        req = ReviewRequest(
            crop=item.crop, overlay=render_overlay(item.crop, item.mask), mask=item.mask, region=item.region
        )
        ctx = CallContext(
            run_id=run_id,
            slide_id=item.slide_id,
            stage="review_mask",
            role="reviewer",
            recorder=recorder,
            use_cache=False,
        )
        grades.append((await reviewer.review(req, ctx)).grades)
    return grades


def run_reviewer(
    reviewer: Oracle, items: list[ReviewItem], recorder: CallRecorder, *, run_id: str = "bench-reviewer"
) -> list[Grades]:
    """The reviewer's grades for every item, in order (sequential: grading order doesn't matter)."""
    return asyncio.run(_ask(reviewer, items, recorder, run_id))


def score_reviewer(items: list[ReviewItem], grades: list[Grades]) -> dict[str, float | int]:
    """Grade accuracy (precision, recall, joint), QWK of each grade, MAE of the percentage estimates."""
    tp = np.array([it.precision_grade for it in items])
    tr = np.array([it.recall_grade for it in items])
    gp = np.array([g.precision for g in grades])
    gr = np.array([g.recall for g in grades])
    p_err = [
        abs(g.precision_pct - it.precision_pct)
        for g, it in zip(grades, items, strict=True)
        if g.precision_pct is not None
    ]
    r_err = [
        abs(g.recall_pct - it.recall_pct)
        for g, it in zip(grades, items, strict=True)
        if g.recall_pct is not None
    ]
    return {
        "n": len(items),
        "precision_acc": float(np.mean(gp == tp)) if items else math.nan,
        "recall_acc": float(np.mean(gr == tr)) if items else math.nan,
        "joint_acc": float(np.mean((gp == tp) & (gr == tr))) if items else math.nan,
        "precision_qwk": weighted_kappa(gp - 1, tp - 1, 4),
        "recall_qwk": weighted_kappa(gr - 1, tr - 1, 4),
        "precision_mae": float(np.mean(p_err)) if p_err else math.nan,
        "recall_mae": float(np.mean(r_err)) if r_err else math.nan,
        "target_hit": float(
            np.mean(
                [
                    it.precision_grade == it.target_precision and it.recall_grade == it.target_recall
                    for it in items
                ]
            )
        )
        if items
        else math.nan,
    }


def sources_from_cases(cases: list[Any], open_slide: Any, *, max_side: int = 1024) -> list[ReviewSource]:
    """Review sources from synthetic cases: a thumbnail and the truth masks sampled onto it."""
    from tissue_oracle.bench.evaluation.simulated_oracle import NOT_ON_GLASS, sample_map

    sources = []
    for case in cases:
        truth = case.truth_obj
        if truth is None:
            continue
        w, h = truth.slide_width, truth.slide_height
        ds = float(max(getattr(truth, "mask_downsample", 16), math.ceil(max(w, h) / max_side)))
        with open_slide(case.path) as slide:
            image = np.asarray(slide.thumbnail(ds))[..., :3]
        whole, shape = Box(x0=0, y0=0, x1=w, y1=h), image.shape[:2]
        glass = [m for name, m in truth.artefacts.items() if name not in NOT_ON_GLASS]
        artefact = (
            np.logical_or.reduce([sample_map(m.astype(bool), w, h, whole, shape) for m in glass])
            if glass
            else None
        )
        tissue = sample_map(truth.tissue.astype(bool), w, h, whole, shape)
        sources.append(
            ReviewSource(
                slide_id=case.slide_id,
                stain=case.stain,
                image=image,
                tissue=tissue,
                downsample=ds,
                artefact=artefact,
            )
        )
    return sources


def reviewer_results(
    cases: list[Any], open_slide: Any, *, seed: int = 0, max_stains: int = 3
) -> list[dict[str, Any]]:
    """The classical reviewer, and the SIMULATED reviewer as a calibration check, per stain and overall."""
    from tissue_oracle.bench.evaluation.simulated_oracle import SimulatedOracle
    from tissue_oracle.oracles.classical import ClassicalOracle
    from tissue_oracle.store.memory import MemoryRecorder

    sources = sources_from_cases(cases, open_slide)
    items = build_items(sources, seed=seed, max_stains=max_stains)
    if not items:
        return []
    truths = {c.slide_id: c.truth_obj for c in cases if c.truth_obj is not None}
    reviewers: list[tuple[str, bool, Oracle]] = [
        ("classical reviewer (no VLM)", False, ClassicalOracle()),
        ("SIMULATED reviewer (truth + noise)", True, SimulatedOracle(truths=truths, seed=seed)),
    ]
    results = []
    for name, simulated, reviewer in reviewers:
        grades = run_reviewer(reviewer, items, MemoryRecorder())
        for stain in [*sorted({it.stain for it in items}), "all"]:
            pick = [i for i, it in enumerate(items) if stain in ("all", it.stain)]
            scores = score_reviewer([items[i] for i in pick], [grades[i] for i in pick])
            results.append({"method": name, "simulated": simulated, "stain": stain, **scores})
    return results
