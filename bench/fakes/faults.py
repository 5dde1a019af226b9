"""Run one oracle question against a fake server with faults queued, and summarise what happened.

Shared by the fault tests and the fault-table benchmark, so the table shows what the tests check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tissue_oracle.bench.fakes import fixtures
from tissue_oracle.bench.fakes.server_base import Fault
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import OracleError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import CallRecord

QUESTIONS = ("boxes", "patch_labels", "points", "rerank", "review")
STAGES = {
    "boxes": "ground_boxes",
    "patch_labels": "classify_patches",
    "points": "point_ground",
    "rerank": "rerank_exemplars",
    "review": "review_mask",
}


@dataclass
class Outcome:
    """What one faulted question came to."""

    answer: Any | None
    error: OracleError | None
    rows: list[CallRecord]
    server_requests: int

    @property
    def summary(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__} after {len(self.rows)} attempt(s)"
        repaired = any(r.template == "repair_json" for r in self.rows)
        how = " via JSON repair" if repaired else ""
        return f"answer on attempt {len(self.rows)}{how}"


def request_for(question: str) -> Any:
    return {
        "boxes": fixtures.boxes_request,
        "patch_labels": lambda: fixtures.patch_request(1),
        "points": fixtures.points_request,
        "rerank": fixtures.rerank_request,
        "review": fixtures.review_request,
    }[question]()


def run_faulted(family: str, question: str, faults: list[Fault], **oracle_options: Any) -> Outcome:
    """Ask ``question`` once through a fresh server with ``faults`` queued; never raises OracleError."""
    server = fixtures.start_server(family, hang_s=1.5, retry_after_s=0.05)
    server.inject(*faults)
    recorder = MemoryRecorder()
    ctx = CallContext(run_id="r", slide_id="s", stage=STAGES[question], role="oracle", recorder=recorder)  # type: ignore[arg-type]
    oracle = fixtures.oracle_for(family, server, timeout_s=0.5, **oracle_options)
    method = getattr(oracle, question)

    async def main() -> tuple[Any | None, OracleError | None]:
        try:
            return await method(request_for(question), ctx), None
        except OracleError as exc:
            return None, exc
        finally:
            await oracle.aclose()

    try:
        answer, error = asyncio.run(main())
    finally:
        server.stop()
    return Outcome(answer=answer, error=error, rows=list(recorder.calls), server_requests=server.requests)
