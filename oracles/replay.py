"""The replay backend: answers only from recorded calls, so a re-run costs nothing and changes nothing.

``ReplayOracle(inner, source)`` wraps the oracle that made the original calls (same backend and
model, so its request hashes match). Each question goes to ``inner`` with a context whose
recorder reads cached answers from ``source`` and writes the new run's rows (cache hits) to the
caller's recorder, and with ``replay_only=True``: the inner backend's shared cache helper then
serves the recorded answer, and on a miss raises ``ReplayMissError`` instead of calling a model.
This wrapper turns that miss into an error naming the stage, the request hash and what to do.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tissue_oracle.tools.errors import ReplayMissError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    BoxesRequest,
    CallRecord,
    CallRecorder,
    PatchLabelsAnswer,
    PatchLabelsRequest,
    PointsAnswer,
    PointsRequest,
    Question,
    RerankAnswer,
    RerankRequest,
    ReviewAnswer,
    ReviewRequest,
)

AnswerT = TypeVar("AnswerT")


class _ReplayRecorder:
    """Reads answers from the recorded ``source``; writes this run's rows to ``sink``."""

    def __init__(self, source: CallRecorder, sink: CallRecorder, on_new_call: Callable[[], None]) -> None:
        self._source = source
        self._sink = sink
        self._on_new_call = on_new_call
        self.misses: list[str] = []

    def cached_call(self, request_hash: str) -> CallRecord | None:
        hit = self._source.cached_call(request_hash)
        if hit is None:
            self.misses.append(request_hash)
        return hit

    def record_call(self, record: CallRecord) -> None:
        if not record.cache_hit and record.ok:
            self._on_new_call()  # a backend that ignored replay_only: counted so tests and reports see it
        self._sink.record_call(record)


class ReplayOracle:
    """Any oracle, answering only from ``source`` (a recorder over an earlier run's audit store)."""

    def __init__(
        self, inner: Oracle, source: CallRecorder, *, on_close: Callable[[], None] | None = None
    ) -> None:
        self.inner = inner
        self.source = source
        self.backend = inner.backend
        self.model = inner.model
        self.questions: frozenset[Question] = inner.questions
        self.is_vlm = inner.is_vlm
        """True when the recorded answers came from a real VLM (the inner backend's kind)."""
        self.replayed = True
        self.new_calls = 0
        """Rows recorded during replay that were not cache hits: should stay 0."""
        self._on_close = on_close
        self._lock = threading.Lock()

    def _count_new_call(self) -> None:
        with self._lock:
            self.new_calls += 1

    async def _ask(self, ctx: CallContext, ask: Callable[[CallContext], Awaitable[AnswerT]]) -> AnswerT:
        recorder = _ReplayRecorder(self.source, ctx.recorder, self._count_new_call)
        replay_ctx = dataclasses.replace(ctx, recorder=recorder, replay_only=True)
        try:
            return await ask(replay_ctx)
        except ReplayMissError as exc:
            missed = recorder.misses[-1] if recorder.misses else "unknown"
            raise ReplayMissError(
                f"replay has no recorded answer for stage {ctx.stage!r} (role {ctx.role!r}, "
                f"{self.backend}:{self.model}, slide {ctx.slide_id!r}), request hash {missed}. "
                "Re-run without replay, or with the original backend, to record it."
            ) from exc

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        return await self._ask(ctx, lambda c: self.inner.boxes(req, c))

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        return await self._ask(ctx, lambda c: self.inner.patch_labels(req, c))

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        return await self._ask(ctx, lambda c: self.inner.points(req, c))

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        return await self._ask(ctx, lambda c: self.inner.rerank(req, c))

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        return await self._ask(ctx, lambda c: self.inner.review(req, c))

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
