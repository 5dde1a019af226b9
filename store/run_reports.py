"""Reads about one run for its progress bar, its coordinator and its report (``agent.run_progress``,
``agent.distributed_run``, ``agent.report_html``). Each function takes a DuckDB connection (run it
with ``AuditStore.query``) and returns plain values; every value is a bound parameter.
"""

from __future__ import annotations

from typing import Any

from tissue_oracle.store.rows import CALL_COLUMNS, call_from_row
from tissue_oracle.tools.schemas import CallRecord

Rows = list[tuple[Any, ...]]


def run_state(conn: Any, run_id: str) -> dict[str, float]:
    """Slides per status, and the run's paid calls, failed calls and USD (cache hits excluded)."""
    state: dict[str, float] = {"done": 0, "degraded": 0, "failed": 0}
    sql = "SELECT status, count(*) FROM slides WHERE run_id = ? GROUP BY status"
    for status, n in conn.execute(sql, [run_id]).fetchall():
        state[str(status)] = n
    calls, failed, usd = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE NOT ok), coalesce(sum(cost_usd), 0) "
        "FROM calls WHERE run_id = ? AND NOT cache_hit",
        [run_id],
    ).fetchall()[0]
    state.update(calls=calls, failed_calls=failed, usd=float(usd))
    return state


def run_spend(conn: Any, run_id: str) -> tuple[int, int, float]:
    """(calls, tokens, USD) the run's calls cost so far; cache hits cost nothing."""
    calls, tokens, usd = conn.execute(
        "SELECT count(*), coalesce(sum(input_tokens + output_tokens), 0), coalesce(sum(cost_usd), 0) "
        "FROM calls WHERE run_id = ? AND NOT cache_hit",
        [run_id],
    ).fetchall()[0]
    return int(calls), int(tokens), float(usd)


def slide_ok_calls(conn: Any, slide_id: str) -> list[CallRecord]:
    """The ok calls recorded under this slide id (every run), in the order they were recorded."""
    cols = ", ".join(CALL_COLUMNS)
    rows = conn.execute(f"SELECT {cols} FROM calls WHERE slide_id = ? AND ok ORDER BY call_id", [slide_id])
    return [call_from_row(r) for r in rows.fetchall()]


_GROUPED = (
    "SELECT {key}, count(*) FILTER (WHERE NOT cache_hit), count(*) FILTER (WHERE cache_hit), "
    "count(*) FILTER (WHERE NOT ok), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
    "coalesce(sum(cost_usd), 0) FROM calls WHERE run_id IN ({runs}) GROUP BY {key} ORDER BY {key}"
)


def report_tables(conn: Any, run_ids: list[str]) -> dict[str, Rows]:
    """For ``report.html``: runs, calls per stage and per role, failures, and paid calls in time order.

    ``calls_by_stage``/``calls_by_role`` rows: key, calls, cache hits, failed, input tokens, output
    tokens, USD. ``paid_calls`` rows: (started_at, cost_usd).
    """
    marks = ", ".join("?" for _ in run_ids)
    q = conn.execute
    return {
        "runs": q(
            f"SELECT run_id, status, started_at, finished_at, policy_name FROM runs "
            f"WHERE run_id IN ({marks})",
            run_ids,
        ).fetchall(),
        "calls_by_stage": q(_GROUPED.format(key="stage", runs=marks), run_ids).fetchall(),
        "calls_by_role": q(_GROUPED.format(key="role", runs=marks), run_ids).fetchall(),
        "failures": q(
            f"SELECT slide_id, stage, role, error, count(*) FROM calls WHERE run_id IN ({marks}) AND NOT ok "
            "GROUP BY ALL ORDER BY count(*) DESC LIMIT 30",
            run_ids,
        ).fetchall(),
        "paid_calls": q(
            f"SELECT started_at, cost_usd FROM calls WHERE run_id IN ({marks}) AND NOT cache_hit "
            "AND started_at IS NOT NULL ORDER BY started_at",
            run_ids,
        ).fetchall(),
    }
