"""The attempt policy's backoff: exponential with jitter, a server-named wait honoured, always capped."""

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
        (1, 60.0, 60.0, 66.0),  # ...even past backoff_max_s: the server knows its window (RetryInfo 53s)
        (1, 500.0, 120.0, 132.0),  # ...up to retry_after_max_s (the loop gives up before waiting that long)
        (1, 0.0, 0.0, 0.0),
    ],
)
def test_backoff(attempt: int, retry_after: float | None, low: float, high: float) -> None:
    policy = AttemptPolicy(backoff_base_s=0.5, backoff_max_s=4.0, rng=random.Random(attempt))
    waits = [policy.backoff(attempt, retry_after) for _ in range(50)]
    assert all(low <= w <= high for w in waits), (min(waits), max(waits))


class _BrokenTransport:
    """A transport with a bug: it raises something that is not a TransportError."""

    name = "openai"

    async def send(self, request: object) -> object:
        raise KeyError("choices")

    async def aclose(self) -> None:
        return None


def test_a_transport_bug_becomes_one_row_and_a_clean_oracle_error() -> None:
    import asyncio

    import numpy as np

    from tissue_oracle.oracles.profiles import PROFILES
    from tissue_oracle.oracles.vlm import VLMOracle
    from tissue_oracle.store.memory import MemoryRecorder
    from tissue_oracle.tools.errors import OracleError
    from tissue_oracle.tools.oracle_protocol import CallContext
    from tissue_oracle.tools.schemas import BoxesRequest

    oracle = VLMOracle(transport=_BrokenTransport(), profile=PROFILES["qwen3-vl"], model="m")  # type: ignore[arg-type]
    rec = MemoryRecorder()
    ctx = CallContext(run_id="r", slide_id="s", stage="ground_boxes", role="oracle", recorder=rec)
    req = BoxesRequest(
        thumbnail=np.full((32, 32, 3), 240, np.uint8), downsample=64, slide_width=2048, slide_height=2048
    )
    with pytest.raises(OracleError, match="KeyError"):
        asyncio.run(oracle.boxes(req, ctx))
    assert len(rec.calls) == 1 and not rec.calls[0].ok
