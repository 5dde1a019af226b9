"""The attempt policy's backoff: exponential with jitter, Retry-After honoured, always capped."""

from __future__ import annotations

import random

import pytest

from tissue_oracle.oracles.vlm_attempts import AttemptPolicy


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [
        (1, None, 0.25, 0.5),
        (2, None, 0.5, 1.0),
        (3, None, 1.0, 2.0),
        (10, None, 2.0, 4.0),  # capped at backoff_max_s
        (1, 1.5, 1.5, 1.65),  # Retry-After wins over the exponential wait
        (1, 60.0, 4.0, 4.4),  # ...but is capped too
        (1, 0.0, 0.0, 0.0),
    ],
)
def test_backoff(attempt: int, retry_after: float | None, low: float, high: float) -> None:
    policy = AttemptPolicy(backoff_base_s=0.5, backoff_max_s=4.0, rng=random.Random(attempt))
    waits = [policy.backoff(attempt, retry_after) for _ in range(50)]
    assert all(low <= w <= high for w in waits), (min(waits), max(waits))
