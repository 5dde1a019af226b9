"""``BudgetedOracle``: every oracle question reserves budget before it is asked, and settles after.

The wrapper reserves an upper-bound estimate (``CallEstimator``) on the slide's ledger (whose
parent is the run's), asks the inner oracle, then commits what the call really spent. "Really
spent" is read from the audit rows the inner oracle wrote for this question, through a
counting recorder, so the ledger and the store's ``calls`` table agree by construction:
attempts that reached a backend count as calls, cache hits count as nothing.

When a reservation fails only because other questions still hold reservations, the wrapper
waits for them to settle (they usually refund most of what they held) instead of declaring
the budget spent. ``BudgetExceededError`` means the cap is truly spent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tissue_oracle.policies.ledger import Amount, BudgetLedger, amount_of
from tissue_oracle.policies.policy import Policy
from tissue_oracle.policies.prices import image_token_bound
from tissue_oracle.tools.errors import BudgetExceededError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    BoxesRequest,
    CallRecord,
    CallRecorder,
    ModelPrice,
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

# How often a reservation blocked by in-flight reservations looks again (seconds).
_SETTLE_POLL_S = 0.005


def image_tokens(height: int, width: int, spec: str = "") -> int:
    """Upper bound on the input tokens one ``height`` x ``width`` image costs on ``spec``'s model
    (``policies.prices.image_token_bound``: Qwen's 28 px rule, Gemini 3's 1120, OpenAI's tiles)."""
    return image_token_bound(spec, height, width)


@dataclass(kw_only=True, frozen=True)
class CallEstimator:
    """Upper bounds on what one question can spend, from the policy and the model's price."""

    price: ModelPrice
    """USD per million tokens of the backend answering."""
    attempts: int = 4
    """Most attempts one question can make (transport retries + 1)."""
    prompt_tokens: int = 2000
    """Bound on a rendered prompt's text tokens."""
    max_output_tokens: dict[Question, int] = field(default_factory=dict)
    """Output-token cap per question; 1024 where absent."""
    send_size: int | None = None
    """Patch images are downscaled to this side before sending (None: sent as they are)."""
    spec: str = ""
    """The backend spec answering, whose image-token rule bounds each image."""

    @classmethod
    def from_policy(
        cls,
        policy: Policy,
        price: ModelPrice,
        *,
        attempts: int | None = None,
        output_cap: int | None = None,
        spec: str = "",
    ) -> CallEstimator:
        """Bounds from the policy; ``output_cap`` is the backend's own output-token cap, which
        then bounds every question (a VLM oracle applies one ``max_tokens`` to all of them)."""
        outputs: dict[Question, int] = {
            "boxes": policy.ground.max_tokens,
            # A batch answers every patch in one reply, each about as long as a single answer.
            "patch_labels": policy.classify.max_tokens * policy.classify.batch_size,
            "points": policy.autocontext.max_tokens,
            "rerank": policy.autocontext.max_tokens,
            "review": policy.review.max_tokens,
        }
        if output_cap is not None:
            outputs = dict.fromkeys(outputs, output_cap)
        return cls(
            price=price,
            attempts=attempts if attempts is not None else policy.classify.retries + 1,
            max_output_tokens=outputs,
            send_size=policy.classify.send_size,
            spec=spec,
        )

    def _image(self, shape: tuple[int, ...], *, patch: bool) -> int:
        height, width = int(shape[0]), int(shape[1])
        if patch and self.send_size is not None:
            height, width = min(height, self.send_size), min(width, self.send_size)
        return image_tokens(height, width, self.spec)

    def input_tokens(self, question: Question, req: Any) -> int:
        """Bound on one attempt's input tokens: prompt text plus every image the request carries."""
        images: list[tuple[tuple[int, ...], bool]] = []
        if isinstance(req, BoxesRequest):
            images = [(req.thumbnail.shape, False)]
        elif isinstance(req, PatchLabelsRequest):
            images = [(img.shape, True) for img in req.images]
            images += [(ex.image.shape, True) for ex in req.exemplars]
        elif isinstance(req, PointsRequest):
            images = [(req.crop.shape, False)]
        elif isinstance(req, RerankRequest):
            images = [(img.shape, True) for img in req.images]
        elif isinstance(req, ReviewRequest):
            images = [(req.crop.shape, False), (req.overlay.shape, False)]
        return self.prompt_tokens + sum(self._image(shape, patch=patch) for shape, patch in images)

    def estimate(self, question: Question, req: Any) -> Amount:
        """The reservation for one question: ``attempts`` times one attempt's bound."""
        inp = self.input_tokens(question, req)
        out = self.max_output_tokens.get(question, 1024)
        return Amount(
            calls=self.attempts,
            tokens=self.attempts * (inp + out),
            usd=self.attempts * self.price.cost(inp, out),
        )


@dataclass(kw_only=True)
class TallyRecorder:
    """Forwards to the real recorder and adds up what this question's rows spent."""

    inner: CallRecorder
    calls: int = 0
    tokens: int = 0
    usd: float = 0.0
    rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(self, record: CallRecord) -> None:
        self.inner.record_call(record)
        with self._lock:
            self.rows += 1
            if not record.cache_hit:
                self.calls += 1
                self.tokens += record.input_tokens + record.output_tokens
                self.usd += record.cost_usd or 0.0

    def cached_call(self, request_hash: str) -> CallRecord | None:
        return self.inner.cached_call(request_hash)

    def resumed_call(self, request_hash: str) -> CallRecord | None:
        """An interrupted attempt's answer to a no-cache question, where the recorder keeps them."""
        resumed = getattr(self.inner, "resumed_call", None)
        return resumed(request_hash) if resumed is not None else None

    @property
    def amount(self) -> Amount:
        with self._lock:
            return Amount(calls=self.calls, tokens=self.tokens, usd=self.usd)


class BudgetedOracle:
    """An ``Oracle`` that asks ``inner`` only within the ledger's caps (see the module docstring)."""

    def __init__(self, inner: Oracle, ledger: BudgetLedger, estimator: CallEstimator) -> None:
        self.inner = inner
        self.ledger = ledger
        self.estimator = estimator
        self.backend = inner.backend
        self.model = inner.model
        self.questions = inner.questions
        self.is_vlm = inner.is_vlm
        self.image_px: int | None = getattr(inner, "image_px", None)
        self.request_batch: int | None = getattr(inner, "request_batch", None)
        """The inner backend's own image size and patches per question (``tools.classify_patches``)."""
        self.spent = Amount()
        """What this wrapper's questions spent (from the audit rows), for the slide summary."""
        self._spent_lock = threading.Lock()

    async def _reserve(self, amount: Amount) -> Any:
        while True:
            try:
                return self.ledger.reserve(calls=amount.calls, tokens=amount.tokens, usd=amount.usd)
            except BudgetExceededError:
                if not self.ledger.fits_when_settled(amount):
                    raise
            await asyncio.sleep(_SETTLE_POLL_S)

    async def _ask(
        self,
        question: Question,
        req: Any,
        ctx: CallContext,
        ask: Callable[[Any, CallContext], Awaitable[Any]],
    ) -> Any:
        reservation = await self._reserve(self.estimator.estimate(question, req))
        tally = TallyRecorder(inner=ctx.recorder)
        answer = None
        try:
            answer = await ask(req, dataclasses.replace(ctx, recorder=tally))
        finally:
            # An oracle that wrote no rows (outside the protocol) is settled from its own usage.
            spent = tally.amount if tally.rows or answer is None else amount_of(answer.usage)
            self.ledger.commit(reservation, spent)
            with self._spent_lock:
                self.spent = self.spent + spent
        return answer

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        answer: BoxesAnswer = await self._ask("boxes", req, ctx, self.inner.boxes)
        return answer

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        answer: PatchLabelsAnswer = await self._ask("patch_labels", req, ctx, self.inner.patch_labels)
        return answer

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        answer: PointsAnswer = await self._ask("points", req, ctx, self.inner.points)
        return answer

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        answer: RerankAnswer = await self._ask("rerank", req, ctx, self.inner.rerank)
        return answer

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        answer: ReviewAnswer = await self._ask("review", req, ctx, self.inner.review)
        return answer

    async def aclose(self) -> None:
        """The inner oracle is shared across slides; its owner closes it."""
