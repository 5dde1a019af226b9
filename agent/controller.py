"""One slide through the pipeline, under a policy: ``segment_slide`` (``segment_file`` for a path).

    thumbnail ─► ground_boxes ─► cluster_colours (M1) ─► classify_patches (zero-shot) ─► clean
        ─► per region, concurrently: review_mask ─► decide ─┬─ accept / escalate
                                   ▲                        └─ refine: point_ground ─► rerank_exemplars
                                   └──── clean ◄── classify_patches (few-shot, that region) ◄┘
        ─► merge regions in order ─► clean ─► outputs + summary.json ─► store

When the policy allows (``policies.decide.dense_path``), one whole-slide pass replaces grounding,
M1, per-patch questions, review and Auto-context: the classical tissue map
(``classify.classical_map``, the classical oracle classifying and reviewing), or a student
classifier over the slide's tiles (``classify.student_map``, ``tools.classify_patches.classify_grid``).
Its regions are the pieces of its labels, accepted unreviewed.

The policy decides (``policies.decide``), the tools compute, the store records. Every oracle
question goes through a ``BudgetedOracle`` on the slide's ledger, so no cap can break; when a
budget runs out, unanswered patches keep their coarse-mask label and the slide is ``degraded``
and flagged for human review, with the reason kept. Each region is reviewed on the zero-shot
mask plus only its own few-shot labels, and the final mask merges regions in index order, so
the result doesn't depend on which region finished first. Oracle calls run concurrently
(bounded by ``classify.max_in_flight``); reads, K-means and morphology run in threads.

``SlideRun`` carries no optional results: each stage returns what it produced, each region's loop
(``agent.regions.review_region``) returns its rounds and kept labels, and the run ends by building
its own ``SlideSummary``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from tissue_oracle.agent.budget_guard import BudgetedOracle, CallEstimator
from tissue_oracle.agent.oracle_setup import OracleSet
from tissue_oracle.agent.outputs import SlideOutputs, output_paths, readable_picture, write_slide_outputs
from tissue_oracle.agent.regions import CoarseResult, review_region
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.slide_ids import SlideFolder, claim_slide_folder, safe_slide_id
from tissue_oracle.agent.summary import (
    PatchCounts,
    RegionSummary,
    SlideSummary,
    StageTally,
    decided_by,
    labelled_as,
)
from tissue_oracle.oracles.cascade import with_cascade
from tissue_oracle.oracles.classical_dense import (
    ClassifyDenseInput,
    DenseClassifyOutput,
    classify_dense,
    cut_to_patches,
)
from tissue_oracle.oracles.routing import route_questions
from tissue_oracle.policies.decide import DensePath, coarse_grid_note, dense_path, judge_slide
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Policy, stage_settings
from tissue_oracle.policies.prices import FREE
from tissue_oracle.store.recorder import AuditRecorder
from tissue_oracle.store.records import patch_records, slide_record
from tissue_oracle.tools.classify_patches import (
    ClassifyPatchesInput,
    ClassifyPatchesOutput,
    ClassifyPatchesParams,
    classify_grid,
    classify_patches,
    final_labels,
    merge_labels,
    tissue_pieces,
)
from tissue_oracle.tools.clean import CleanInput, CleanOutput, clean
from tissue_oracle.tools.cluster_colours import ClusterColoursInput, ClusterColoursOutput, cluster_colours
from tissue_oracle.tools.ground_boxes import GroundBoxesInput, GroundBoxesOutput, ground_boxes
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import Box, Exemplar, Role, SlideRecord, Stage
from tissue_oracle.tools.slide_base import Slide
from tissue_oracle.tools.slides import open_slide
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import (
    ClassifyPatchesSettings,
    CleanSettings,
    ClusterColoursSettings,
    GroundBoxesSettings,
)


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
    if oracles.cascade_student is not None:  # the student first; each oracle question budgets itself
        free = CallEstimator.from_policy(policy, FREE, attempts=1)
        by_role = with_cascade(
            by_role,
            student=BudgetedOracle(oracles.cascade_student, ledger, free),
            threshold=oracles.cascade_threshold,
            oracle_batch=policy.classify.batch_size,
            request_batch=policy.cascade.request_batch,
        )
    return route_questions(by_role, oracles.routes)


class SlideRun:
    """One slide's run: its deps, its ledger and tallies; ``run`` returns the slide's summary."""

    def __init__(
        self, *, slide: Slide, slide_id: str, settings: RunSettings, deps: RunDeps, folder: SlideFolder
    ) -> None:
        self.slide, self.slide_id, self.settings, self.folder = slide, slide_id, settings, folder
        self.policy, self.run_id, self.oracles = settings.policy, settings.run_id, deps.oracles
        self.recorder: AuditRecorder = deps.store
        self.ledger = deps.ledger.child(self.policy.budgets.slide, scope=f"slide {slide_id!r}")
        self.planner = deps.planner
        self.tally = StageTally(inner=self.recorder)
        self.deps = StageDeps(
            slide=slide,
            oracles=budgeted(deps.oracles, self.ledger, self.policy),
            context=self.context,
            max_in_flight=self.policy.classify.max_in_flight,
        )
        self.dense: DensePath | None = dense_path_for(deps.oracles, self.policy)
        """One whole-slide pass labels the slide (the classical map, or a student over the tiles)."""

    def context(self, stage: Stage, role: Role) -> CallContext:
        return CallContext(
            run_id=self.run_id,
            slide_id=self.slide_id,
            stage=stage,
            role=role,
            recorder=self.tally,
            use_cache=self.settings.use_cache,
        )

    async def run(self) -> SlideSummary:
        """Stages, regions, merge in region order, patch rows, outputs; the slide's summary."""
        started = time.perf_counter()
        plan = None
        if self.planner is None:
            coarse, regions, final = await self.decide_regions()
        else:
            coarse, regions, final, plan = await self.planner.plan(self)
        zero_clean = await self.cleaned(coarse.zero_shot.tissue)
        cleaned = await self.cleaned(final.tissue)
        labels = final_labels(final, cleaned)
        self.recorder.record_patches(patch_records(self.run_id, self.slide_id, labels))
        summary = self.summary(coarse, regions, final, cleaned)
        summary.patches.decided_by = decided_by(labels)
        summary.labelled_as = labelled_as(self.oracles.by_role, summary.patches.decided_by)
        summary.planner = plan
        contour = None
        if isinstance(coarse.zero_shot, DenseClassifyOutput):
            pixels = cut_to_patches(coarse.zero_shot, np.asarray(cleaned.tissue, dtype=bool))
            contour = (pixels, coarse.zero_shot.map_downsample)
            if self.slide.mpp:
                px_mm = coarse.zero_shot.map_downsample * self.slide.mpp / 1000.0
                summary.tissue_area_mm2 = round(float(pixels.sum()) * px_mm * px_mm, 4)
        summary.seconds = time.perf_counter() - started
        out_dir = self.folder.path
        summary.outputs = output_paths(out_dir)

        def write() -> None:
            outputs = SlideOutputs(
                run_id=self.run_id,
                slide_id=self.slide_id,
                grid=self.slide.patch_grid(summary.patches.patch_size),
                tissue=np.asarray(cleaned.tissue, dtype=bool),
                labels=labels,
                thumbnail=coarse.thumbnail,
                thumb_downsample=summary.thumbnail_downsample,
                level_dim=(summary.width, summary.height),
                summary=summary.model_dump(mode="json"),
                magnification=self.slide.magnification,
                picture=readable_picture(self.slide, coarse.thumbnail),
                zero_shot_tissue=np.asarray(zero_clean.tissue, dtype=bool),
                contour=contour,
            )
            for record in write_slide_outputs(out_dir, outputs):
                self.recorder.record_output(record)

        await self.deps.in_thread(write)
        return summary

    async def decide_regions(
        self, coarse: CoarseResult | None = None
    ) -> tuple[CoarseResult, list[RegionSummary], ClassifyPatchesOutput]:
        """The policy's flow: coarse stages (unless a planner left them), every region decided
        concurrently, and the kept few-shot labels merged in region order."""
        coarse = coarse or await self.coarse_stages()
        boxes = coarse.boxes.boxes
        regions = list(
            await asyncio.gather(*(review_region(self, i, box, coarse) for i, box in enumerate(boxes)))
        )
        final = coarse.zero_shot
        for region in regions:
            for refined in region.kept:
                final = merge_labels(final, refined)
        return coarse, [r.summary for r in regions], final

    # ------------------------------------------------------------------ stages

    async def coarse_stages(self) -> CoarseResult:
        """Thumbnail, boxes, M1 and the zero-shot labels of every patch M1 touches."""
        p = self.policy
        ds = p.thumbnail.downsample
        with self.tally.timed("thumbnail"):
            thumb = await self.deps.in_thread(self.slide.thumbnail, ds)
        if self.dense is not None:  # regions come from the labels: no grounding, no fallback box
            with self.tally.timed("classify_patches"):
                labels = await self.classify_whole_slide(self.dense)
            pieces = GroundBoxesOutput(boxes=tissue_pieces(labels))
            return CoarseResult(thumbnail=thumb, boxes=pieces, coarse=None, zero_shot=labels)
        with self.tally.timed("ground_boxes"):
            boxes = await ground_boxes(
                GroundBoxesInput(
                    **stage_settings(p.ground, GroundBoxesSettings), downsample=ds, thumbnail=thumb
                ),
                self.deps,
            )
        inp = ClusterColoursInput(
            **stage_settings(p.cluster, ClusterColoursSettings),
            downsample=ds,
            boxes=boxes.boxes,
            thumbnail=thumb,
        )
        with self.tally.timed("cluster_colours"):
            coarse = await self.deps.in_thread(cluster_colours, inp, self.deps)
        zero_shot = await self.classify(coarse)
        return CoarseResult(thumbnail=thumb, boxes=boxes, coarse=coarse, zero_shot=zero_shot)

    async def classify_whole_slide(self, path: DensePath) -> ClassifyPatchesOutput:
        """Every grid patch from one pass: the classical tissue map, or the classifier over the tiles."""
        size = self.policy.classify.patch_size
        if path == "classical":
            return await classify_dense(ClassifyDenseInput(patch_size=size), self.deps)
        settings = stage_settings(self.policy.classify, ClassifyPatchesSettings)
        return await classify_grid(ClassifyPatchesParams(**settings), self.deps)

    async def classify(
        self, coarse: ClusterColoursOutput, region: Box | None = None, exemplars: list[Exemplar] | None = None
    ) -> ClassifyPatchesOutput:
        inp = ClassifyPatchesInput(
            **stage_settings(self.policy.classify, ClassifyPatchesSettings),
            coarse_mask=coarse.mask,
            mask_downsample=coarse.downsample,
            region=region,
            exemplars=exemplars or [],
        )
        with self.tally.timed("classify_patches"):
            return await classify_patches(inp, self.deps)

    async def cleaned(self, tissue: np.ndarray) -> CleanOutput:
        if self.dense is not None:
            # The classical map was cleaned at pixel scale (crumbs dropped, small holes filled), and a
            # student imitates the final labels it was distilled from; the patch rule "drop pieces
            # under N patches" would erase small biopsies and faint pieces the teacher keeps.
            none = np.zeros_like(tissue, dtype=bool)
            return CleanOutput(
                tissue=tissue,
                changed=none,
                removed_components=0,
                removed_cells=0,
                filled_holes=0,
                filled_cells=0,
            )
        inp = CleanInput(**stage_settings(self.policy.clean, CleanSettings), tissue=tissue)
        with self.tally.timed("clean"):
            return await self.deps.in_thread(clean, inp)

    # ------------------------------------------------------------------ summary

    def summary(
        self,
        coarse: CoarseResult,
        regions: list[RegionSummary],
        final: ClassifyPatchesOutput,
        cleaned: CleanOutput,
    ) -> SlideSummary:
        """``summary.json`` of this run (outputs and seconds are filled in by ``run``)."""
        zero, grid, slide = coarse.zero_shot, final.grid, self.slide
        width, height = slide.dimensions
        out_of_scope = (
            (zero.scope_kind, zero.scope_message)
            if isinstance(zero, DenseClassifyOutput) and zero.scope_message
            else None
        )
        too_small = out_of_scope is not None and out_of_scope[0] == "image_too_small"  # it advises already
        verdict = judge_slide(
            exhausted_reason=self.ledger.exhausted_reason,
            stage_refused=final.budget_exhausted,
            failed_patches=zero.failed,
            boxes_fallback=coarse.boxes.fallback,
            escalated=[(r.index, r.reason) for r in regions if r.needs_human_review],
            out_of_scope=out_of_scope,
            grid_note=None if too_small else coarse_grid_note(width, height, grid.patch_size, slide.mpp),
        )
        if self.folder.note:
            verdict.flags.append("folder_taken")
            verdict.reasons.append(self.folder.note)
        left = self.ledger.remaining()
        return SlideSummary(
            run_id=self.run_id,
            slide_id=self.slide_id,
            path=None if slide.path is None else str(slide.path),
            width=width,
            height=height,
            mpp=slide.mpp,
            status=verdict.status,
            flags=verdict.flags,
            reasons=verdict.reasons,
            policy_name=self.policy.name,
            policy_hash=self.policy.policy_hash,
            oracles=self.oracles.identities(),
            labelled_as=labelled_as(self.oracles.by_role),
            thumbnail_downsample=self.policy.thumbnail.downsample,
            boxes=coarse.boxes.boxes,
            boxes_fallback=coarse.boxes.fallback,
            regions=regions,
            patches=PatchCounts(
                patch_size=grid.patch_size,
                rows=grid.rows,
                cols=grid.cols,
                naive_calls=grid.rows * grid.cols,
                in_scope=int(zero.scope.sum()),
                sent_zero_shot=zero.sent,
                gated_out=zero.gated_out,
                sent_few_shot=sum(r.patches_sent or 0 for reg in regions for r in reg.rounds),
                coarse_fallback=zero.failed,
                tissue=int(cleaned.tissue.sum()),
                changed_by_clean=int(cleaned.changed.sum()),
            ),
            stages=dict(self.tally.stats),
            totals=self.tally.total(),
            budget_left={"calls": left.calls, "tokens": left.tokens, "usd": left.usd},
        )


def dense_path_for(oracles: OracleSet, policy: Policy) -> DensePath | None:
    """The policy's whole-slide pass for these backends (``policies.decide.dense_path``), if any."""
    roles = oracles.by_role
    classifier = roles.get("classifier") or roles.get("oracle")
    reviewer = roles.get("reviewer") if policy.review.enabled else None
    return dense_path(
        policy.classify,
        None if classifier is None else classifier.backend,
        None if reviewer is None else reviewer.backend,
    )


# --------------------------------------------------------------------------- entry points


async def segment_file(
    path: str | Path, settings: RunSettings, deps: RunDeps, *, slide_id: str | None = None
) -> SlideSummary:
    """Open the slide file at ``path`` (with ``settings.mpp``), segment it, and close it.

    ``slide_id`` defaults to the file's stem. A slide that can't be opened is recorded as failed
    in the store before its ``SlideError`` propagates.
    """
    sid = slide_id or safe_slide_id(Path(path).stem)
    try:
        slide = await asyncio.to_thread(open_slide, path, mpp=settings.mpp)
    except BaseException as exc:
        deps.store.begin_slide(SlideRecord(run_id=settings.run_id, slide_id=sid, path=str(path)))
        _record_failure(deps.store, settings.run_id, sid, exc)
        raise
    with slide:
        return await segment_slide(slide, settings, deps, slide_id=sid)


async def segment_slide(
    slide: Slide, settings: RunSettings, deps: RunDeps, *, slide_id: str | None = None
) -> SlideSummary:
    """Segment one open slide under ``settings.policy``; outputs go to ``claim_slide_folder``'s folder.

    ``slide_id`` defaults to the slide's name. The slide is begun and finished in ``deps.store``
    and charges a child of ``deps.ledger`` under the slide budget. The caller keeps the slide
    open and closes it (``segment_file`` does both for a file). Slide errors (``SlideError``)
    and anything unexpected propagate after the store has been told the slide failed; oracle
    failures and budget exhaustion never do.
    """
    store, sid = deps.store, slide_id or safe_slide_id(slide.name)
    store.begin_slide(slide_record(settings.run_id, sid, slide))
    try:
        if settings.use_cache:  # a resumed slide: what its interrupted attempt paid for is handed back
            store.resume_slide(settings.run_id, sid)
        folder = claim_slide_folder(settings.out_dir, sid, settings.run_id)
        summary = await SlideRun(slide=slide, slide_id=sid, settings=settings, deps=deps, folder=folder).run()
    except BaseException as exc:
        _record_failure(store, settings.run_id, sid, exc)
        raise
    error = "; ".join(summary.reasons) if summary.status == "degraded" else None
    store.finish_slide(settings.run_id, sid, status=summary.status, error=error, flags=summary.flags)
    return summary


def _record_failure(store: AuditRecorder, run_id: str, slide_id: str, exc: BaseException) -> None:
    store.finish_slide(run_id, slide_id, status="failed", error=f"{type(exc).__name__}: {exc}")
