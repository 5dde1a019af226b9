"""``BudgetedOracle``: reserve before every question, settle from the audit rows after, hard caps."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from tissue_oracle.agent.budget_guard import BudgetedOracle, CallEstimator, image_tokens
from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Budget, load_policy
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import BudgetExceededError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    ALL_QUESTIONS,
    CallRecord,
    ModelPrice,
    PatchLabel,
    PatchLabelsAnswer,
    PatchLabelsRequest,
    PatchRef,
    Usage,
)

PRICE = ModelPrice(input_per_mtok=1.0, output_per_mtok=4.0)


def patch_request(n: int, seed: int = 0) -> PatchLabelsRequest:
    rng = np.random.default_rng(seed)
    images = [rng.integers(120, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(n)]
    refs = [PatchRef(x=64 * i, y=0, size=64) for i in range(n)]
    return PatchLabelsRequest(patches=refs, images=images)


def context(recorder: MemoryRecorder, *, use_cache: bool = True) -> CallContext:
    return CallContext(
        run_id="r",
        slide_id="s",
        stage="classify_patches",
        role="classifier",
        recorder=recorder,
        use_cache=use_cache,
    )


@dataclass(kw_only=True)
class BillingOracle:
    """Stands in for a paid VLM (none can run here): each question makes 1-3 attempts, each a
    billed audit row with token counts under the estimator's bound, and answers 'tissue'."""

    seed: int = 0
    backend: str = "simulated"
    model: str = "billing-test"
    questions: frozenset = field(default=ALL_QUESTIONS)
    is_vlm: bool = False
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        usage = Usage()
        for attempt in range(1, self.rng.randint(1, 3) + 1):
            await asyncio.sleep(0)
            inp, out = self.rng.randint(100, 1500), self.rng.randint(1, 256)
            row = CallRecord(
                run_id=ctx.run_id, slide_id=ctx.slide_id, stage=ctx.stage, role=ctx.role,
                backend=self.backend, model=self.model, request_hash=f"h{self.rng.random()}", ok=True,
                attempt=attempt, input_tokens=inp, output_tokens=out, cost_usd=PRICE.cost(inp, out),
            )  # fmt: skip
            ctx.recorder.record_call(row)
            usage = usage + Usage(calls=1, input_tokens=inp, output_tokens=out, usd=row.cost_usd)
        labels = [PatchLabel(ref=ref, label="tissue") for ref in req.patches]
        return PatchLabelsAnswer(labels=labels, usage=usage)

    async def aclose(self) -> None:
        return None


def test_estimate_bounds_tokens_and_price_from_the_policy() -> None:
    policy = load_policy("default")
    est = CallEstimator.from_policy(policy, PRICE)
    amount = est.estimate("patch_labels", patch_request(3))
    assert est.attempts == policy.classify.retries + 1
    per_attempt = est.prompt_tokens + 3 * image_tokens(64, 64) + policy.classify.max_tokens * 8
    assert amount.calls == est.attempts and amount.tokens == est.attempts * per_attempt
    assert amount.usd > 0
    big = PatchLabelsRequest(patches=[PatchRef(x=0, y=0)], images=[np.zeros((2048, 2048, 3), np.uint8)])
    assert est.input_tokens("patch_labels", big) == est.prompt_tokens + image_tokens(512, 512)


def test_classical_questions_are_settled_from_their_rows_and_cache_hits_are_free() -> None:
    recorder = MemoryRecorder()
    ledger = BudgetLedger(Budget(calls=10))
    oracle = BudgetedOracle(ClassicalOracle(), ledger, CallEstimator(price=PRICE, attempts=1))
    req = patch_request(2)
    answer = asyncio.run(oracle.patch_labels(req, context(recorder)))
    assert len(answer.labels) == 2
    assert ledger.committed.calls == 1 and ledger.reserved.calls == 0
    asyncio.run(oracle.patch_labels(req, context(recorder)))  # identical request: a cache hit
    assert [c.cache_hit for c in recorder.calls] == [False, True]
    assert ledger.committed.calls == 1 and oracle.spent.calls == 1


def test_a_spent_budget_refuses_the_question_before_it_reaches_the_backend() -> None:
    recorder = MemoryRecorder()
    ledger = BudgetLedger(Budget(calls=2))
    oracle = BudgetedOracle(ClassicalOracle(), ledger, CallEstimator(price=PRICE, attempts=1))
    for seed in range(2):
        asyncio.run(oracle.patch_labels(patch_request(1, seed), context(recorder)))
    with pytest.raises(BudgetExceededError, match="calls budget of 2"):
        asyncio.run(oracle.patch_labels(patch_request(1, 9), context(recorder)))
    assert len(recorder.calls) == 2 and ledger.exhausted_reason is not None


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_paid_questions_never_break_the_usd_cap(seed: int) -> None:
    recorder = MemoryRecorder()
    run = BudgetLedger(Budget(usd=0.02, calls=60))
    slide = run.child(Budget(tokens=40_000), scope="slide")
    oracle = BudgetedOracle(BillingOracle(seed=seed), slide, CallEstimator(price=PRICE, attempts=3))

    async def main() -> tuple[int, int]:
        async def one(i: int) -> bool:
            try:
                await oracle.patch_labels(patch_request(1, i), context(recorder))
                return True
            except BudgetExceededError:
                return False

        done = await asyncio.gather(*(one(i) for i in range(80)))
        return sum(done), len(done) - sum(done)

    answered, refused = asyncio.run(main())
    paid = recorder.paid_calls
    assert answered > 0 and refused > 0
    assert sum(c.cost_usd for c in paid) <= 0.02 + 1e-12
    assert len(paid) <= 60
    assert sum(c.input_tokens + c.output_tokens for c in paid) <= 40_000
    assert run.committed.calls == len(paid) and run.overruns == 0 and run.reserved.calls == 0
