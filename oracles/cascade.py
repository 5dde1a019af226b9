"""The student-first cascade: a distilled student labels every gated patch, the oracle only the unsure ones.

``route`` is the pure decision (a table of cases tests it): a student answer at or above the policy's
``cascade.confidence`` is kept, anything below goes to the oracle. ``cascade_patch_labels`` runs one
request through both backends and merges the answers back into request order.

The controller's hook is ``with_cascade(by_role, student=..., threshold=...)``: it wraps the backend
that answers ``classify_patches`` in a ``CascadeOracle``, so the stage tools need no change. The
controller wraps the budgeted backends (``agent.controller.budgeted``), so each oracle question
the cascade asks reserves its own budget, and only the oracle's share of the patches costs any.

Batching: the stage sends the cascade ``request_batch`` patches per question, the student
labels them all, and the unsure ones go to the oracle ``oracle_batch`` per question (the policy's
``classify.batch_size``), concurrently. So a few unsure patches don't each fill a partial oracle
batch of their own: oracle calls fall with the number of unsure patches, not with the number of
stage batches that hold one.

The request is 256 patches by default (``cascade.request_batch``): the unsure patches of a larger
request fill the oracle's questions better, with the same labels (on the held-out slides at a
threshold of 0.9, 84-89% of calls saved became 87-93%: docs/distil.md).

Label sources: a patch the student kept is marked ``cascade`` (so distillation never learns from
it, and reports can count what the cascade saved); a patch the oracle answered keeps the oracle's
own source (``zero_shot``/``few_shot``).

Failures: an oracle question that fails or that the budget refuses loses only its own patches.
The cascade then raises ``PartialPatchLabels`` with the student's kept answers and the other
questions' answers (paid for), and the stage keeps them; the failed patches fall back as the
stage's do.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tissue_oracle.tools.errors import BudgetExceededError, ConfigError, OracleError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle, PartialPatchLabels
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    BoxesRequest,
    PatchLabel,
    PatchLabelsAnswer,
    PatchLabelsRequest,
    PointsAnswer,
    PointsRequest,
    Question,
    RerankAnswer,
    RerankRequest,
    ReviewAnswer,
    ReviewRequest,
    Role,
    Usage,
)
from tissue_oracle.tools.stage_settings import CASCADE_REQUEST_BATCH


@dataclass(kw_only=True, frozen=True)
class Route:
    """Which patches (indices into the request) the student keeps, and which go to the oracle."""

    keep: list[int]
    """Student answers kept: confidence >= threshold."""
    ask: list[int]
    """Sent to the oracle: confidence < threshold (NaN counts as unsure)."""


@dataclass(kw_only=True, frozen=True)
class CascadeStats:
    """What one cascaded request cost, for the run report."""

    patches: int
    kept_by_student: int
    sent_to_oracle: int
    oracle_calls: int
    """Oracle call rows the oracle's answers reported (``usage.calls``)."""
    oracle_failed: int = 0
    """Patches sent to the oracle whose question failed or was refused by the budget."""

    def __add__(self, other: CascadeStats) -> CascadeStats:
        return CascadeStats(
            patches=self.patches + other.patches,
            kept_by_student=self.kept_by_student + other.kept_by_student,
            sent_to_oracle=self.sent_to_oracle + other.sent_to_oracle,
            oracle_calls=self.oracle_calls + other.oracle_calls,
            oracle_failed=self.oracle_failed + other.oracle_failed,
        )


NO_STATS = CascadeStats(patches=0, kept_by_student=0, sent_to_oracle=0, oracle_calls=0)


class PartialCascade(PartialPatchLabels):
    """``PartialPatchLabels`` from the cascade, with what the request cost for its stats."""

    def __init__(
        self,
        message: str,
        *,
        answered: dict[int, PatchLabel],
        usage: Usage,
        budget: bool,
        stats: CascadeStats,
    ) -> None:
        super().__init__(message, answered=answered, usage=usage, budget_exhausted=budget)
        self.stats = stats


def route(confidences: Sequence[float], threshold: float) -> Route:
    """Split patches by student confidence; ``threshold`` is ``Policy.cascade.confidence`` (0-1).

    A threshold of 0 keeps every student answer; a threshold above 1 sends everything to the oracle.
    """
    keep: list[int] = []
    ask: list[int] = []
    for i, c in enumerate(confidences):
        (keep if c >= threshold else ask).append(i)  # NaN >= t is False: unsure goes to the oracle
    return Route(keep=keep, ask=ask)


def merge(student: Sequence[PatchLabel], oracle: Sequence[PatchLabel], plan: Route) -> list[PatchLabel]:
    """Request-ordered labels: student answers kept (source ``cascade``), the oracle's for the rest."""
    if len(oracle) != len(plan.ask):
        raise ValueError(f"oracle answered {len(oracle)} patches, {len(plan.ask)} were asked")
    merged = list(student)
    for i in plan.keep:
        merged[i] = student[i].model_copy(update={"source": "cascade"})
    for i, label in zip(plan.ask, oracle, strict=True):
        merged[i] = label
    return merged


def subset(req: PatchLabelsRequest, indices: Sequence[int]) -> PatchLabelsRequest:
    """The request restricted to ``indices`` (exemplars kept, so few-shot stays few-shot)."""
    return PatchLabelsRequest(
        patches=[req.patches[i] for i in indices],
        images=[req.images[i] for i in indices],
        exemplars=req.exemplars,
    )


async def cascade_patch_labels(
    req: PatchLabelsRequest,
    *,
    student: Oracle,
    oracle: Oracle,
    threshold: float,
    student_ctx: CallContext,
    oracle_ctx: CallContext,
    oracle_batch: int = 8,
) -> tuple[PatchLabelsAnswer, CascadeStats]:
    """Label ``req`` with the student first, then ask ``oracle`` only about the unsure patches,
    ``oracle_batch`` patches per question.

    Both backends record their own call rows through their contexts (give the student's context
    ``role="classifier"``). The returned usage is the oracle's plus the student's (zero cost).
    A failed or refused oracle question raises ``PartialCascade`` once the others are back: it
    holds every other answer (see the module docstring). A failing student raises as it is.
    """
    first = await student.patch_labels(req, student_ctx)
    plan = route([label.confidence for label in first.labels], threshold)
    chunks = [plan.ask[i : i + oracle_batch] for i in range(0, len(plan.ask), oracle_batch)]
    results = await asyncio.gather(
        *(oracle.patch_labels(subset(req, c), oracle_ctx) for c in chunks), return_exceptions=True
    )
    answered: list[int] = []
    oracle_labels: list[PatchLabel] = []
    usage = first.usage
    failure: OracleError | BudgetExceededError | None = None
    for chunk, result in zip(chunks, results, strict=True):
        if isinstance(result, OracleError | BudgetExceededError):
            failure = failure or result
            continue
        if isinstance(result, BaseException):
            raise result
        answered += chunk
        oracle_labels += result.labels
        usage = usage + result.usage
    labels = merge(first.labels, oracle_labels, Route(keep=plan.keep, ask=answered))
    stats = CascadeStats(
        patches=len(req.patches),
        kept_by_student=len(plan.keep),
        sent_to_oracle=len(plan.ask),
        oracle_calls=usage.calls - first.usage.calls,
        oracle_failed=len(plan.ask) - len(answered),
    )
    if failure is not None:
        done = sorted([*plan.keep, *answered])
        raise PartialCascade(
            f"{stats.oracle_failed} of {len(req.patches)} patches unanswered: "
            f"{type(failure).__name__}: {failure}",
            answered={i: labels[i] for i in done},
            usage=usage,
            budget=isinstance(failure, BudgetExceededError),
            stats=stats,
        )
    return PatchLabelsAnswer(labels=labels, usage=usage), stats


class CascadeOracle:
    """An ``Oracle`` whose ``patch_labels`` is the cascade; every other question goes to ``oracle``.

    ``stats`` accumulates over all requests (one instance per slide gives per-slide figures).
    """

    backend = "cascade"

    def __init__(
        self,
        *,
        student: Oracle,
        oracle: Oracle,
        threshold: float,
        oracle_batch: int = 8,
        request_batch: int = CASCADE_REQUEST_BATCH,
    ) -> None:
        self.student = student
        self.oracle = oracle
        self.threshold = threshold
        self.oracle_batch = max(1, oracle_batch)
        self.request_batch = max(request_batch, self.oracle_batch)
        """Patches the stage should send per cascade question (``tools.classify_patches`` reads it)."""
        self.model = f"{student.model}>{oracle.model}"
        self.questions: frozenset[Question] = oracle.questions | {"patch_labels"}
        self.is_vlm = oracle.is_vlm
        self.stats = NO_STATS
        self._lock = asyncio.Lock()

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        try:
            answer, stats = await cascade_patch_labels(
                req,
                student=self.student,
                oracle=self.oracle,
                threshold=self.threshold,
                student_ctx=dataclasses.replace(ctx, role="classifier"),
                oracle_ctx=ctx,
                oracle_batch=self.oracle_batch,
            )
        except PartialCascade as partial:
            async with self._lock:
                self.stats = self.stats + partial.stats
            raise
        async with self._lock:
            self.stats = self.stats + stats
        return answer

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        return await self.oracle.boxes(req, ctx)

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        return await self.oracle.points(req, ctx)

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        return await self.oracle.rerank(req, ctx)

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        return await self.oracle.review(req, ctx)

    async def aclose(self) -> None:
        return None  # both backends belong to the caller's role table, which closes them


def with_cascade(
    by_role: Mapping[Role, Oracle],
    *,
    student: Oracle,
    threshold: float,
    oracle_batch: int = 8,
    request_batch: int = CASCADE_REQUEST_BATCH,
) -> dict[Role, Oracle]:
    """``by_role`` with the patch classifier wrapped in a ``CascadeOracle`` (the controller's hook).

    The classifier is the ``classifier`` role, or ``oracle`` when no classifier is set (the stage
    falls back the same way); the cascade then takes the ``classifier`` role and the ``oracle`` role
    keeps its plain backend for boxes, points and reranking. ``threshold`` is
    ``Policy.cascade.confidence`` and ``request_batch`` ``Policy.cascade.request_batch``.
    """
    roles: dict[Role, Oracle] = dict(by_role)
    inner = roles.get("classifier") or roles.get("oracle")
    if inner is None:
        raise ConfigError(f"cascade needs a 'classifier' or 'oracle' backend; roles set: {sorted(roles)}")
    roles["classifier"] = CascadeOracle(
        student=student,
        oracle=inner,
        threshold=threshold,
        oracle_batch=oracle_batch,
        request_batch=request_batch,
    )
    return roles
