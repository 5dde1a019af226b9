"""Faults on the wire: nothing crashes, retries are bounded, every attempt is one row, and the caller
gets either a validated answer or a clean OracleError."""

from __future__ import annotations

import asyncio

import pytest

from tissue_oracle.bench.fakes import fixtures
from tissue_oracle.bench.fakes.faults import QUESTIONS, run_faulted
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import OracleError, OracleUnavailableError
from tissue_oracle.tools.oracle_protocol import CallContext

FAMILIES = ["openai", "gemini"]


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")


# fault -> (rows expected, error text on the first row, whether the second attempt is a JSON repair)
RECOVERABLE = {
    "latency": (1, None, False),
    "rate_limit": (2, "429", False),
    "server_error": (2, "500", False),
    "hang": (2, "", False),
    "truncated": (2, "unusable answer", True),
    "invalid_json": (2, "unusable answer", True),
    "empty": (2, "empty", True),
    "wrong_keys": (2, "bbox_2d|box_2d", True),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fault", list(RECOVERABLE))
def test_single_fault_recovers(family: str, fault: str) -> None:
    rows_expected, first_error, repaired = RECOVERABLE[fault]
    outcome = run_faulted(family, "boxes", [fault])  # type: ignore[list-item]
    assert outcome.error is None and outcome.answer is not None
    assert len(outcome.answer.boxes) == 2
    assert len(outcome.rows) == rows_expected == outcome.server_requests
    assert [r.attempt for r in outcome.rows] == list(range(1, rows_expected + 1))
    assert [r.ok for r in outcome.rows] == [False] * (rows_expected - 1) + [True]
    if first_error is not None:
        assert any(part in (outcome.rows[0].error or "") for part in first_error.split("|")), outcome.rows[
            0
        ].error
    assert (outcome.rows[-1].template == "repair_json") == repaired
    assert len({r.request_hash for r in outcome.rows}) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_out_of_range_coordinates_are_dropped_or_clamped(family: str) -> None:
    outcome = run_faulted(family, "boxes", ["out_of_range"])
    assert outcome.error is None and len(outcome.rows) == 1
    (box,) = outcome.answer.boxes  # the far-out box dropped, the overshooting one clamped
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= 200 * 64 and box.y1 <= 120 * 64
    points = run_faulted(family, "points", ["out_of_range"]).answer.points
    region = fixtures.points_request().region
    assert len(points) == 3
    assert all(region.x0 <= p.x < region.x1 and region.y0 <= p.y < region.y1 for p in points)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("question", QUESTIONS)
def test_every_question_survives_a_bad_answer(family: str, question: str) -> None:
    outcome = run_faulted(family, question, ["wrong_keys" if question != "patch_labels" else "invalid_json"])
    assert outcome.error is None, outcome.error
    assert [r.ok for r in outcome.rows] == [False, True]
    assert outcome.rows[1].template == "repair_json"


@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_failure_is_a_clean_bounded_error(family: str) -> None:
    outcome = run_faulted(family, "boxes", ["server_error"] * 10, retries=2)
    assert isinstance(outcome.error, OracleError) and not isinstance(outcome.error, OracleUnavailableError)
    assert "after 3 attempts" in str(outcome.error) and "500" in str(outcome.error)
    assert len(outcome.rows) == 3 == outcome.server_requests and not any(r.ok for r in outcome.rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_garbage_gets_one_repair_then_plain_retries(family: str) -> None:
    outcome = run_faulted(family, "review", ["invalid_json"] * 10, retries=3)
    assert isinstance(outcome.error, OracleError)
    assert len(outcome.rows) == 4
    assert [r.template for r in outcome.rows] == ["review_mask", "repair_json", "review_mask", "review_mask"]
    assert all(r.output_tokens > 0 for r in outcome.rows)  # bad answers are still paid for


@pytest.mark.parametrize("family", FAMILIES)
def test_auth_failure_is_not_retried(family: str) -> None:
    outcome = run_faulted(family, "boxes", ["unauthorized", "unauthorized"])
    assert isinstance(outcome.error, OracleUnavailableError)
    assert len(outcome.rows) == 1 == outcome.server_requests


def test_in_flight_calls_are_bounded() -> None:
    server = fixtures.start_server("openai", latency_s=0.05)
    oracle = fixtures.oracle_for("openai", server, max_in_flight=3)
    rec = MemoryRecorder()
    ctx = CallContext(run_id="r", slide_id="s", stage="classify_patches", role="oracle", recorder=rec)

    async def main() -> None:
        try:
            await oracle.patch_labels(fixtures.patch_request(12), ctx)
        finally:
            await oracle.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()
    assert server.requests == 12 and len(rec.calls) == 12
    assert 1 < server.max_in_flight_seen <= 3


@pytest.mark.parametrize("family", FAMILIES)
def test_retry_after_reaches_the_backoff(family: str) -> None:
    """A 429's Retry-After header is read by the transport, so the backoff can honour it."""
    from tissue_oracle.oracles.transport import TransportError, TransportRequest

    server = fixtures.start_server(family, retry_after_s=7.0)
    server.inject("rate_limit")
    oracle = fixtures.oracle_for(family, server)
    request = TransportRequest(model=fixtures.MODELS[family], prompt="hi", schema={"type": "object"})

    async def main() -> TransportError:
        try:
            await oracle.transport.send(request)
        except TransportError as exc:
            return exc
        finally:
            await oracle.aclose()
        raise AssertionError("expected a 429")

    try:
        error = asyncio.run(main())
    finally:
        server.stop()
    assert error.status == 429 and error.retryable and error.retry_after_s == 7.0
    assert oracle.backoff_max_s < 7.0  # the wait is capped, as the attempt policy promises
