"""The budget ledger: hard caps on calls, tokens and US dollars, by reserve-then-commit.

Ledgers form a tree: a run ledger, and one child per slide. A reservation is checked against
the ledger it is made on and every ancestor, under one lock shared by the whole tree, and
either fits everywhere or raises ``BudgetExceededError``. ``commit`` replaces the reservation
with the actual usage, refunding the unused part. So at any moment, for every cap:

    committed + reserved <= cap

as long as actual usage never exceeds its reservation. When it does (an estimate was too low),
the commit still records what was really spent, and ``overruns`` counts it, so the breach is
visible instead of hidden.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tissue_oracle.policies.policy import Budget
from tissue_oracle.tools.errors import BudgetExceededError
from tissue_oracle.tools.schemas import Usage


@dataclass(kw_only=True, frozen=True)
class Amount:
    """A quantity of spend: call attempts, tokens (input + output) and US dollars."""

    calls: int = 0
    tokens: int = 0
    usd: float = 0.0

    def __add__(self, other: Amount) -> Amount:
        return Amount(
            calls=self.calls + other.calls, tokens=self.tokens + other.tokens, usd=self.usd + other.usd
        )

    def __sub__(self, other: Amount) -> Amount:
        return Amount(
            calls=self.calls - other.calls, tokens=self.tokens - other.tokens, usd=self.usd - other.usd
        )


def amount_of(usage: Usage) -> Amount:
    """The spend a ``Usage`` stands for: cache hits spend nothing."""
    if usage.cache_hit:
        return Amount()
    return Amount(calls=usage.calls, tokens=usage.input_tokens + usage.output_tokens, usd=usage.usd)


# Float sums of dollar amounts drift by ulps; a cap is breached only beyond this.
_USD_EPS = 1e-9


@dataclass(kw_only=True)
class Reservation:
    """Spend set aside for one oracle question, until ``commit`` settles it."""

    id: int
    amount: Amount
    ledger: BudgetLedger
    settled: bool = False


@dataclass(kw_only=True, frozen=True)
class Remaining:
    """What is left under each cap (cap - committed - reserved); ``None`` where uncapped."""

    calls: int | None
    tokens: int | None
    usd: float | None


@dataclass(kw_only=True)
class _Tally:
    committed: Amount = field(default_factory=Amount)
    reserved: Amount = field(default_factory=Amount)


class BudgetLedger:
    """Hard caps for one scope (a run, or a slide inside a run). Thread-safe."""

    def __init__(self, cap: Budget | None = None, *, scope: str = "run", parent: BudgetLedger | None = None):
        self.cap = cap or Budget()
        self.scope = scope
        self.parent = parent
        self._lock: threading.Lock = parent._lock if parent is not None else threading.Lock()
        self._ids: Iterator[int] = parent._ids if parent is not None else itertools.count(1)
        self._tally = _Tally()
        self.overruns = 0
        """Commits whose actual usage exceeded their reservation (estimates too low)."""
        self.exhausted_reason: str | None = None
        """Set when a reservation on this ledger (or a descendant) failed for lack of budget."""

    def child(self, cap: Budget | None, *, scope: str) -> BudgetLedger:
        """A ledger whose reservations must also fit in this one (a slide inside a run)."""
        return BudgetLedger(cap, scope=scope, parent=self)

    def _chain(self) -> list[BudgetLedger]:
        chain: list[BudgetLedger] = []
        node: BudgetLedger | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain

    def _breach(self, amount: Amount, *, count_reserved: bool) -> str | None:
        """Why ``amount`` would break a cap on this ledger alone, or None if it fits."""
        used = self._tally.committed + (self._tally.reserved if count_reserved else Amount())
        checks = (
            ("calls", self.cap.calls, used.calls + amount.calls, 0.0),
            ("tokens", self.cap.tokens, used.tokens + amount.tokens, 0.0),
            ("usd", self.cap.usd, used.usd + amount.usd, _USD_EPS),
        )
        for quantity, cap, total, eps in checks:
            if cap is not None and total > cap + eps:
                return (
                    f"{self.scope} {quantity} budget of {cap} would be exceeded "
                    f"(committed {getattr(self._tally.committed, quantity)}, "
                    f"reserved {getattr(self._tally.reserved, quantity)}, asked {getattr(amount, quantity)})"
                )
        return None

    def reserve(self, calls: int = 0, tokens: int = 0, usd: float = 0.0) -> Reservation:
        """Set spend aside before a call; raises ``BudgetExceededError`` if any cap would break."""
        amount = Amount(calls=calls, tokens=tokens, usd=usd)
        with self._lock:
            for ledger in self._chain():
                reason = ledger._breach(amount, count_reserved=True)
                if reason is not None:
                    self._mark_exhausted_locked(amount)
                    raise BudgetExceededError(reason)
            for ledger in self._chain():
                ledger._tally.reserved = ledger._tally.reserved + amount
            return Reservation(id=next(self._ids), amount=amount, ledger=self)

    def commit(self, reservation: Reservation, actual: Amount | Usage) -> None:
        """Settle a reservation with what the call really spent; the unused part is refunded.

        A ``Usage`` counts its calls unless it was a cache hit (which cost nothing).
        """
        if isinstance(actual, Usage):
            actual = amount_of(actual)
        with self._lock:
            if reservation.settled:
                raise ValueError(f"reservation {reservation.id} was already committed")
            reservation.settled = True
            over = (
                actual.calls > reservation.amount.calls
                or actual.tokens > reservation.amount.tokens
                or actual.usd > reservation.amount.usd + _USD_EPS
            )
            for ledger in reservation.ledger._chain():
                ledger._tally.reserved = ledger._tally.reserved - reservation.amount
                ledger._tally.committed = ledger._tally.committed + actual
                ledger.overruns += int(over)

    def _mark_exhausted_locked(self, amount: Amount) -> None:
        """Mark this ledger and its ancestors up to the one whose cap is truly spent.

        A cap that only outstanding reservations fill is not spent: waiting may help.
        """
        chain = self._chain()
        for depth, node in enumerate(chain):
            reason = node._breach(amount, count_reserved=False)
            if reason is not None:
                for marked in chain[: depth + 1]:
                    marked.exhausted_reason = marked.exhausted_reason or reason
                return

    def _fits_settled_locked(self, amount: Amount) -> bool:
        return all(node._breach(amount, count_reserved=False) is None for node in self._chain())

    def fits_when_settled(self, amount: Amount) -> bool:
        """Would ``amount`` fit once every outstanding reservation were refunded in full?

        False means the budget is truly spent; True means waiting for calls in flight may help.
        """
        with self._lock:
            return self._fits_settled_locked(amount)

    def fits(self, amount: Amount) -> bool:
        """Would ``amount`` fit now, counting outstanding reservations?"""
        with self._lock:
            return all(node._breach(amount, count_reserved=True) is None for node in self._chain())

    @property
    def committed(self) -> Amount:
        with self._lock:
            return self._tally.committed

    @property
    def reserved(self) -> Amount:
        with self._lock:
            return self._tally.reserved

    def remaining(self) -> Remaining:
        """Headroom under this ledger's own caps and its ancestors' (the tightest wins)."""
        with self._lock:
            calls: int | None = None
            tokens: int | None = None
            usd: float | None = None
            for node in self._chain():
                used = node._tally.committed + node._tally.reserved
                if node.cap.calls is not None:
                    calls = _tightest(calls, node.cap.calls - used.calls)
                if node.cap.tokens is not None:
                    tokens = _tightest(tokens, node.cap.tokens - used.tokens)
                if node.cap.usd is not None:
                    usd = _tightest(usd, node.cap.usd - used.usd)
            return Remaining(calls=calls, tokens=tokens, usd=usd)


_N = TypeVar("_N", int, float)


def _tightest(current: _N | None, candidate: _N) -> _N:
    return candidate if current is None else min(current, candidate)
