"""A slide planned by the LLM planner, finished by the deterministic policy wherever the guard says so.

:class:`LivePlanner` is what ``RunDeps.planner`` holds when a run has a planner
(``segment --planner``, ``roles.planner``). ``SlideRun.run`` asks it for the slide's coarse
result, regions and final labels in place of ``SlideRun.decide_regions``. It lets the planner
(``agent.planner``) drive the stage tools on the slide's own ``StageDeps``, so every oracle call
is budgeted and audited as usual, then:

- the planner finished (``finish_slide`` after the mandatory stages): its boxes, coarse mask and
  labels are the slide's, and its verdicts decide the regions; each decision is a ``decisions``
  row whose reason starts with ``planner:``;
- the guard took over: the policy finishes the slide (``SlideRun.decide_regions``), seeded with
  what the planner had already built (boxes, coarse mask, zero-shot labels: computed under the
  policy's own settings, so they are what the policy would have built). The planner's
  Auto-context work is not kept; the same questions asked again are answered from the audit
  store's cache when it is on.

Either way the :class:`PlannerReport` goes into ``summary.json`` as ``planner``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tissue_oracle.agent.controller import SlideRun
from tissue_oracle.agent.planner import PlannerModel, PlanOutcome, run_planner
from tissue_oracle.agent.planner_report import PlannerReport
from tissue_oracle.agent.regions import CoarseResult, RegionResult, note_decision
from tissue_oracle.agent.summary import RegionSummary
from tissue_oracle.policies.decide import Decision
from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput

PlannedSlide = tuple[CoarseResult, list[RegionSummary], ClassifyPatchesOutput, PlannerReport]


@dataclass(kw_only=True)
class LivePlanner:
    """Plans each slide of a run with one planner model; close it when the run ends."""

    model: PlannerModel

    async def plan(self, run: SlideRun) -> PlannedSlide:
        """The slide's coarse result, region summaries, final labels, and what the planner did."""
        with run.tally.timed("thumbnail"):
            thumbnail = await run.deps.in_thread(run.slide.thumbnail, run.policy.thumbnail.downsample)
        outcome = await run_planner(
            self.model,
            policy=run.policy,
            deps=run.deps,
            ledger=run.ledger,
            recorder=run.recorder,
            run_id=run.run_id,
            slide_id=run.slide_id,
            timer=run.tally.timed,
        )
        seed = _coarse_of(run, outcome, thumbnail)
        if outcome.finished_by == "planner" and seed is not None:
            report = outcome.report(kept="everything: the planner finished the slide")
            regions, final = _adopt(run, outcome)
            return seed, regions, final, report
        kept = (
            "nothing: the policy ran every stage"
            if seed is None
            else "boxes, coarse mask and zero-shot labels; the policy reviewed and refined every region"
        )
        coarse, regions, final = await run.decide_regions(seed)
        return coarse, regions, final, outcome.report(kept=kept)

    async def aclose(self) -> None:
        await self.model.aclose()


def _coarse_of(run: SlideRun, outcome: PlanOutcome, thumbnail: np.ndarray) -> CoarseResult | None:
    """The planner's boxes, coarse mask and zero-shot labels, if it got that far."""
    ws, progress = run.deps.workspace, outcome.progress
    if progress.ground is None or ws.coarse is None or progress.zero_shot is None:
        return None
    return CoarseResult(
        thumbnail=thumbnail, boxes=progress.ground, coarse=ws.coarse, zero_shot=progress.zero_shot
    )


def _adopt(run: SlideRun, outcome: PlanOutcome) -> tuple[list[RegionSummary], ClassifyPatchesOutput]:
    """The planner's slide: its labels, and a region summary per verdict (recorded as decisions)."""
    ws, progress, verdict = run.deps.workspace, outcome.progress, outcome.verdict
    assert verdict is not None and ws.labels is not None, "finished_by planner means a verdict and labels"
    by_region = {v.region: v for v in verdict.regions}
    regions = []
    for index, box in enumerate(ws.boxes):
        result = RegionResult(summary=RegionSummary(index=index, box=box))
        grades = progress.grades.get(index, [])
        sent = progress.few_shot_sent.get(index, [])
        for round_, earlier in enumerate(grades[:-1]):
            record = note_decision(
                run, result, round_, earlier, Decision(action="refine", reason="planner: Auto-context")
            )
            record.patches_sent = sent[round_] if round_ < len(sent) else None
        final = by_region[index]
        reason = f"planner: {final.reason or final.action}"
        last = grades[-1] if grades else None
        note_decision(
            run, result, max(len(grades) - 1, 0), last, Decision(action=final.action, reason=reason)
        )
        result.summary.refinements = progress.refinements.get(index, 0)
        regions.append(result.summary)
    return regions, ws.labels
