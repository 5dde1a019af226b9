"""One region's review loop: review the mask, let the policy decide, refine, until it accepts or
escalates (``review_region``).

The region is reviewed on the slide's zero-shot labels plus only its own kept Auto-context rounds,
so regions can run concurrently and the slide merges their rounds in region order. What the loop
needs from the slide's run (policy, ledger, recorder, the classify and clean stages) is the
``SlideStages`` protocol, which ``agent.controller.SlideRun`` keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tissue_oracle.agent.summary import RegionSummary, RoundRecord, StageTally
from tissue_oracle.policies.decide import (
    Decision,
    DensePath,
    decide_review,
    map_accepted,
    refinement_failed,
    review_disabled,
)
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Policy, stage_settings
from tissue_oracle.store.recorder import AuditRecorder
from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput, answered_only, merge_labels
from tissue_oracle.tools.clean import CleanOutput
from tissue_oracle.tools.cluster_colours import ClusterColoursOutput
from tissue_oracle.tools.ground_boxes import GroundBoxesOutput
from tissue_oracle.tools.point_ground import PointGroundInput, point_ground
from tissue_oracle.tools.rerank_exemplars import RerankExemplarsInput, rerank_exemplars
from tissue_oracle.tools.review_mask import RegionReview, ReviewMaskInput, review_mask
from tissue_oracle.tools.schemas import Box, DecisionRecord, Exemplar, Grades
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import (
    PointGroundSettings,
    RerankExemplarsSettings,
    ReviewMaskSettings,
)


@dataclass(kw_only=True)
class CoarseResult:
    """What the coarse stages produced for the whole slide."""

    thumbnail: np.ndarray
    """RGB uint8 at ``policy.thumbnail.downsample`` (thumb_xy frame)."""
    boxes: GroundBoxesOutput
    """Regions, level-0 frame (one whole-slide box when grounding fell back)."""
    coarse: ClusterColoursOutput | None
    """The coarse mask M1 (None when a whole-slide pass labelled the slide: ``SlideStages.dense``)."""
    zero_shot: ClassifyPatchesOutput
    """Zero-shot labels of every patch M1 touches."""


@dataclass(kw_only=True)
class RegionResult:
    """One region's reviews and decisions, and the few-shot labels of the rounds it kept."""

    summary: RegionSummary
    kept: list[ClassifyPatchesOutput] = field(default_factory=list)
    """Answered few-shot labels of each kept Auto-context round, in order."""


class SlideStages(Protocol):
    """What a region's loop uses of its slide's run (``agent.controller.SlideRun``)."""

    policy: Policy
    run_id: str
    slide_id: str
    ledger: BudgetLedger
    """The slide's ledger; an exhausted one stops refinement."""
    recorder: AuditRecorder
    tally: StageTally
    deps: StageDeps
    dense: DensePath | None
    """One whole-slide pass labelled the slide (``policies.decide.dense_path``): regions are
    accepted as they are."""

    async def classify(
        self, coarse: ClusterColoursOutput, region: Box | None = None, exemplars: list[Exemplar] | None = None
    ) -> ClassifyPatchesOutput: ...

    async def cleaned(self, tissue: np.ndarray) -> CleanOutput: ...


async def review_region(run: SlideStages, index: int, box: Box, coarse: CoarseResult) -> RegionResult:
    """Review, decide and refine one region until the policy accepts or escalates it.

    The region is reviewed on the zero-shot labels plus only its own kept rounds.
    """
    result = RegionResult(summary=RegionSummary(index=index, box=box))
    rules = run.policy.review
    if not rules.enabled:
        note_decision(run, result, 0, None, review_disabled())
        return result
    if run.dense is not None:
        note_decision(run, result, 0, None, map_accepted(run.dense))
        return result
    labels, before = coarse.zero_shot, None
    while True:
        round_ = len(result.kept)
        review = await _review(run, box, labels)
        budget_ok = run.ledger.exhausted_reason is None and not review.budget_exhausted
        decision = decide_review(review.grades, before, round_, rules=rules, budget_ok=budget_ok)
        record = note_decision(run, result, round_, review.grades, decision, review.error)
        if decision.action != "refine":
            return result
        refined, why = await _refine(run, box, coarse, record)
        if refined is None:
            note_decision(run, result, round_ + 1, None, refinement_failed(round_, why))
            return result
        result.kept.append(refined)
        result.summary.refinements = len(result.kept)
        labels, before = merge_labels(labels, refined), review.grades


def note_decision(
    run: SlideStages,
    result: RegionResult,
    round_: int,
    grades: Grades | None,
    d: Decision,
    error: str | None = None,
) -> RoundRecord:
    """Apply and record one decision on a region (store and summary); final unless ``refine``."""
    out = result.summary
    if d.drop_last_round:
        result.kept.pop()
        out.refinements = len(result.kept)
    record = RoundRecord(round=round_, grades=grades, action=d.action, reason=d.reason, review_error=error)
    out.rounds.append(record)
    left = run.ledger.remaining()
    run.recorder.record_decision(
        DecisionRecord(
            run_id=run.run_id,
            slide_id=run.slide_id,
            region=out.index,
            round=round_,
            grades=grades,
            action=d.action,
            reason=d.reason,
            budget_left_calls=left.calls,
            budget_left_tokens=left.tokens,
            budget_left_usd=left.usd,
        )
    )
    if d.action != "refine":
        out.final_action, out.reason, out.needs_human_review = d.action, d.reason, d.needs_human_review
    return record


async def _review(run: SlideStages, box: Box, raw: ClassifyPatchesOutput) -> RegionReview:
    mask = (await run.cleaned(raw.tissue)).tissue
    settings = stage_settings(run.policy.review, ReviewMaskSettings)
    inp = ReviewMaskInput(**settings, regions=[box], grid=raw.grid, tissue=mask)
    with run.tally.timed("review_mask"):
        return (await review_mask(inp, run.deps)).reviews[0]


async def _refine(
    run: SlideStages, box: Box, coarse: CoarseResult, record: RoundRecord
) -> tuple[ClassifyPatchesOutput | None, str]:
    """One Auto-context round on ``box``: points, exemplars, few-shot labels (answered ones only)."""
    p = run.policy
    with run.tally.timed("point_ground"):
        points = await point_ground(
            PointGroundInput(
                **stage_settings(p.autocontext, PointGroundSettings),
                crop_size=p.review.crop_size,
                region=box,
            ),
            run.deps,
        )
    record.points = len(points.points)
    if not points.points:
        return None, f"point_ground: {points.error or 'no points found'}"
    with run.tally.timed("rerank_exemplars"):
        picked = await rerank_exemplars(
            RerankExemplarsInput(
                **stage_settings(p.autocontext, RerankExemplarsSettings),
                patch_size=p.classify.patch_size,
                send_size=p.classify.send_size,
                points=points.points,
            ),
            run.deps,
        )
    record.exemplars = len(picked.exemplars)
    if not picked.exemplars:
        return None, f"rerank_exemplars: {picked.error or 'no exemplar kept'}"
    assert coarse.coarse is not None, "refinement needs M1 (not run when a whole-slide pass labels)"
    few = await run.classify(coarse.coarse, region=box, exemplars=picked.exemplars)
    record.patches_sent = few.sent
    return answered_only(few), ""
