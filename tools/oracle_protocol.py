"""The ``Oracle`` protocol: one async method per question, typed in and out.

A backend declares the questions it answers in ``questions``; asking anything else raises
``ConfigError`` naming the backends that do. Every method records exactly one ``CallRecord``
per attempt through ``ctx.recorder`` (cache hits included, flagged ``cache_hit``), and never
lets a wrong model answer escape as an exception: it either returns a validated answer or
raises ``OracleError`` after its bounded retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tissue_oracle.tools.errors import OracleError
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    BoxesRequest,
    CallRecorder,
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
    Stage,
    Usage,
)

VLM_BACKENDS: frozenset[str] = frozenset({"openai", "gemini"})
"""The backend families whose answers come from a real vision-language model."""


class PartialPatchLabels(OracleError):
    """Some of a patch request was answered and the rest failed: keep what was answered (and paid).

    A composite backend (the cascade) raises it instead of losing every answer to one failed
    question. ``answered`` maps request indices to their labels, ``usage`` is what the answered
    part cost, and ``budget_exhausted`` says the failure was a budget refusal.
    """

    def __init__(
        self, message: str, *, answered: dict[int, PatchLabel], usage: Usage, budget_exhausted: bool
    ) -> None:
        super().__init__(message)
        self.answered = answered
        self.usage = usage
        self.budget_exhausted = budget_exhausted


@dataclass(kw_only=True, frozen=True)
class CallContext:
    """Who is asking, for the audit row and the cache."""

    run_id: str
    """The run this call belongs to."""
    slide_id: str
    """The slide this call belongs to."""
    stage: Stage
    """The pipeline stage asking."""
    role: Role
    """The role the backend plays for this call (oracle, reviewer, classifier)."""
    recorder: CallRecorder
    """Where the call row goes, and where cached answers come from."""
    use_cache: bool = True
    """Answer identical requests from the store instead of paying again."""
    replay_only: bool = False
    """Answer only from ``recorder.cached_call``; a miss raises ``ReplayMissError`` (replay backend)."""


@runtime_checkable
class Oracle(Protocol):
    """A backend that answers some of the five questions."""

    backend: str
    """Backend family: ``classical``, ``openai``, ``gemini``, ``replay``, ``student``, ``simulated``."""
    model: str
    """Model name as the backend knows it (``classical-v1`` for the classical oracle)."""
    questions: frozenset[Question]
    """The questions this backend answers."""
    is_vlm: bool
    """True only when a real vision-language model produces the answers."""

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer: ...

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer: ...

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer: ...

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer: ...

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer: ...

    async def aclose(self) -> None: ...
