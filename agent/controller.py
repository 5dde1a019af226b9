"""One slide through the pipeline, under a policy: ``segment_slide``.

    thumbnail ─► ground_boxes ─► cluster_colours (M1) ─► classify_patches (zero-shot) ─► clean
        ─► per region, concurrently: review_mask ─► decide ─┬─ accept / escalate
                                   ▲                        └─ refine: point_ground ─► rerank_exemplars
                                   └──── clean ◄── classify_patches (few-shot, that region) ◄┘
        ─► merge regions in order ─► clean ─► outputs + summary.json ─► store

The policy decides (``policies.decide``), the tools compute, the store records. Every oracle
question goes through a ``BudgetedOracle`` on the slide's ledger, so no cap can break; when a
budget runs out, unanswered patches keep their coarse-mask label and the slide is ``degraded``
and flagged for human review, with the reason kept. Each region is reviewed on the zero-shot
mask plus only its own few-shot labels, and the final mask merges regions in index order, so
the result doesn't depend on which region finished first. Oracle calls run concurrently
(bounded by ``classify.max_in_flight``); reads, K-means and morphology run in threads.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.agent.budget_guard import BudgetedOracle, CallEstimator
from tissue_oracle.agent.oracle_setup import OracleSet
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.slide_io import (
    AuditSink,
    answered_only,
    final_labels,
    finish_outputs,
    patch_records,
    record_failure,
    recorder_of,
    slide_record,
    tracks_slides,
)
from tissue_oracle.agent.summary import RegionSummary, RoundRecord, SlideSummary, StageTally, build_summary
from tissue_oracle.oracles.routing import route_questions
from tissue_oracle.policies.decide import Decision, decide, refinement_helped
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Policy
from tissue_oracle.tools.classify_patches import (
    ClassifyPatchesInput,
    ClassifyPatchesOutput,
    classify_patches,
    merge_labels,
)
from tissue_oracle.tools.clean import CleanInput, CleanOutput, clean
from tissue_oracle.tools.cluster_colours import ClusterColoursInput, ClusterColoursOutput, cluster_colours
from tissue_oracle.tools.ground_boxes import GroundBoxesInput, GroundBoxesOutput, ground_boxes
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.point_ground import PointGroundInput, point_ground
from tissue_oracle.tools.rerank_exemplars import RerankExemplarsInput, rerank_exemplars
from tissue_oracle.tools.review_mask import ReviewMaskInput, review_mask
from tissue_oracle.tools.schemas import (
    Box,
    DecisionRecord,
    Exemplar,
    Grades,
    Role,
    Stage,
)
from tissue_oracle.tools.slide_base import Slide
from tissue_oracle.tools.slides import open_slide
from tissue_oracle.tools.stage_deps import StageDeps


def budgeted(oracles: OracleSet, ledger: BudgetLedger, policy: Policy) -> dict[Role, Oracle]:
    """Each role's oracle behind the slide's ledger, with an estimator for its price and retries.

    Questions a role's backend can't answer go to the role resolved at start-up (``OracleSet.routes``),
    through that role's budgeted backend, so they reserve at the price of the backend that answers.
    """
    by_role: dict[Role, Oracle] = {
        role: BudgetedOracle(
            oracle,
            ledger,
            CallEstimator.from_policy(
                policy,
                oracles.prices[role],
                attempts=oracles.attempts[role],
                output_cap=getattr(oracle, "output_token_cap", None),
                spec=oracles.specs[role],
            ),
        )
        for role, oracle in oracles.by_role.items()
    }
    return route_questions(by_role, oracles.routes)


class SlideRun:
    """One slide's run: deps, ledger, tallies and intermediate results. Used by ``segment_slide``."""

    def __init__(
        self,
        *,
        slide: Slide,
        slide_id: str,
        policy: Policy,
        oracles: OracleSet,
        store: Any,
        run_id: str,
        ledger: BudgetLedger,
        use_cache: bool,
    ) -> None:
        self.slide, self.slide_id, self.policy, self.run_id = slide, slide_id, policy, run_id
        self.sink: AuditSink = recorder_of(store)
        self.ledger = ledger
        self.use_cache = use_cache
        self.tally = StageTally(inner=self.sink)
        self.deps = StageDeps(
            slide=slide,
            oracles=budgeted(oracles, ledger, policy),
            context=self.context,
            max_in_flight=policy.classify.max_in_flight,
        )
        self.thumbnail: np.ndarray | None = None
        self.boxes: GroundBoxesOutput | None = None
        self.coarse: ClusterColoursOutput | None = None
        self.zero_shot: ClassifyPatchesOutput | None = None
        self.few_shot: dict[int, list[ClassifyPatchesOutput]] = {}

    def context(self, stage: Stage, role: Role) -> CallContext:
        return CallContext(
            run_id=self.run_id,
            slide_id=self.slide_id,
            stage=stage,
            role=role,
            recorder=self.tally,
            use_cache=self.use_cache,
        )

    # ------------------------------------------------------------------ stages

    async def coarse_stages(self) -> None:
        """Thumbnail, boxes, M1 and the zero-shot labels of every patch M1 touches."""
        p = self.policy
        ds = p.thumbnail.downsample
        with self.tally.timed("thumbnail"):
            thumb = self.thumbnail = await self.deps.in_thread(self.slide.thumbnail, ds)
        g = p.ground
        with self.tally.timed("ground_boxes"):
            self.boxes = await ground_boxes(
                GroundBoxesInput(
                    downsample=ds,
                    pad_fraction=g.pad_fraction,
                    merge_fraction=g.merge_fraction,
                    max_box_fraction=g.max_box_fraction,
                    retries=g.retries,
                    thumbnail=thumb,
                ),
                self.deps,
            )
        inp = ClusterColoursInput(
            downsample=ds,
            k_global=p.cluster.k_global,
            k_local=p.cluster.k_local,
            background_rule=p.cluster.background_rule,
            boxes=self.boxes.boxes,
        )
        inp.thumbnail = thumb
        with self.tally.timed("cluster_colours"):
            self.coarse = await self.deps.in_thread(cluster_colours, inp, self.deps)
        self.zero_shot = await self.classify()

    async def classify(
        self, region: Box | None = None, exemplars: list[Exemplar] | None = None
    ) -> ClassifyPatchesOutput:
        c, coarse = self.policy.classify, self.coarse
        assert coarse is not None, "coarse_stages runs first"
        inp = ClassifyPatchesInput(
            patch_size=c.patch_size,
            gate_fraction=c.gate_fraction,
            send_size=c.send_size,
            batch_size=c.batch_size,
            coarse_mask=coarse.mask,
            mask_downsample=coarse.downsample,
            region=region,
            exemplars=exemplars or [],
        )
        with self.tally.timed("classify_patches"):
            return await classify_patches(inp, self.deps)

    async def cleaned(self, tissue: np.ndarray) -> CleanOutput:
        c = self.policy.clean
        inp = CleanInput(
            tissue=tissue,
            min_tissue_patches=c.min_tissue_patches,
            max_hole_patches=c.max_hole_patches,
            connectivity=c.connectivity,
            keep_largest=c.keep_largest,
        )
        with self.tally.timed("clean"):
            return await self.deps.in_thread(clean, inp)

    # ------------------------------------------------------------------ regions

    def decision(self, region: int, round_: int, grades: Grades | None, action: Any, reason: str) -> None:
        left = self.ledger.remaining()
        self.sink.record_decision(
            DecisionRecord(
                run_id=self.run_id,
                slide_id=self.slide_id,
                region=region,
                round=round_,
                grades=grades,
                action=action,
                reason=reason,
                budget_left_calls=left.calls,
                budget_left_tokens=left.tokens,
                budget_left_usd=left.usd,
            )
        )

    async def review(self, box: Box, raw: ClassifyPatchesOutput) -> Any:
        mask = (await self.cleaned(raw.tissue)).tissue
        inp = ReviewMaskInput(
            crop_size=self.policy.review.crop_size, regions=[box], grid=raw.grid, tissue=mask
        )
        with self.tally.timed("review_mask"):
            return (await review_mask(inp, self.deps)).reviews[0]

    def note(
        self, out: RegionSummary, round_: int, grades: Grades | None, d: Decision, error: str | None = None
    ) -> RoundRecord:
        """Record one decision on a region (store and summary); final unless it is ``refine``."""
        record = RoundRecord(
            round=round_, grades=grades, action=d.action, reason=d.reason, review_error=error
        )
        out.rounds.append(record)
        self.decision(out.index, round_, grades, d.action, d.reason)
        if d.action != "refine":
            out.final_action, out.reason, out.needs_human_review = d.action, d.reason, d.action == "escalate"
        return record

    async def region(self, index: int, box: Box) -> RegionSummary:
        """Review, decide and refine one region until the policy accepts or escalates it."""
        out = RegionSummary(index=index, box=box)
        r = self.policy.review
        if not r.enabled:
            self.note(out, 0, None, Decision(action="accept", reason="review disabled by the policy"))
            return out
        assert self.zero_shot is not None
        history = [self.zero_shot]  # the region's raw labels after each kept round
        before: Grades | None = None
        while True:
            round_ = len(history) - 1
            review = await self.review(box, history[-1])
            if round_ and r.revert_if_worse and not refinement_helped(before, review.grades):
                history.pop()
                self.few_shot[index].pop()
                out.refinements -= 1
                why = f"Auto-context round {round_} was graded worse than the mask before it; labels dropped"
                self.note(out, round_, review.grades, Decision(action="escalate", reason=why), review.error)
                return out
            budget_ok = self.ledger.exhausted_reason is None and not review.budget_exhausted
            d = decide(
                review.grades,
                round_,
                threshold=r.threshold,
                max_rounds=r.max_rounds,
                budget_ok=budget_ok,
                on_review_failure=r.on_review_failure,
            )
            record = self.note(out, round_, review.grades, d, review.error)
            if d.action != "refine":
                return out
            refined, why = await self.refine(box, record)
            if refined is None:
                reason = f"Auto-context round {round_ + 1} failed: {why}"
                self.note(out, round_ + 1, None, Decision(action="escalate", reason=reason))
                return out
            self.few_shot.setdefault(index, []).append(refined)
            out.refinements += 1
            history.append(merge_labels(history[-1], refined))
            before = review.grades

    async def refine(self, box: Box, record: RoundRecord) -> tuple[ClassifyPatchesOutput | None, str]:
        """One Auto-context round on ``box``: points, exemplars, few-shot labels (answered ones only)."""
        p = self.policy
        with self.tally.timed("point_ground"):
            points = await point_ground(
                PointGroundInput(
                    crop_size=p.review.crop_size, points_per_class=p.autocontext.points_per_class, region=box
                ),
                self.deps,
            )
        record.points = len(points.points)
        if not points.points:
            return None, f"point_ground: {points.error or 'no points found'}"
        with self.tally.timed("rerank_exemplars"):
            picked = await rerank_exemplars(
                RerankExemplarsInput(
                    top_k=p.autocontext.top_k,
                    patch_size=p.classify.patch_size,
                    send_size=p.classify.send_size,
                    points=points.points,
                ),
                self.deps,
            )
        record.exemplars = len(picked.exemplars)
        if not picked.exemplars:
            return None, f"rerank_exemplars: {picked.error or 'no exemplar kept'}"
        few = await self.classify(region=box, exemplars=picked.exemplars)
        record.patches_sent = few.sent
        return answered_only(few), ""


async def run_slide(run: SlideRun, out_dir: Path, *, oracles: OracleSet, started: float) -> SlideSummary:
    """Everything after the slide is open: stages, regions, merge, outputs, summary."""
    await run.coarse_stages()
    assert run.boxes is not None and run.zero_shot is not None and run.thumbnail is not None
    boxes = run.boxes.boxes
    zero_clean = await run.cleaned(run.zero_shot.tissue)
    regions = list(await asyncio.gather(*(run.region(i, box) for i, box in enumerate(boxes))))
    final = run.zero_shot
    for index in sorted(run.few_shot):
        for refined in run.few_shot[index]:
            final = merge_labels(final, refined)
    cleaned = await run.cleaned(final.tissue)
    labels = final_labels(final, cleaned)
    run.sink.record_patches(patch_records(run.run_id, run.slide_id, labels))
    summary = build_summary(run, oracles, regions, final, cleaned)
    summary.seconds = time.perf_counter() - started
    await run.deps.in_thread(
        finish_outputs,
        run.slide,
        out_dir,
        summary,
        cleaned.tissue,
        labels,
        zero_clean.tissue,
        run.thumbnail,
        run.sink,
    )
    return summary


async def segment_file(
    path: str | Path, settings: RunSettings, deps: RunDeps, *, slide_id: str | None = None
) -> SlideSummary:
    """Open the slide file at ``path`` (with ``settings.mpp``), segment it, and close it.

    ``slide_id`` defaults to the file's stem. A slide that can't be opened is recorded as failed
    in the store before its ``SlideError`` propagates.
    """
    sid = slide_id or Path(path).stem
    try:
        slide = await asyncio.to_thread(open_slide, path, mpp=settings.mpp)
    except BaseException as exc:
        record_failure(deps.store, settings.run_id, sid, str(path), exc)
        raise
    with slide:
        return await segment_slide(slide, settings, deps, slide_id=sid)


async def segment_slide(
    slide: Slide, settings: RunSettings, deps: RunDeps, *, slide_id: str | None = None
) -> SlideSummary:
    """Segment one open slide under ``settings.policy``; outputs go to ``settings.slide_dir(slide_id)``.

    ``slide_id`` defaults to the slide's name. The slide is begun and finished in ``deps.store``
    when the store tracks slides, and charges a child of ``deps.ledger`` under the slide budget.
    The caller keeps the slide open and closes it (``segment_file`` does both for a file).
    Slide errors (``SlideError``) and anything unexpected propagate after the store has been
    told the slide failed; oracle failures and budget exhaustion never do.
    """
    started = time.perf_counter()
    policy, store, sid = settings.policy, deps.store, slide_id or slide.name
    if tracks_slides(store):
        store.begin_slide(slide_record(settings.run_id, sid, slide))
    run = SlideRun(
        slide=slide,
        slide_id=sid,
        policy=policy,
        oracles=deps.oracles,
        store=store,
        run_id=settings.run_id,
        ledger=deps.ledger.child(policy.budgets.slide, scope=f"slide {sid!r}"),
        use_cache=settings.use_cache,
    )
    try:
        summary = await run_slide(run, settings.slide_dir(sid), oracles=deps.oracles, started=started)
    except BaseException as exc:
        record_failure(store, settings.run_id, sid, None, exc)
        raise
    if tracks_slides(store):
        error = "; ".join(summary.reasons) if summary.status == "degraded" else None
        store.finish_slide(settings.run_id, sid, status=summary.status, error=error, flags=summary.flags)
    return summary
