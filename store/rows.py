"""Records to table rows and back: the one place that knows each table's column order.

Rows are tuples in the order of the ``*_COLUMNS`` lists, which is what the appender (and a
``SELECT`` of those columns) uses. Free-text fields pass through a :class:`Scrubber` on the way in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from tissue_oracle.tools.schemas import (
    CallRecord,
    DecisionRecord,
    OutputRecord,
    PatchRecord,
    RunRecord,
    SlideRecord,
)

Row = tuple[Any, ...]
Scrub = Callable[[str | None], str | None]

RUN_COLUMNS = [
    "run_id",
    "started_at",
    "finished_at",
    "policy_name",
    "policy_yaml",
    "policy_hash",
    "tool_version",
    "command_line",
    "status",
]
SLIDE_COLUMNS = [
    "run_id",
    "slide_id",
    "path",
    "file_hash",
    "width",
    "height",
    "mpp",
    "vendor",
    "status",
    "error",
    "flags",
    "started_at",
    "finished_at",
]
CALL_COLUMNS = [
    "run_id",
    "slide_id",
    "stage",
    "role",
    "backend",
    "model",
    "template",
    "template_hash",
    "request_hash",
    "image_hashes",
    "image_coords",
    "request_json",
    "response_raw",
    "parsed_json",
    "ok",
    "error",
    "attempt",
    "latency_s",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cache_hit",
    "started_at",
]
DECISION_COLUMNS = [
    "run_id",
    "slide_id",
    "region",
    "round",
    "precision",
    "recall",
    "precision_pct",
    "recall_pct",
    "grade_notes",
    "action",
    "reason",
    "budget_left_calls",
    "budget_left_tokens",
    "budget_left_usd",
    "decided_at",
]
PATCH_COLUMNS = ["run_id", "slide_id", "x", "y", "size", "label", "focus", "confidence", "source"]
OUTPUT_COLUMNS = ["run_id", "slide_id", "path", "kind", "sha256", "bytes"]

#: table -> the columns its rows carry (``calls.call_id`` is filled in by the database).
COLUMNS: dict[str, list[str]] = {
    "runs": RUN_COLUMNS,
    "slides": SLIDE_COLUMNS,
    "calls": CALL_COLUMNS,
    "decisions": DECISION_COLUMNS,
    "patches": PATCH_COLUMNS,
    "outputs": OUTPUT_COLUMNS,
}


def naive(ts: datetime | None) -> datetime | None:
    """Timestamps are stored naive; an aware one is converted to UTC first so it is not shifted twice."""
    if ts is None or ts.tzinfo is None:
        return ts
    return ts.astimezone(UTC).replace(tzinfo=None)


def run_row(r: RunRecord, scrub: Scrub) -> Row:
    return (
        r.run_id,
        naive(r.started_at),
        naive(r.finished_at),
        r.policy_name,
        scrub(r.policy_yaml),
        r.policy_hash,
        r.tool_version,
        scrub(r.command_line),
        r.status,
    )


def slide_row(r: SlideRecord, scrub: Scrub) -> Row:
    return (
        r.run_id,
        r.slide_id,
        scrub(r.path),
        r.file_hash,
        r.width,
        r.height,
        r.mpp,
        r.vendor,
        r.status,
        scrub(r.error),
        list(r.flags),
        naive(r.started_at),
        naive(r.finished_at),
    )


def call_row(r: CallRecord, scrub: Scrub) -> Row:
    return (
        r.run_id,
        r.slide_id,
        r.stage,
        r.role,
        r.backend,
        r.model,
        r.template,
        r.template_hash,
        r.request_hash,
        list(r.image_hashes),
        [list(c) for c in r.image_coords],
        scrub(r.request_json),
        scrub(r.response_raw),
        scrub(r.parsed_json),
        r.ok,
        scrub(r.error),
        r.attempt,
        r.latency_s,
        r.input_tokens,
        r.output_tokens,
        r.cost_usd,
        r.cache_hit,
        naive(r.started_at),
    )


def call_from_row(row: Sequence[Any]) -> CallRecord:
    """A ``CallRecord`` from a row selected in ``CALL_COLUMNS`` order."""
    return CallRecord.model_validate(dict(zip(CALL_COLUMNS, row, strict=True)))


def decision_row(r: DecisionRecord, scrub: Scrub) -> Row:
    g = r.grades
    return (
        r.run_id,
        r.slide_id,
        r.region,
        r.round,
        None if g is None else g.precision,
        None if g is None else g.recall,
        None if g is None else g.precision_pct,
        None if g is None else g.recall_pct,
        None if g is None else scrub(g.notes),
        r.action,
        scrub(r.reason),
        r.budget_left_calls,
        r.budget_left_tokens,
        r.budget_left_usd,
        naive(r.decided_at),
    )


def patch_row(r: PatchRecord, scrub: Scrub) -> Row:
    return (r.run_id, r.slide_id, r.x, r.y, r.size, r.label, r.focus, r.confidence, r.source)


def output_row(r: OutputRecord, scrub: Scrub) -> Row:
    return (r.run_id, r.slide_id, scrub(r.path), r.kind, r.sha256, r.bytes)
