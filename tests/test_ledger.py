"""The budget ledger: reserve, commit, refund, hard caps across a run and its slides."""

from __future__ import annotations

import random
import threading

import pytest

from tissue_oracle.policies.ledger import Amount, BudgetLedger
from tissue_oracle.policies.policy import Budget
from tissue_oracle.tools.errors import BudgetExceededError
from tissue_oracle.tools.schemas import Usage


def test_reserve_commit_refunds_the_unused_part() -> None:
    ledger = BudgetLedger(Budget(calls=10, tokens=1000, usd=1.0))
    res = ledger.reserve(calls=4, tokens=800, usd=0.8)
    assert ledger.remaining().calls == 6 and ledger.remaining().tokens == 200
    with pytest.raises(BudgetExceededError, match="tokens budget of 1000"):
        ledger.reserve(calls=1, tokens=300)
    ledger.commit(res, Usage(calls=1, input_tokens=100, output_tokens=50, usd=0.1))
    assert ledger.committed == Amount(calls=1, tokens=150, usd=0.1)
    assert ledger.reserved == Amount()
    left = ledger.remaining()
    assert (left.calls, left.tokens) == (9, 850) and left.usd == pytest.approx(0.9)
    assert ledger.overruns == 0 and ledger.exhausted_reason is None


def test_cache_hits_spend_nothing_and_double_commit_is_refused() -> None:
    ledger = BudgetLedger(Budget(calls=1))
    res = ledger.reserve(calls=1)
    ledger.commit(res, Usage(calls=1, cache_hit=True))
    assert ledger.committed == Amount()
    with pytest.raises(ValueError, match="already committed"):
        ledger.commit(res, Usage())


def test_uncapped_quantities_never_block() -> None:
    ledger = BudgetLedger(Budget(usd=0.5))
    for _ in range(100):
        ledger.commit(ledger.reserve(calls=1000, tokens=10**6), Amount(calls=1000, tokens=10**6))
    assert ledger.remaining().calls is None and ledger.remaining().usd == 0.5


def test_slide_ledger_must_also_fit_the_run() -> None:
    run = BudgetLedger(Budget(calls=5), scope="run")
    first = run.child(Budget(calls=4), scope="slide a")
    second = run.child(Budget(calls=4), scope="slide b")
    first.commit(first.reserve(calls=3), Amount(calls=3))
    with pytest.raises(BudgetExceededError, match="slide a calls"):
        first.reserve(calls=2)
    held = second.reserve(calls=2)
    with pytest.raises(BudgetExceededError, match="run calls"):
        second.reserve(calls=1)
    assert run.remaining().calls == 0 and second.remaining().calls == 0
    # slide a's own cap is spent; the run's is only held by slide b's reservation
    assert first.exhausted_reason is not None and "slide a" in first.exhausted_reason
    assert run.exhausted_reason is None and second.exhausted_reason is None
    second.commit(held, Amount(calls=2))
    with pytest.raises(BudgetExceededError, match="run calls"):
        second.reserve(calls=1)
    assert second.exhausted_reason is not None and run.exhausted_reason == second.exhausted_reason


def test_exhausted_only_when_settling_would_not_help() -> None:
    ledger = BudgetLedger(Budget(calls=2))
    held = ledger.reserve(calls=2)
    with pytest.raises(BudgetExceededError):
        ledger.reserve(calls=1)
    assert ledger.exhausted_reason is None and ledger.fits_when_settled(Amount(calls=1))
    ledger.commit(held, Amount(calls=2))
    assert not ledger.fits_when_settled(Amount(calls=1))
    with pytest.raises(BudgetExceededError):
        ledger.reserve(calls=1)
    assert ledger.exhausted_reason is not None


def test_overrun_is_recorded_not_hidden() -> None:
    ledger = BudgetLedger(Budget(tokens=100))
    ledger.commit(ledger.reserve(tokens=50), Amount(tokens=80))
    assert ledger.overruns == 1 and ledger.committed.tokens == 80


def test_hard_cap_holds_under_threads() -> None:
    run = BudgetLedger(Budget(calls=300, usd=3.0))
    slides = [run.child(Budget(calls=120), scope=f"slide {i}") for i in range(4)]
    peak = {"calls": 0}
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        ledger = slides[seed % 4]
        for _ in range(200):
            try:
                res = ledger.reserve(calls=3, usd=0.03)
            except BudgetExceededError:
                continue
            with lock:
                used = run.committed + run.reserved
                peak["calls"] = max(peak["calls"], used.calls)
                assert used.usd <= 3.0 + 1e-9
            ledger.commit(res, Amount(calls=rng.randint(0, 3), usd=rng.choice([0.0, 0.01, 0.03])))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak["calls"] <= 300
    assert run.committed.calls <= 300 and run.committed.usd <= 3.0 + 1e-9
    assert run.reserved == Amount() and run.overruns == 0
    assert sum(s.committed.calls for s in slides) == run.committed.calls
    assert all(s.committed.calls <= 120 for s in slides)
