"""The audit queries behind ``tissue-oracle audit``: each takes a connection and returns a ``Table``.

Run them on the store's thread: ``store.query(lambda conn: queries.runs(conn))``. Every value
from a user reaches DuckDB as a bound parameter, never formatted into the SQL text; the only
formatted pieces are column names picked from fixed tables here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from tissue_oracle.store.schema import TABLES
from tissue_oracle.tools.errors import ConfigError

CostBy = Literal["run", "slide", "stage", "role", "model"]
_COST_KEYS: dict[str, str] = {
    "run": "run_id",
    "slide": "run_id, slide_id",
    "stage": "stage",
    "role": "role",
    "model": "backend || ':' || model AS model",
}


@dataclass(kw_only=True)
class Table:
    """A query result: column names and rows, in order."""

    columns: list[str]
    """Column names, as the CLI prints them."""
    rows: list[tuple[Any, ...]]
    """One tuple per row, values as DuckDB returns them."""

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _table(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Table:
    result = conn.execute(sql, params or [])
    columns = [d[0] for d in result.description or []]
    return Table(columns=columns, rows=result.fetchall())


def runs(conn: duckdb.DuckDBPyConnection) -> Table:
    """Every run, newest first, with its slide and call counts and its cost in USD."""
    return _table(
        conn,
        """
        SELECT r.run_id, r.status, r.started_at, r.finished_at, r.policy_name, r.tool_version,
               (SELECT count(*) FROM slides s WHERE s.run_id = r.run_id) AS slides,
               (SELECT count(*) FROM calls c WHERE c.run_id = r.run_id) AS calls,
               (SELECT coalesce(sum(cost_usd), 0) FROM calls c WHERE c.run_id = r.run_id) AS usd
        FROM runs r ORDER BY r.started_at DESC
        """,
    )


def slides(conn: duckdb.DuckDBPyConnection, run_id: str) -> Table:
    """The slides of one run with status, level-0 size, mpp, flags and their calls' cost."""
    return _table(
        conn,
        """
        SELECT s.slide_id, s.status, s.path, s.width, s.height, s.mpp, s.vendor, s.flags, s.error,
               count(c.request_hash) AS calls, coalesce(sum(c.cost_usd), 0) AS usd
        FROM slides s LEFT JOIN calls c ON c.run_id = s.run_id AND c.slide_id = s.slide_id
        WHERE s.run_id = ?
        GROUP BY ALL ORDER BY s.slide_id
        """,
        [run_id],
    )


def calls(
    conn: duckdb.DuckDBPyConnection,
    *,
    run: str | None = None,
    slide: str | None = None,
    stage: str | None = None,
    role: str | None = None,
    model: str | None = None,
    errors_only: bool = False,
    limit: int = 200,
) -> Table:
    """Call rows, newest first, filtered; ``model`` matches ``model`` or ``backend:model``."""
    where, params = ["TRUE"], []
    for column, value in (("run_id", run), ("slide_id", slide), ("stage", stage), ("role", role)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if model is not None:
        where.append("(model = ? OR backend || ':' || model = ?)")
        params += [model, model]
    if errors_only:
        where.append("NOT ok")
    sql = f"""
        SELECT call_id, run_id, slide_id, stage, role, backend, model, ok, error, attempt, latency_s,
               input_tokens, output_tokens, cost_usd, cache_hit, left(request_hash, 12) AS request_hash,
               started_at
        FROM calls WHERE {" AND ".join(where)} ORDER BY call_id DESC LIMIT ?
    """
    return _table(conn, sql, [*params, limit])


def cost(conn: duckdb.DuckDBPyConnection, by: CostBy = "run") -> Table:
    """Calls, cache hits, errors, tokens and USD grouped by run, slide, stage, role or model."""
    if by not in _COST_KEYS:
        raise ConfigError(f"can't group cost by {by!r}; choose one of {sorted(_COST_KEYS)}")
    key = _COST_KEYS[by]
    return _table(
        conn,
        f"""
        SELECT {key}, count(*) AS calls, count(*) FILTER (WHERE cache_hit) AS cache_hits,
               count(*) FILTER (WHERE NOT ok) AS errors, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, sum(cost_usd) AS usd
        FROM calls GROUP BY ALL ORDER BY usd DESC, calls DESC
        """,
    )


def decisions(conn: duckdb.DuckDBPyConnection, slide_id: str, run_id: str | None = None) -> Table:
    """The policy decisions about one slide's regions, in order, with grades and budget left."""
    where, params = "slide_id = ?", [slide_id]
    if run_id is not None:
        where += " AND run_id = ?"
        params.append(run_id)
    return _table(
        conn,
        f"""
        SELECT run_id, region, round, precision, recall, precision_pct, recall_pct, action, reason,
               budget_left_calls, budget_left_tokens, budget_left_usd, decided_at
        FROM decisions WHERE {where} ORDER BY decided_at, region, round
        """,
        params,
    )


def planner_turns(conn: duckdb.DuckDBPyConnection, slide_id: str, run_id: str | None = None) -> Table:
    """One slide's planner turns in order (role ``planner``): what each chose, its tokens, cost and the
    guard's verdict. ``chose`` reads the row's parsed tool calls; ``guard`` is ``ok`` or why the guard
    handed the slide to the policy."""
    where, params = "role = 'planner' AND slide_id = ?", [slide_id]
    if run_id is not None:
        where += " AND run_id = ?"
        params.append(run_id)
    raw = _table(
        conn,
        f"""
        SELECT run_id, attempt AS turn, backend || ':' || model AS planner, parsed_json, input_tokens,
               output_tokens, cost_usd, latency_s, ok, error
        FROM calls WHERE {where} ORDER BY run_id, attempt, started_at
        """,
        params,
    )
    rows = []
    for r in raw.records():
        parsed = json.loads(r["parsed_json"] or "{}")
        chosen = ", ".join(_call_text(c) for c in parsed.get("tool_calls", []))
        text = parsed.get("text") or ""
        chose = chosen or (f"(text) {text[:160]}" if text else "(no request sent)")
        guard = "ok" if r["ok"] else (r["error"] or "stopped")
        rows.append(
            (r["run_id"], r["turn"], r["planner"], chose, r["input_tokens"], r["output_tokens"],
             r["cost_usd"], round(r["latency_s"] or 0.0, 3), guard)
        )  # fmt: skip
    columns = ["run_id", "turn", "planner", "chose", "input_tokens", "output_tokens", "cost_usd", "latency_s"]
    return Table(columns=[*columns, "guard"], rows=rows)


def _call_text(call: dict[str, Any]) -> str:
    args = call.get("args") or {}
    if call.get("tool") == "finish_slide" and isinstance(args.get("regions"), list):
        verdicts = "; ".join(
            f"region {v.get('region')} {v.get('action')}" + (f" ({v['reason']})" if v.get("reason") else "")
            for v in args["regions"]
        )
        return f"finish_slide: {verdicts}"
    return f"{call.get('tool')}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def export_parquet(conn: duckdb.DuckDBPyConnection, out_dir: Path) -> list[Path]:
    """Write every record table to ``out_dir/<table>.parquet``; return the paths written."""
    import pyarrow.parquet as pq

    # Written from Python, not with COPY: read-only opens have DuckDB's file access turned off.
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in TABLES:
        target = out_dir / f"{table}.parquet"
        pq.write_table(conn.sql(f"SELECT * FROM {table}").to_arrow_table(), target)
        written.append(target)
    return written


def run_sql(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Table:
    """Run one read-only ``SELECT`` (or ``WITH ... SELECT``) with bound ``?``/``$n`` parameters."""
    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"the SQL does not parse: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = [s.type.name for s in statements]
        raise ConfigError(f"audit sql runs exactly one SELECT statement; got {kinds}. Writes are refused.")
    try:
        return _table(conn, sql, params)
    except duckdb.Error as exc:
        raise ConfigError(f"the query failed: {exc}") from exc
