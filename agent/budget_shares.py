"""The run budget across worker processes: the coordinator grants each slide a share at dispatch.

Workers on other processes or machines can't reserve on the coordinator's ledger per call, so the
coordinator reserves a *share* of the run budget when it dispatches a slide, and the worker runs
that slide under a ledger capped at its share (and at the policy's slide budget). When the slide
comes back, the coordinator commits what it really spent and the rest of the share returns to the
pool. The sum of outstanding shares never exceeds what is left of the run budget, so the run cap
holds however many workers there are, with no call waiting on a network round trip.

A share is what is left unreserved divided by the slides not yet dispatched (this one included),
capped by the slide budget. So a long run spreads its budget evenly instead of the first slides
taking all of it; what a slide leaves unspent rolls forward to the slides after it.
"""

from __future__ import annotations

import math

from tissue_oracle.policies.ledger import Amount, BudgetLedger, Reservation
from tissue_oracle.policies.policy import Budget


def _share(left: float | None, slides_left: int, slide_cap: float | None) -> float | None:
    if left is None:
        return slide_cap
    share = max(0.0, left) / max(1, slides_left)
    return share if slide_cap is None else min(share, slide_cap)


class BudgetShares:
    """The run's ledger on the coordinator, handing out per-slide shares."""

    def __init__(self, run_cap: Budget, slide_cap: Budget, *, spent_before: Amount | None = None) -> None:
        self.ledger = BudgetLedger(run_cap, scope="run")
        self.slide_cap = slide_cap
        if spent_before is not None and spent_before != Amount():
            # An earlier attempt of this run (resume): what it spent counts against the same cap.
            self.ledger.commit(self.ledger.reserve(), spent_before)

    def grant(self, slides_left: int) -> tuple[Reservation, Budget]:
        """Reserve one slide's share now; returns the reservation and the budget the worker gets."""
        left = self.ledger.remaining()
        calls = _share(left.calls, slides_left, self.slide_cap.calls)
        tokens = _share(left.tokens, slides_left, self.slide_cap.tokens)
        usd = _share(left.usd, slides_left, self.slide_cap.usd)
        budget = Budget(
            calls=None if calls is None else math.floor(calls),
            tokens=None if tokens is None else math.floor(tokens),
            usd=usd,
        )
        reservation = self.ledger.reserve(
            calls=budget.calls or 0, tokens=budget.tokens or 0, usd=budget.usd or 0.0
        )
        return reservation, budget

    def settle(self, reservation: Reservation, spent: Amount) -> None:
        """Commit what the slide spent; the rest of its share goes back to the pool."""
        self.ledger.commit(reservation, spent)

    @property
    def spent(self) -> Amount:
        return self.ledger.committed
