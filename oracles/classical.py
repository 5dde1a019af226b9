"""The classical oracle: every question answered from colour, optical density and texture, no VLM.

It is the embedded default when no VLM is configured and the strongest non-VLM baseline. It is
labelled honestly: backend ``classical``, model ``classical-v1``, ``is_vlm`` False, and every
review note starts with ``classical:``. Its calls go through the same cache and audit rows as a
VLM's (zero cost), so runs with and without a VLM are audited alike.

How each question is answered (pixel rules in ``oracles.evidence``):

- boxes: connected tissue sections on the thumbnail, nearby fragments merged;
- patch labels: tissue when the tissue-pixel share reaches ``tissue_fraction``; focus from the
  sharpness ratio; few-shot exemplars adapt the stain threshold and vote by nearest centroid;
- points: deepest tissue and deepest clear background on the crop;
- rerank: the most typical candidate per class (tissue picks must be sharp);
- review: precision and recall of the given mask against its own tissue map, graded 1-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tissue_oracle.oracles import base
from tissue_oracle.oracles.base import CallSpec, WireCodec
from tissue_oracle.oracles.evidence import (
    DEFAULT_PARAMS,
    EvidenceParams,
    PatchEvidence,
    optical_density,
    patch_evidence,
    pixel_evidence,
)
from tissue_oracle.oracles.regions import crop_points, mask_agreement, section_boxes
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    ALL_QUESTIONS,
    Box,
    BoxesAnswer,
    BoxesRequest,
    Exemplar,
    Label,
    PatchLabel,
    PatchLabelsAnswer,
    PatchLabelsRequest,
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

ALGORITHM_VERSION = "classical-v1"
_FOCUS_WEIGHT = {"sharp": 1.0, "mild_blur": 0.4, "out_of_focus": 0.1}


@dataclass(kw_only=True)
class ClassicalOracle:
    """Answers all five questions from image evidence. Not a VLM, and says so."""

    params: EvidenceParams = DEFAULT_PARAMS
    """Pixel-rule thresholds."""
    tissue_fraction: float = 0.5
    """A patch is tissue when solid tissue covers at least this share of it (calibrated on synthetic
    slides against truth "tissue fraction >= 0.5")."""
    work_max_side: int = 1024
    """Crops and thumbnails are analysed at most this many pixels on the long side."""
    backend: str = "classical"
    model: str = ALGORITHM_VERSION
    questions: frozenset[Question] = field(default=ALL_QUESTIONS)
    is_vlm: bool = False

    # ------------------------------------------------------------------ plumbing

    def _spec(
        self, question: Question, arrays: list[np.ndarray], coords: list[list[int]], **params: Any
    ) -> CallSpec:
        settings = {"tissue_fraction": self.tissue_fraction, "rules": self.params.__dict__, **params}
        blobs = [base.array_bytes(a) for a in arrays]
        return CallSpec(
            backend=self.backend,
            model=self.model,
            question=question,
            request_hash=base.request_hash(
                self.backend, self.model, question, ALGORITHM_VERSION, blobs, settings
            ),
            image_hashes=[base.sha256_hex(b) for b in blobs],
            image_coords=coords,
            request_json=base.canonical_json(
                {"question": question, "params": params, "n_images": len(arrays)}
            ),
        )

    async def _run(self, ctx: CallContext, spec: CallSpec, codec: WireCodec[Any], fn: Any) -> Any:
        return await base.compute_locally(ctx, spec, codec, fn)

    # ------------------------------------------------------------------ boxes

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        """Level-0 boxes of the tissue sections on ``req.thumbnail`` (``thumb_xy`` times the downsample)."""
        coords = [[0, 0, req.slide_width, req.slide_height]]
        spec = self._spec("boxes", [req.thumbnail], coords, downsample=req.downsample)
        return await self._run(ctx, spec, base.BOXES_CODEC, lambda: self._boxes(req))

    def _boxes(self, req: BoxesRequest) -> BoxesAnswer:
        thumb = base.downscale(req.thumbnail, self.work_max_side)
        scale = req.downsample * req.thumbnail.shape[1] / thumb.shape[1]
        boxes = []
        for x0, y0, x1, y1 in section_boxes(thumb, self.params):
            lx0, ly0 = min(int(x0 * scale), req.slide_width - 1), min(int(y0 * scale), req.slide_height - 1)
            lx1, ly1 = (
                min(int(np.ceil(x1 * scale)), req.slide_width),
                min(int(np.ceil(y1 * scale)), req.slide_height),
            )
            if lx1 > lx0 and ly1 > ly0:
                boxes.append(Box(x0=lx0, y0=ly0, x1=lx1, y1=ly1, label="tissue"))
        return BoxesAnswer(boxes=boxes)

    # ------------------------------------------------------------------ patch labels

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        """One label per patch, in request order; exemplars (if any) make it few-shot."""
        arrays = [ex.image for ex in req.exemplars] + list(req.images)
        refs = [ex.ref for ex in req.exemplars] + list(req.patches)
        coords = [base.image_coords_of(r.x, r.y, r.size, r.size) for r in refs]
        shots = [ex.label for ex in req.exemplars]
        spec = self._spec("patch_labels", arrays, coords, exemplar_labels=shots)
        return await self._run(ctx, spec, base.PATCH_LABELS_CODEC, lambda: self._patch_labels(req))

    def _patch_labels(self, req: PatchLabelsRequest) -> PatchLabelsAnswer:
        od_threshold = adapted_od_threshold(req.exemplars, self.params)
        centroids = _centroids(req.exemplars, self.params, od_threshold)
        source = "few_shot" if req.exemplars else "zero_shot"
        labels = []
        for ref, image in zip(req.patches, req.images, strict=True):
            ev = patch_evidence(image, self.params, od_threshold)
            label, confidence = self._decide(ev, centroids)
            labels.append(
                PatchLabel(ref=ref, label=label, focus=ev.focus, confidence=confidence, source=source)
            )
        return PatchLabelsAnswer(labels=labels)

    def _decide(self, ev: PatchEvidence, centroids: dict[Label, np.ndarray]) -> tuple[Label, float]:
        """Threshold rule, or nearest centroid when exemplars of both classes were given."""
        if len(centroids) == 2:
            feats = ev.features()
            d_t = float(np.linalg.norm(feats - centroids["tissue"]))
            d_b = float(np.linalg.norm(feats - centroids["background"]))
            label: Label = "tissue" if d_t < d_b else "background"
            return label, round(0.5 + 0.5 * abs(d_b - d_t) / max(d_b + d_t, 1e-6), 3)
        margin = (ev.tissue_frac - self.tissue_fraction) / self.tissue_fraction
        label = "tissue" if margin >= 0 else "background"
        return label, round(0.5 + 0.5 * min(1.0, abs(margin)), 3)

    # ------------------------------------------------------------------ points

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        """Tissue and background points in the level-0 frame, inside ``req.region``."""
        r = req.region
        coords = [base.image_coords_of(r.x0, r.y0, r.width, r.height)]
        spec = self._spec("points", [req.crop], coords, per_class=req.max_points_per_class)
        return await self._run(ctx, spec, base.POINTS_CODEC, lambda: self._points(req))

    def _points(self, req: PointsRequest) -> PointsAnswer:
        crop = base.downscale(req.crop, self.work_max_side)
        sx, sy = req.region.width / crop.shape[1], req.region.height / crop.shape[0]
        tissue, background = crop_points(crop, req.max_points_per_class, self.params)
        points = []
        for label, found in (("tissue", tissue), ("background", background)):
            for px, py in found:
                x = min(req.region.x0 + int((px + 0.5) * sx), req.region.x1 - 1)
                y = min(req.region.y0 + int((py + 0.5) * sy), req.region.y1 - 1)
                points.append(Point(x=x, y=y, label=label))
        return PointsAnswer(points=points)

    # ------------------------------------------------------------------ rerank

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        """The ``top_k`` most typical candidates per class; tissue picks must be sharp when any are."""
        coords = [base.image_coords_of(r.x, r.y, r.size, r.size) for r in req.candidates]
        spec = self._spec("rerank", list(req.images), coords, labels=req.candidate_labels, top_k=req.top_k)
        return await self._run(ctx, spec, base.rerank_codec(req), lambda: self._rerank(req))

    def _rerank(self, req: RerankRequest) -> RerankAnswer:
        evidence = [patch_evidence(image, self.params) for image in req.images]
        exemplars: list[Exemplar] = []
        for wanted in ("tissue", "background"):
            scored = []
            for i, (label, ev) in enumerate(zip(req.candidate_labels, evidence, strict=True)):
                if label != wanted:
                    continue
                scored.append((typicality(ev, wanted), i))
            scored.sort(key=lambda s: (-s[0], s[1]))
            for score, i in scored[: req.top_k]:
                ex = Exemplar(
                    ref=req.candidates[i],
                    label=wanted,
                    focus=evidence[i].focus if wanted == "tissue" else None,
                    image=req.images[i],
                    score=round(score, 4),
                )
                exemplars.append(ex)
        return RerankAnswer(exemplars=exemplars)

    # ------------------------------------------------------------------ review

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        """Precision/recall grades of ``req.mask`` on the crop, from the classical tissue map."""
        r = req.region
        coords = [base.image_coords_of(r.x0, r.y0, r.width, r.height)] * 2
        spec = self._spec("review", [req.crop, req.mask.astype(np.uint8)], coords)
        return await self._run(ctx, spec, base.REVIEW_CODEC, lambda: self._review(req))

    def _review(self, req: ReviewRequest) -> ReviewAnswer:
        crop = base.downscale(req.crop, self.work_max_side)
        agree = mask_agreement(crop, req.mask, self.params)
        precision, recall = round(agree.precision_pct, 1), round(agree.recall_pct, 1)
        notes = (
            f"classical: mask covers {100 * agree.mask_frac:.0f}% of the crop, "
            f"stain evidence {100 * agree.evidence_frac:.0f}%"
        )
        grades = {
            "precision": grade_from_percent(precision),
            "recall": grade_from_percent(recall),
            "precision_pct": precision,
            "recall_pct": recall,
            "notes": notes,
        }
        return ReviewAnswer.model_validate({"grades": grades})

    async def aclose(self) -> None:
        return None


def typicality(ev: PatchEvidence, label: str) -> float:
    """How good an exemplar of ``label`` a patch makes (0-1): clean, full, and for tissue, sharp."""
    clean = (1.0 - min(1.0, 4 * ev.pen_frac)) * (1.0 - min(1.0, 20 * ev.speckle_frac))
    if label == "tissue":
        return ev.tissue_frac * _FOCUS_WEIGHT[ev.focus] * clean
    return (1.0 - ev.tissue_frac) * clean


def adapted_od_threshold(exemplars: list[Exemplar], params: EvidenceParams) -> float | None:
    """The stain OD threshold moved between the exemplars' background and tissue levels.

    Pale stains sit below the default threshold; a background exemplar with a grey cast sits
    above it. With no exemplars the default stands (None).
    """
    if not exemplars:
        return None
    tissue_levels, background_levels = [], []
    for ex in exemplars:
        od = optical_density(ex.image)
        if ex.label == "background":
            background_levels.append(float(np.percentile(od, 95)))
        else:
            ev = pixel_evidence(ex.image, params, od_threshold=params.od_coloured * 0.5)
            if ev.tissue.any():
                tissue_levels.append(float(np.median(od[ev.tissue])))
    low = max(background_levels) if background_levels else None
    high = min(tissue_levels) if tissue_levels else None
    if low is not None and high is not None and high > low:
        threshold = low + 0.35 * (high - low)
    elif high is not None:
        threshold = min(params.od_coloured, 0.4 * high)
    elif low is not None:
        threshold = max(params.od_coloured, 1.15 * low)
    else:
        return None
    return float(np.clip(threshold, 0.05, 0.5))


def _centroids(
    exemplars: list[Exemplar], params: EvidenceParams, od_threshold: float | None
) -> dict[Label, np.ndarray]:
    groups: dict[Label, list[np.ndarray]] = {}
    for ex in exemplars:
        groups.setdefault(ex.label, []).append(patch_evidence(ex.image, params, od_threshold).features())
    return {label: np.mean(feats, axis=0) for label, feats in groups.items()}
