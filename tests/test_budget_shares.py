"""Run budget across workers: shares granted at dispatch never add up past the cap; refunds roll on."""

from __future__ import annotations

import pytest

from tissue_oracle.agent.budget_shares import BudgetShares
from tissue_oracle.policies.ledger import Amount
from tissue_oracle.policies.policy import Budget


def test_shares_split_what_is_left_and_never_exceed_the_cap() -> None:
    shares = BudgetShares(Budget(calls=100, usd=1.0), Budget())
    granted = [shares.grant(slides_left=n) for n in (4, 3, 2, 1)]
    assert [b.calls for _, b in granted] == [25, 25, 25, 25]
    assert sum(b.usd or 0 for _, b in granted) == pytest.approx(1.0)
    assert shares.ledger.remaining().calls == 0
    # the first slide spent 5 of its 25 calls: 20 go back to the pool
    shares.settle(granted[0][0], Amount(calls=5, usd=0.1))
    assert shares.ledger.remaining().calls == 20
    _, later = shares.grant(slides_left=1)
    assert later.calls == 20


def test_the_slide_budget_caps_a_share_and_uncapped_stays_uncapped() -> None:
    shares = BudgetShares(Budget(calls=1000), Budget(calls=30, tokens=500))
    _, budget = shares.grant(slides_left=2)
    assert (budget.calls, budget.tokens, budget.usd) == (30, 500, None)


def test_an_earlier_attempts_spend_counts_on_resume() -> None:
    shares = BudgetShares(Budget(calls=100), Budget(), spent_before=Amount(calls=90))
    _, budget = shares.grant(slides_left=1)
    assert budget.calls == 10
    assert shares.spent.calls == 90
