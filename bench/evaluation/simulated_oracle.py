"""A SIMULATED oracle: answers from the synthetic ground truth through a declared error model.

It exists to measure what the *policy* buys (Dice against calls for different review
thresholds, rounds and budgets) without a VLM. Nothing it produces is a model's answer: its
backend is ``simulated``, ``is_vlm`` is False, every review note starts with ``SIMULATED``,
and the bench labels its rows and plots "SIMULATED".

The error model (``ErrorModel``) is the whole claim, stated up front:

- a tissue patch is answered background with probability ``tissue_miss``;
- a clean background patch is answered tissue with ``speckle_fp`` (stain speckle that looks
  cellular at 512 px, the paper's hard case);
- a background patch holding an artefact is answered tissue with ``artefact_fp_zero_shot``,
  or ``artefact_fp_few_shot`` when exemplars are given: Auto-context's whole effect;
- focus answers move one step (sharp/mild/out) with ``focus_slip``;
- the reviewer sees the true precision and recall plus Gaussian noise of
  ``review_sigma_pct`` percentage points, then grades the noisy numbers.

Draws are seeded per question and per patch position, so the same request always gets the
same answer (as the cache would give it) and runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles import base
from tissue_oracle.tools.errors import OracleError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    ALL_QUESTIONS,
    Box,
    BoxesAnswer,
    BoxesRequest,
    Focus,
    Label,
    PatchLabel,
    PatchLabelsAnswer,
    PatchLabelsRequest,
    PatchRef,
    Point,
    PointsAnswer,
    PointsRequest,
    Question,
    RerankAnswer,
    RerankRequest,
    ReviewAnswer,
    ReviewRequest,
    grade_from_percent,
)

SIMULATED = "SIMULATED"
#: Truth "artefact" layers that are not things on the glass: folds and faint stain lie on tissue,
#: seams span the whole slide. They never count as an artefact on a background patch.
NOT_ON_GLASS = frozenset({"fold", "faint", "seams"})
_FOCUS: tuple[Focus, Focus, Focus] = ("sharp", "mild_blur", "out_of_focus")


class TruthLike(Protocol):
    """What the simulation reads from ``bench.truth.Truth`` (maps cover the whole slide)."""

    slide_width: int
    slide_height: int
    tissue: np.ndarray
    artefacts: dict[str, np.ndarray]
    focus: np.ndarray


@dataclass(kw_only=True, frozen=True)
class ErrorModel:
    """The declared error rates of the simulation (probabilities, and percentage points)."""

    tissue_miss: float = 0.03
    """P(answer background | tissue patch)."""
    speckle_fp: float = 0.02
    """P(answer tissue | clean background patch)."""
    artefact_fp_zero_shot: float = 0.5
    """P(answer tissue | background patch with an artefact), zero-shot."""
    artefact_fp_few_shot: float = 0.08
    """The same with exemplars (few-shot after Auto-context)."""
    focus_slip: float = 0.1
    """P(focus answer moved one step from the truth)."""
    review_sigma_pct: float = 6.0
    """Std of the Gaussian noise on the reviewer's precision and recall percentages."""
    tissue_threshold: float = 0.5
    """A patch is tissue in the truth when this share of it is tissue."""
    artefact_threshold: float = 0.05
    """A patch 'holds an artefact' when this share of it is artefact."""


def _window(
    grid: np.ndarray, slide_w: int, slide_h: int, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """The part of a whole-slide map under the level-0 box, at the map's own resolution."""
    h, w = grid.shape[:2]
    sx, sy = w / slide_w, h / slide_h
    c0, c1 = math.floor(x0 * sx), max(math.floor(x0 * sx) + 1, math.ceil(x1 * sx))
    r0, r1 = math.floor(y0 * sy), max(math.floor(y0 * sy) + 1, math.ceil(y1 * sy))
    return grid[max(0, r0) : min(h, r1), max(0, c0) : min(w, c1)]


def _frac(grid: np.ndarray, truth: TruthLike, ref: PatchRef) -> float:
    win = _window(
        grid, truth.slide_width, truth.slide_height, ref.x, ref.y, ref.x + ref.size, ref.y + ref.size
    )
    return float(win.astype(bool).mean()) if win.size else 0.0


@dataclass(kw_only=True)
class SimulatedOracle:
    """Answers all five questions from ground truth with ``errors``. SIMULATED, never a VLM."""

    truths: Mapping[str, TruthLike]
    """Ground truth per slide id (the ``ctx.slide_id`` the controller asks about)."""
    errors: ErrorModel = field(default_factory=ErrorModel)
    seed: int = 0
    backend: str = "simulated"
    model: str = "simulated-v1"
    questions: frozenset[Question] = field(default=ALL_QUESTIONS)
    is_vlm: bool = False

    def _truth(self, ctx: CallContext) -> TruthLike:
        try:
            return self.truths[ctx.slide_id]
        except KeyError as exc:
            known = sorted(self.truths)
            raise OracleError(
                f"simulated oracle has no truth for slide {ctx.slide_id!r}; known: {known!r}"
            ) from exc

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *(k & 0x7FFFFFFF for k in key)])

    def _spec(
        self, question: Question, arrays: list[np.ndarray], coords: list[list[int]], **params: Any
    ) -> base.CallSpec:
        settings = {"errors": asdict(self.errors), "seed": self.seed, **params}
        blobs = [base.array_bytes(a) for a in arrays]
        return base.CallSpec(
            backend=self.backend,
            model=self.model,
            question=question,
            request_hash=base.request_hash(self.backend, self.model, question, SIMULATED, blobs, settings),
            image_hashes=[base.sha256_hex(b) for b in blobs],
            image_coords=coords,
            request_json=base.canonical_json({"question": question, "params": params, "note": SIMULATED}),
        )

    # ------------------------------------------------------------------ questions

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        truth = self._truth(ctx)
        spec = self._spec("boxes", [req.thumbnail], [[0, 0, req.slide_width, req.slide_height]])
        return await base.compute_locally(ctx, spec, base.BOXES_CODEC, lambda: self._boxes(truth))

    def _boxes(self, truth: TruthLike) -> BoxesAnswer:
        """One padded box per connected tissue section (sections under 1% of the largest are dropped)."""
        tissue = truth.tissue.astype(bool)
        labels, n = ndi.label(ndi.binary_dilation(tissue, iterations=2))
        sx, sy = truth.slide_width / tissue.shape[1], truth.slide_height / tissue.shape[0]
        sizes = ndi.sum_labels(tissue, labels, index=np.arange(1, n + 1)) if n else np.array([])
        out = []
        for i, (ys, xs) in enumerate(ndi.find_objects(labels)):
            if sizes[i] < 0.01 * sizes.max():
                continue
            pad_x, pad_y = 0.1 * (xs.stop - xs.start) * sx, 0.1 * (ys.stop - ys.start) * sy
            out.append(
                Box(
                    x0=max(0, int(xs.start * sx - pad_x)),
                    y0=max(0, int(ys.start * sy - pad_y)),
                    x1=min(truth.slide_width, math.ceil(xs.stop * sx + pad_x)),
                    y1=min(truth.slide_height, math.ceil(ys.stop * sy + pad_y)),
                )
            )
        return BoxesAnswer(boxes=out or [Box(x0=0, y0=0, x1=truth.slide_width, y1=truth.slide_height)])

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        truth = self._truth(ctx)
        few = bool(req.exemplars)
        coords = [base.image_coords_of(p.x, p.y, p.size, p.size) for p in req.patches]
        spec = self._spec("patch_labels", list(req.images), coords, few_shot=few, n=len(req.patches))
        return await base.compute_locally(
            ctx, spec, base.PATCH_LABELS_CODEC, lambda: self._patch_labels(truth, req.patches, few)
        )

    def _patch_labels(self, truth: TruthLike, patches: list[PatchRef], few: bool) -> PatchLabelsAnswer:
        e = self.errors
        labels = []
        for ref in patches:
            rng = self._rng(1, ref.x, ref.y, ref.size, int(few))
            is_tissue = _frac(truth.tissue, truth, ref) >= e.tissue_threshold
            if is_tissue:
                says_tissue = rng.random() >= e.tissue_miss
            else:
                art = any(
                    _frac(a, truth, ref) >= e.artefact_threshold
                    for name, a in truth.artefacts.items()
                    if name not in NOT_ON_GLASS
                )
                p_fp = (e.artefact_fp_few_shot if few else e.artefact_fp_zero_shot) if art else e.speckle_fp
                says_tissue = rng.random() < p_fp
            focus = self._focus(truth, ref, rng) if says_tissue else None
            labels.append(
                PatchLabel(
                    ref=ref,
                    label="tissue" if says_tissue else "background",
                    focus=focus,
                    confidence=1.0,
                    source="few_shot" if few else "zero_shot",
                )
            )
        return PatchLabelsAnswer(labels=labels)

    def _focus(self, truth: TruthLike, ref: PatchRef, rng: np.random.Generator) -> Focus:
        win = _window(
            truth.focus,
            truth.slide_width,
            truth.slide_height,
            ref.x,
            ref.y,
            ref.x + ref.size,
            ref.y + ref.size,
        )
        codes = win[win < 3] if win.size else win
        code = int(np.bincount(codes.astype(int).ravel(), minlength=3).argmax()) if codes.size else 0
        if rng.random() < self.errors.focus_slip:
            code = min(2, code + 1) if code == 0 or rng.random() < 0.5 else code - 1
        return _FOCUS[code]

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        truth = self._truth(ctx)
        r = req.region
        spec = self._spec(
            "points",
            [req.crop],
            [base.image_coords_of(r.x0, r.y0, r.width, r.height)],
            k=req.max_points_per_class,
        )
        return await base.compute_locally(ctx, spec, base.POINTS_CODEC, lambda: self._points(truth, req))

    def _points(self, truth: TruthLike, req: PointsRequest) -> PointsAnswer:
        """Up to k true tissue and k true background points inside the region, drawn at random."""
        r = req.region
        win = _window(truth.tissue, truth.slide_width, truth.slide_height, r.x0, r.y0, r.x1, r.y1).astype(
            bool
        )
        sx, sy = truth.slide_width / truth.tissue.shape[1], truth.slide_height / truth.tissue.shape[0]
        ox, oy = math.floor(r.x0 / sx), math.floor(r.y0 / sy)
        rng = self._rng(3, r.x0, r.y0, r.x1, r.y1)
        points = []
        pairs: tuple[tuple[Label, np.ndarray], ...] = (("tissue", win), ("background", ~win))
        for label, sel in pairs:
            ys, xs = np.nonzero(sel)
            for i in rng.permutation(ys.size)[: req.max_points_per_class]:
                x = min(r.x1 - 1, max(r.x0, int((ox + xs[i] + 0.5) * sx)))
                y = min(r.y1 - 1, max(r.y0, int((oy + ys[i] + 0.5) * sy)))
                points.append(Point(x=x, y=y, label=label))
        return PointsAnswer(points=points)

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        truth = self._truth(ctx)
        coords = [base.image_coords_of(p.x, p.y, p.size, p.size) for p in req.candidates]
        spec = self._spec(
            "rerank", list(req.images), coords, top_k=req.top_k, labels=list(req.candidate_labels)
        )
        return await base.compute_locally(ctx, spec, base.rerank_codec(req), lambda: self._rerank(truth, req))

    def _rerank(self, truth: TruthLike, req: RerankRequest) -> RerankAnswer:
        """Per class, the candidates whose truth agrees most with their label (tissue must be sharp)."""
        from tissue_oracle.tools.schemas import Exemplar

        exemplars = []
        labels: tuple[Label, ...] = ("tissue", "background")
        for label in labels:
            idx = [i for i, lab in enumerate(req.candidate_labels) if lab == label]
            score = {i: _frac(truth.tissue, truth, req.candidates[i]) for i in idx}
            if label == "background":
                score = {i: 1.0 - s for i, s in score.items()}
            for i in sorted(idx, key=lambda i: -score[i])[: req.top_k]:
                focus: Focus | None = "sharp" if label == "tissue" else None
                exemplars.append(
                    Exemplar(
                        ref=req.candidates[i], label=label, focus=focus, image=req.images[i], score=score[i]
                    )
                )
        return RerankAnswer(exemplars=exemplars)

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        truth = self._truth(ctx)
        r = req.region
        coords = [base.image_coords_of(r.x0, r.y0, r.width, r.height)] * 2
        spec = self._spec("review", [req.crop, req.mask.astype(np.uint8)], coords)
        return await base.compute_locally(ctx, spec, base.REVIEW_CODEC, lambda: self._review(truth, req))

    def _review(self, truth: TruthLike, req: ReviewRequest) -> ReviewAnswer:
        r = req.region
        ref = region_truth(truth, r, req.mask.shape[:2])
        mask = req.mask.astype(bool)
        tp = float(np.sum(mask & ref))
        true_p = 100.0 * tp / mask.sum() if mask.sum() else 100.0
        true_r = 100.0 * tp / ref.sum() if ref.sum() else 100.0
        rng = self._rng(5, r.x0, r.y0, r.x1, r.y1, int(mask.sum()))
        noisy_p = float(np.clip(true_p + rng.normal(0.0, self.errors.review_sigma_pct), 0.0, 100.0))
        noisy_r = float(np.clip(true_r + rng.normal(0.0, self.errors.review_sigma_pct), 0.0, 100.0))
        grades = {
            "precision": grade_from_percent(noisy_p),
            "recall": grade_from_percent(noisy_r),
            "precision_pct": round(noisy_p, 1),
            "recall_pct": round(noisy_r, 1),
            "notes": f"{SIMULATED}: truth plus N(0, {self.errors.review_sigma_pct}) pp noise",
        }
        return ReviewAnswer.model_validate({"grades": grades})

    async def aclose(self) -> None:
        return None


def sample_map(
    grid: np.ndarray, slide_width: int, slide_height: int, region: Box, shape: tuple[int, int]
) -> np.ndarray:
    """A whole-slide map (any resolution) in a level-0 ``region``, sampled at pixel centres onto ``shape``."""
    h, w = shape
    gh, gw = grid.shape[:2]
    ys = region.y0 + (np.arange(h) + 0.5) * region.height / h
    xs = region.x0 + (np.arange(w) + 0.5) * region.width / w
    rows = np.clip((ys * gh / slide_height).astype(int), 0, gh - 1)
    cols = np.clip((xs * gw / slide_width).astype(int), 0, gw - 1)
    return grid[rows][:, cols]


def region_truth(truth: TruthLike, region: Box, shape: tuple[int, int]) -> np.ndarray:
    """Truth tissue inside a level-0 ``region``, sampled onto an image of ``shape`` (bool)."""
    return sample_map(truth.tissue.astype(bool), truth.slide_width, truth.slide_height, region, shape)
