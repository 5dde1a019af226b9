"""The student-first cascade: a distilled student labels every gated patch, the oracle only the unsure ones.

``route`` is the pure decision (a table of cases tests it): a student answer at or above the policy's
``cascade.confidence`` is kept, anything below goes to the oracle. ``cascade_patch_labels`` runs one
request through both backends and merges the answers back into request order.

The controller's hook is ``with_cascade(by_role, student=..., threshold=...)``: it wraps the backend
that answers ``classify_patches`` in a ``CascadeOracle``, so the stage tools need no change. The
controller wraps the budgeted backends (``agent.controller.budgeted``), so each oracle question
the cascade asks reserves its own budget, and only the oracle's share of the patches costs any.

Batching: the stage sends the cascade ``request_batch`` patches per question (64), the student
labels them all, and the unsure ones go to the oracle ``oracle_batch`` per question (the policy's
``classify.batch_size``), concurrently. So a few unsure patches don't each fill a partial oracle
batch of their own: oracle calls fall with the number of unsure patches, not with the number of
stage batches that hold one.

Label sources: a patch the student kept is marked ``cascade`` (so distillation never learns from
it, and reports can count what the cascade saved); a patch the oracle answered keeps the oracle's
own source (``zero_shot``/``few_shot``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
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
)


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
    """Oracle call rows the oracle's answer reported (``usage.calls``)."""

    def __add__(self, other: CascadeStats) -> CascadeStats:
        return CascadeStats(
            patches=self.patches + other.patches,
            kept_by_student=self.kept_by_student + other.kept_by_student,
            sent_to_oracle=self.sent_to_oracle + other.sent_to_oracle,
            oracle_calls=self.oracle_calls + other.oracle_calls,
        )


NO_STATS = CascadeStats(patches=0, kept_by_student=0, sent_to_oracle=0, oracle_calls=0)


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
    """
    first = await student.patch_labels(req, student_ctx)
    plan = route([label.confidence for label in first.labels], threshold)
    chunks = [plan.ask[i : i + oracle_batch] for i in range(0, len(plan.ask), oracle_batch)]
    answers = await asyncio.gather(*(oracle.patch_labels(subset(req, c), oracle_ctx) for c in chunks))
    oracle_labels = [label for a in answers for label in a.labels]
    oracle_usage = None
    for a in answers:
        oracle_usage = a.usage if oracle_usage is None else oracle_usage + a.usage
    labels = merge(first.labels, oracle_labels, plan)
    usage = first.usage if oracle_usage is None else first.usage + oracle_usage
    stats = CascadeStats(
        patches=len(req.patches),
        kept_by_student=len(plan.keep),
        sent_to_oracle=len(plan.ask),
        oracle_calls=0 if oracle_usage is None else oracle_usage.calls,
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
        request_batch: int = 64,
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
        answer, stats = await cascade_patch_labels(
            req,
            student=self.student,
            oracle=self.oracle,
            threshold=self.threshold,
            student_ctx=dataclasses.replace(ctx, role="classifier"),
            oracle_ctx=ctx,
            oracle_batch=self.oracle_batch,
        )
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
    by_role: Mapping[Role, Oracle], *, student: Oracle, threshold: float, oracle_batch: int = 8
) -> dict[Role, Oracle]:
    """``by_role`` with the patch classifier wrapped in a ``CascadeOracle`` (the controller's hook).

    The classifier is the ``classifier`` role, or ``oracle`` when no classifier is set (the stage
    falls back the same way); the cascade then takes the ``classifier`` role and the ``oracle`` role
    keeps its plain backend for boxes, points and reranking. ``threshold`` is
    ``Policy.cascade.confidence``.
    """
    roles: dict[Role, Oracle] = dict(by_role)
    inner = roles.get("classifier") or roles.get("oracle")
    if inner is None:
        raise ConfigError(f"cascade needs a 'classifier' or 'oracle' backend; roles set: {sorted(roles)}")
    roles["classifier"] = CascadeOracle(
        student=student, oracle=inner, threshold=threshold, oracle_batch=oracle_batch
    )
    return roles
