"""Which role answers each question: resolved once at start-up, so a role's backend is never asked
a question it can't answer in the middle of a batch.

Each stage asks one role (``ground_boxes`` and ``point_ground`` the ``oracle``, ``classify_patches``
and ``rerank_exemplars`` the ``classifier``, ``review_mask`` the ``reviewer``). A backend declares
the questions it answers (``Oracle.questions``): a ``student:PATH`` answers only ``patch_labels``.

``resolve_routes`` checks every question the policy will ask against the backend of the role that
asks it. A question the backend can't answer goes to the role's fallback when that one can answer
it (the ``classifier`` falls back to the ``oracle``, as it does when no classifier is set): so
``--classifier student:PATH`` labels patches with the student and reranks Auto-context exemplars
with the oracle. A question nobody can answer is a ``ConfigError`` that names the role, the
backend, the question, the stage and what to do, before any slide is opened.

``route_questions`` applies the routes to the per-role backends the stages see (the budgeted ones,
so a routed question reserves budget at the price of the role that really answers it). A routed
call is recorded under the role that answered it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    BoxesRequest,
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

#: The stage that asks each question (for messages).
ASKED_BY: dict[Question, str] = {
    "boxes": "ground_boxes",
    "points": "point_ground",
    "rerank": "rerank_exemplars",
    "patch_labels": "classify_patches",
    "review": "review_mask",
}
#: Where a role's unanswerable question may go instead.
FALLBACK: dict[Role, Role] = {"classifier": "oracle"}

Routes = dict[Role, dict[Question, Role]]
"""role -> {question -> the role whose backend answers it instead}; empty when nothing is routed."""


def resolve_routes(
    backends: Mapping[Role, Oracle],
    asked: Mapping[Role, Iterable[Question]],
    specs: Mapping[Role, str] | None = None,
) -> Routes:
    """The routes that let every role answer every question it is ``asked``, or a ``ConfigError``.

    ``specs`` (role -> spec string) only makes the error message name what the user typed.
    """
    routes: Routes = {}
    problems: list[str] = []
    for role, questions in asked.items():
        backend = backends.get(role)
        if backend is None:
            continue
        for question in sorted(set(questions)):
            if question in backend.questions:
                continue
            fallback = FALLBACK.get(role)
            other = backends.get(fallback) if fallback else None
            if other is not None and fallback is not None and question in other.questions:
                routes.setdefault(role, {})[question] = fallback
                continue
            name = (specs or {}).get(role) or backend.backend
            problems.append(
                f"the {role} role ({name}) cannot answer {question!r}, which stage "
                f"{ASKED_BY[question]} asks it; it answers only {sorted(backend.questions)}"
            )
    if problems:
        raise ConfigError(
            "invalid roles for this policy: "
            + "; ".join(problems)
            + ". Give that role a backend that answers the question (classical, openai:MODEL, "
            "gemini:MODEL); a student:PATH belongs in --classifier or policy.cascade.student"
        )
    return routes


class RoutedOracle:
    """One role's backend with some questions answered by another role's backend."""

    def __init__(self, primary: Oracle, routed: Mapping[Question, tuple[Role, Oracle]]) -> None:
        self.primary = primary
        self.routed = dict(routed)
        self.backend = primary.backend
        self.model = primary.model
        self.is_vlm = primary.is_vlm
        self.questions: frozenset[Question] = primary.questions | frozenset(self.routed)
        self.image_px: int | None = getattr(primary, "image_px", None)
        self.request_batch: int | None = getattr(primary, "request_batch", None)

    def _target(self, question: Question, ctx: CallContext) -> tuple[Oracle, CallContext]:
        if question not in self.routed:
            return self.primary, ctx
        role, oracle = self.routed[question]
        return oracle, dataclasses.replace(ctx, role=role)  # recorded under the role that answers

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        oracle, c = self._target("boxes", ctx)
        return await oracle.boxes(req, c)

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        oracle, c = self._target("patch_labels", ctx)
        return await oracle.patch_labels(req, c)

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        oracle, c = self._target("points", ctx)
        return await oracle.points(req, c)

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        oracle, c = self._target("rerank", ctx)
        return await oracle.rerank(req, c)

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        oracle, c = self._target("review", ctx)
        return await oracle.review(req, c)

    async def aclose(self) -> None:
        return None  # every backend here belongs to the caller's role table, which closes it


def route_questions(by_role: Mapping[Role, Oracle], routes: Routes) -> dict[Role, Oracle]:
    """``by_role`` with each routed role's backend wrapped so routed questions reach their role."""
    out: dict[Role, Oracle] = dict(by_role)
    for role, questions in routes.items():
        if role in out and questions:
            out[role] = RoutedOracle(out[role], {q: (r, by_role[r]) for q, r in questions.items()})
    return out
