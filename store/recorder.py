"""The one contract a run records into: ``AuditRecorder``.

Two implementations keep it: ``store.audit_store.AuditStore`` (DuckDB, the real thing) and
``store.memory.MemoryRecorder`` (lists in memory, for tests and dry runs).
``tests/test_recorder_contract.py`` runs the same cases over both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from tissue_oracle.tools.schemas import (
    CallRecord,
    CallRecorder,
    DecisionRecord,
    OutputRecord,
    PatchRecord,
    RunRecord,
    SlideRecord,
)

#: Slide statuses that count as finished: a resumed run skips these slides.
FINISHED_STATUSES: tuple[str, ...] = ("done", "degraded")


@runtime_checkable
class AuditRecorder(CallRecorder, Protocol):
    """Runs, slides, calls (and the answer cache), decisions, patch labels and output files.

    A slide's records belong to the slide begun with ``begin_slide``; ``finish_slide`` sets its
    final status. ``finished_slides`` names the slides whose status is in ``FINISHED_STATUSES``,
    ``finished_slide_hashes`` maps them to their content hash (resume matches by content),
    ``run_policy`` gives the policy YAML a run was begun under (resume refuses another), and
    ``resume_slide`` queues a resumed slide's paid answers so that it pays only for what its
    interrupted attempt never received.
    """

    def begin_run(self, run: RunRecord) -> None: ...

    def finish_run(self, run_id: str, status: str) -> None: ...

    def finished_slides(self, run_id: str | None = None) -> set[str]: ...

    def finished_slide_hashes(self, run_id: str) -> dict[str, str | None]: ...

    def run_policy(self, run_id: str) -> str | None: ...

    def begin_slide(self, slide: SlideRecord) -> None: ...

    def resume_slide(self, run_id: str, slide_id: str) -> int:
        """Queue the answers ``run_id`` already paid for on ``slide_id`` (an interrupted attempt's),
        handed back one per ask of the same request hash by ``resumed_call``, which oracles ask
        before the cache and also for an ask that skips it; returns how many were queued."""
        ...

    def resumed_call(self, request_hash: str) -> CallRecord | None: ...

    def finish_slide(
        self, run_id: str, slide_id: str, *, status: str, error: str | None = None, flags: Iterable[str] = ()
    ) -> None: ...

    def record_decision(self, record: DecisionRecord) -> None: ...

    def record_patches(self, records: list[PatchRecord]) -> None: ...

    def record_output(self, record: OutputRecord) -> None: ...
