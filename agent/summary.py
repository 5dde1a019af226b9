"""What one slide's run produced, as ``summary.json``: the ``SlideSummary`` model and its tallies.

The models only hold data; ``agent.controller.SlideRun.summary`` fills them in.

Costs per stage are read from the audit rows themselves (``StageTally`` sits between the oracles
and the store), so the summary and the store's ``calls`` table agree by construction. Stage
seconds are busy time: regions run concurrently, so they can add up to more than the wall time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from tissue_oracle.agent.planner_report import PlannerReport
from tissue_oracle.tools.oracle_protocol import Oracle
from tissue_oracle.tools.schemas import Action, Box, CallRecord, CallRecorder, Grades, PatchLabel, Role

#: Patch label sources that are an oracle's answer (the rest: coarse fallback, clean, student).
ANSWERED_SOURCES = ("zero_shot", "few_shot")
#: How ``labelled_as`` starts when a VLM was asked for patch labels and answered none.
NO_VLM_ANSWER = "coarse mask only"


def decided_by(labels: Iterable[PatchLabel]) -> dict[str, int]:
    """Final patches per label source (``zero_shot``, ``few_shot``, ``coarse``, ``clean``...)."""
    return dict(Counter(lab.source for lab in labels))


def labelled_as(by_role: dict[Role, Oracle], decided: dict[str, int] | None = None) -> str:
    """How the slide's labels must be described: what decided its patches.

    Without ``decided``: the VLMs among the roles, or that none is one. With it (the final
    patches per source): a VLM classifier that answered no patch (every call failed, or no call
    was allowed) gives ``coarse mask only (...)``, never ``VLM``; a classical classifier beside a
    VLM reviewer says the patch labels are classical.
    """
    vlms = sorted({f"{o.backend}:{o.model}" for o in by_role.values() if o.is_vlm})
    if decided is None:
        if vlms:
            return "VLM: " + ", ".join(vlms)
        return ", ".join(sorted({o.backend for o in by_role.values()})) + " (no VLM)"
    classifier = by_role.get("classifier") or by_role.get("oracle")
    answered = sum(decided.get(source, 0) for source in ANSWERED_SOURCES)
    kept_coarse = decided.get("coarse", 0)
    if classifier is not None and classifier.is_vlm:
        name = f"{classifier.backend}:{classifier.model}"
        if answered == 0:
            return f"{NO_VLM_ANSWER} ({name} answered no patch; no VLM label)"
        return f"VLM: {name}" + (
            f" ({answered} patches; {kept_coarse} kept the coarse label)" if kept_coarse else ""
        )
    backend = classifier.backend if classifier is not None else "unknown"
    if vlms:
        return f"{backend} patch labels (no VLM label); VLM in other roles: {', '.join(vlms)}"
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

    def resumed_call(self, request_hash: str) -> CallRecord | None:
        """An interrupted attempt's answer to a no-cache question, where the recorder keeps them."""
        resumed = getattr(self.inner, "resumed_call", None)
        return resumed(request_hash) if resumed is not None else None

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

    decided_by: dict[str, int] = Field(default_factory=dict)
    """Final patches per label source: ``zero_shot``/``few_shot`` (an oracle's answer), ``coarse``
    (its question failed or wasn't allowed), ``clean``, ``student``, ``cascade``."""

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
    tissue_area_mm2: float | None = None
    """Area of the pixel-accurate tissue contour (``tissue.geojson``) in mm²; None without a
    contour (patch-grid runs) or without microns per pixel."""
    stages: dict[str, StageStats] = Field(default_factory=dict)
    totals: StageStats = Field(default_factory=StageStats)
    budget_left: dict[str, float | int | None] = Field(default_factory=dict)
    """Headroom left under the slide's (and run's) caps when the slide finished."""
    seconds: float = 0.0
    outputs: dict[str, str] = Field(default_factory=dict)
    """Output kind -> path of the file written."""
    planner: PlannerReport | None = None
    """What the LLM planner decided and where the guard overrode it (None: no planner)."""

    @property
    def calls_ratio(self) -> float:
        """Oracle calls made over the naive one-call-per-patch count (smaller is better)."""
        return self.totals.calls / max(self.patches.naive_calls, 1)

    @property
    def refinements(self) -> int:
        return sum(r.refinements for r in self.regions)
