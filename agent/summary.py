"""What one slide's run produced, as ``summary.json``: the ``SlideSummary`` model and its tallies.

Costs per stage are read from the audit rows themselves (``StageTally`` sits between the oracles
and the store), so the summary and the store's ``calls`` table agree by construction. Stage
seconds are busy time: regions run concurrently, so they can add up to more than the wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput
from tissue_oracle.tools.clean import CleanOutput
from tissue_oracle.tools.oracle_protocol import Oracle
from tissue_oracle.tools.schemas import Action, Box, CallRecord, CallRecorder, Grades, Role

if TYPE_CHECKING:
    from tissue_oracle.agent.controller import SlideRun
    from tissue_oracle.agent.oracle_setup import OracleSet


def labelled_as(by_role: dict[Role, Oracle]) -> str:
    """How the slide's labels must be described: which VLMs produced them, or that none did."""
    vlms = sorted({f"{o.backend}:{o.model}" for o in by_role.values() if o.is_vlm})
    if vlms:
        return "VLM: " + ", ".join(vlms)
    return ", ".join(sorted({o.backend for o in by_role.values()})) + " (no VLM)"


class StageStats(BaseModel):
    """Calls, tokens, dollars and busy seconds of one stage on one slide."""

    calls: int = 0
    """Attempts that reached a backend (cache hits excluded)."""
    cache_hits: int = 0
    failed: int = 0
    """Attempts that ended in an error."""
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    seconds: float = 0.0


@dataclass(kw_only=True)
class StageTally:
    """A ``CallRecorder`` that forwards every row and adds it to its stage's stats; thread-safe."""

    inner: CallRecorder
    stats: dict[str, StageStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(self, record: CallRecord) -> None:
        self.inner.record_call(record)
        with self._lock:
            s = self.stats.setdefault(record.stage, StageStats())
            if record.cache_hit:
                s.cache_hits += 1
            else:
                s.calls += 1
                s.input_tokens += record.input_tokens
                s.output_tokens += record.output_tokens
                s.usd += record.cost_usd or 0.0
            s.failed += int(not record.ok)

    def cached_call(self, request_hash: str) -> CallRecord | None:
        return self.inner.cached_call(request_hash)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to ``stage``'s busy seconds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.stats.setdefault(stage, StageStats()).seconds += time.perf_counter() - start

    def total(self) -> StageStats:
        with self._lock:
            total = StageStats()
            for s in self.stats.values():
                for name in ("calls", "cache_hits", "failed", "input_tokens", "output_tokens", "usd"):
                    setattr(total, name, getattr(total, name) + getattr(s, name))
            return total


class RoundRecord(BaseModel):
    """One review of one region and what the policy made of it."""

    round: int
    """Auto-context rounds run before this review (0: the zero-shot mask)."""
    grades: Grades | None
    action: Action
    reason: str
    review_error: str | None = None
    points: int | None = None
    """Points found for the refinement that followed (None: no refinement)."""
    exemplars: int | None = None
    """Exemplars kept for the refinement that followed."""
    patches_sent: int | None = None
    """Patches classified few-shot in the refinement that followed."""


class RegionSummary(BaseModel):
    """One region (box): its reviews, refinements and final state."""

    index: int
    box: Box
    """Level-0 frame."""
    rounds: list[RoundRecord] = Field(default_factory=list)
    refinements: int = 0
    """Auto-context rounds whose few-shot labels were kept."""
    final_action: Action = "accept"
    needs_human_review: bool = False
    reason: str = ""


class PatchCounts(BaseModel):
    """The patch grid and how its patches were decided."""

    patch_size: int
    rows: int
    cols: int
    naive_calls: int
    """Patches in the whole grid: the calls of "classify every patch", one patch per call."""
    in_scope: int = 0
    """Patches M1 touches."""
    sent_zero_shot: int = 0
    gated_out: int = 0
    sent_few_shot: int = 0
    coarse_fallback: int = 0
    """Patches that kept the coarse label because their question failed or the budget ran out."""
    tissue: int = 0
    """Tissue patches in the final, cleaned mask."""
    changed_by_clean: int = 0


class SlideSummary(BaseModel):
    """``summary.json``: everything one slide's run did, cost and decided."""

    run_id: str
    slide_id: str
    path: str | None
    width: int
    height: int
    mpp: float | None
    status: Literal["done", "degraded", "failed"] = "done"
    flags: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    """Why the slide needs a human, or why it degraded (budget, escalated regions)."""
    policy_name: str
    policy_hash: str
    oracles: dict[str, dict[str, Any]]
    """Per role: spec, backend, model, is_vlm."""
    labelled_as: str
    """``VLM`` when a VLM produced labels, else the backend names, e.g. ``classical (no VLM)``."""
    thumbnail_downsample: float
    boxes: list[Box] = Field(default_factory=list)
    """Regions after padding and merging, level-0 frame."""
    boxes_fallback: bool = False
    regions: list[RegionSummary] = Field(default_factory=list)
    patches: PatchCounts
    stages: dict[str, StageStats] = Field(default_factory=dict)
    totals: StageStats = Field(default_factory=StageStats)
    budget_left: dict[str, float | int | None] = Field(default_factory=dict)
    """Headroom left under the slide's (and run's) caps when the slide finished."""
    seconds: float = 0.0
    outputs: dict[str, str] = Field(default_factory=dict)
    """Output kind -> path of the file written."""

    @property
    def calls_ratio(self) -> float:
        """Oracle calls made over the naive one-call-per-patch count (smaller is better)."""
        return self.totals.calls / max(self.patches.naive_calls, 1)

    @property
    def refinements(self) -> int:
        return sum(r.refinements for r in self.regions)


# --------------------------------------------------------------------------- building it


def slide_flags(
    run: SlideRun, regions: list[RegionSummary], final: ClassifyPatchesOutput
) -> tuple[list[str], list[str]]:
    """Short flags for the store and the reasons a human should look, in words.

    ``budget_exhausted`` and ``oracle_errors`` (patches that kept the coarse label because their
    question failed) and escalated regions all ask for human review.
    """
    flags: list[str] = []
    reasons: list[str] = []
    if run.ledger.exhausted_reason is not None or final.budget_exhausted:
        flags.append("budget_exhausted")
        reasons.append(f"budget exhausted: {run.ledger.exhausted_reason or 'a stage was refused'}")
    failed = run.zero_shot.failed if run.zero_shot is not None else 0
    if failed and "budget_exhausted" not in flags:
        flags.append("oracle_errors")
        reasons.append(f"{failed} patch(es) kept the coarse label after oracle errors")
    if run.boxes is not None and run.boxes.fallback:
        flags.append("boxes_fallback")
    escalated = [r for r in regions if r.needs_human_review]
    reasons += [f"region {r.index}: {r.reason}" for r in escalated]
    if escalated or {"budget_exhausted", "oracle_errors"} & set(flags):
        flags.append("needs_human_review")
    return flags, reasons


def build_summary(
    run: SlideRun,
    oracles: OracleSet,
    regions: list[RegionSummary],
    final: ClassifyPatchesOutput,
    cleaned: CleanOutput,
) -> SlideSummary:
    assert run.boxes is not None and run.zero_shot is not None
    zero, grid = run.zero_shot, final.grid
    flags, reasons = slide_flags(run, regions, final)
    left = run.ledger.remaining()
    width, height = run.slide.dimensions
    return SlideSummary(
        run_id=run.run_id,
        slide_id=run.slide_id,
        path=None if run.slide.path is None else str(run.slide.path),
        width=width,
        height=height,
        mpp=run.slide.mpp,
        status="degraded" if "budget_exhausted" in flags else "done",
        flags=flags,
        reasons=reasons,
        policy_name=run.policy.name,
        policy_hash=run.policy.policy_hash,
        oracles=oracles.identities(),
        labelled_as=labelled_as(oracles.by_role),
        thumbnail_downsample=run.policy.thumbnail.downsample,
        boxes=run.boxes.boxes,
        boxes_fallback=run.boxes.fallback,
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
        stages=dict(run.tally.stats),
        totals=run.tally.total(),
        budget_left={"calls": left.calls, "tokens": left.tokens, "usd": left.usd},
    )
