"""The store's read queries for the layers above it: distillation, replay setup and the benches.

Only ``store/`` speaks SQL. ``StoreReads`` wraps a ``Query`` (``AuditStore.query`` when the caller
holds the store open, ``read_only(path)`` for a file nobody has open) and answers in plain Python
values. Every value from a caller reaches DuckDB as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tissue_oracle.store.sandbox import open_read_only
from tissue_oracle.tools.errors import ConfigError, StoreError

Query = Callable[[Callable[[Any], Any]], Any]
"""Runs ``fn(duckdb_connection)`` against the audit store and returns its result."""

_SERVED_ROLE = """
    SELECT c.backend, c.model, count(*) AS n
    FROM calls c LEFT JOIN runs r ON r.run_id = c.run_id
    WHERE c.role = ? AND c.ok
      AND c.run_id = (
          SELECT c2.run_id FROM calls c2 LEFT JOIN runs r2 ON r2.run_id = c2.run_id
          WHERE c2.role = ? AND c2.ok
          ORDER BY r2.started_at DESC NULLS LAST, c2.call_id DESC LIMIT 1)
    GROUP BY ALL ORDER BY n DESC LIMIT 1
"""


def read_only(audit: Path) -> Query:
    """A ``Query`` that opens the audit file read-only for each call (no ``AuditStore`` needed)."""

    def query(fn: Callable[[Any], Any]) -> Any:
        con = open_read_only(audit)
        try:
            return fn(con)
        finally:
            con.close()

    return query


def table_names(con: Any) -> set[str]:
    """Names of the tables in an open DuckDB connection."""
    return {str(r[0]) for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


@dataclass(frozen=True)
class StoreReads:
    """Read queries over one audit store; ``audit`` names it in error messages."""

    query: Query
    audit: str = "audit store"

    @classmethod
    def open_read_only(cls, audit: Path) -> StoreReads:
        """Reads that open ``audit`` read-only for each query."""
        return cls(read_only(audit), str(audit))

    # ------------------------------------------------------------------ distillation

    def labelling_calls(self, run_id: str) -> list[tuple[str, str]]:
        """Distinct (backend, model) of the run's successful patch-label calls: who taught the labels."""

        def fn(con: Any) -> list[tuple[Any, ...]]:
            if "calls" not in table_names(con):
                return []
            return list(
                con.execute(
                    "SELECT DISTINCT backend, model FROM calls WHERE run_id = ? "
                    "AND stage = 'classify_patches' AND role IN ('oracle', 'classifier') AND ok "
                    "ORDER BY backend, model",
                    [run_id],
                ).fetchall()
            )

        return [(str(b), str(m)) for b, m in self.query(fn)]

    def run_policy_yaml(self, run_id: str) -> str | None:
        """The policy YAML the run recorded (roles folded in), or None when the run has no row."""

        def fn(con: Any) -> Any:
            if "runs" not in table_names(con):
                return None
            return con.execute("SELECT policy_yaml FROM runs WHERE run_id = ?", [run_id]).fetchone()

        row = self.query(fn)
        return None if row is None or not row[0] else str(row[0])

    def patch_label_rows(self, run_id: str | None = None) -> tuple[str, list[tuple[Any, ...]]]:
        """The run (``run_id``, else the latest with labels) and its label rows, slide by slide.

        Rows are ``(slide_id, path, file_hash, x, y, size, label, source, confidence)`` ordered by
        slide, y, x.
        """

        def fn(con: Any) -> tuple[str, list[tuple[Any, ...]]]:
            run = _pick_run(con, run_id, self.audit)
            rows = con.execute(
                "SELECT p.slide_id, s.path, s.file_hash, p.x, p.y, p.size, p.label, p.source, p.confidence "
                "FROM patches p JOIN slides s ON s.run_id = p.run_id AND s.slide_id = p.slide_id "
                "WHERE p.run_id = ? ORDER BY p.slide_id, p.y, p.x",
                [run],
            ).fetchall()
            return run, list(rows)

        run, rows = self.query(fn)
        return run, rows

    # ------------------------------------------------------------------ replay

    def served_role(self, role: str) -> tuple[str, str] | None:
        """``(backend, model)`` that answered most of ``role``'s calls in the latest run that has any."""
        rows = self.query(lambda con: con.execute(_SERVED_ROLE, [role, role]).fetchall())
        return (str(rows[0][0]), str(rows[0][1] or "")) if rows else None

    # ------------------------------------------------------------------ per-slide figures (benches)

    def slide_patch_labels(self, run_id: str, slide_id: str) -> list[tuple[int, int, str]]:
        """``(x, y, label)`` of every patch row of one slide."""
        sql = "SELECT x, y, label FROM patches WHERE run_id = ? AND slide_id = ?"
        rows = self.query(lambda con: con.execute(sql, [run_id, slide_id]).fetchall())
        return [(int(x), int(y), str(label)) for x, y, label in rows]

    def tissue_focus(self, run_id: str, slide_id: str) -> list[tuple[int, int, str | None]]:
        """``(x, y, focus)`` of the slide's tissue patches."""
        sql = "SELECT x, y, focus FROM patches WHERE run_id = ? AND slide_id = ? AND label = 'tissue'"
        rows = self.query(lambda con: con.execute(sql, [run_id, slide_id]).fetchall())
        return [(int(x), int(y), focus) for x, y, focus in rows]

    def paid_calls(self, run_id: str, slide_id: str) -> dict[str, float]:
        """Calls, tokens and USD of one slide, cache hits excluded."""
        sql = (
            "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cost_usd), 0) FROM calls WHERE run_id = ? AND slide_id = ? AND NOT cache_hit"
        )
        n, tin, tout, usd = self.query(lambda con: con.execute(sql, [run_id, slide_id]).fetchone())
        return {"calls": int(n), "input_tokens": int(tin), "output_tokens": int(tout), "usd": float(usd)}

    def role_calls(self, role: str) -> dict[str, float]:
        """Paid rows of ``role`` (ok, all, USD, unpriced) and its distinct questions (asked, answered)."""
        sql_rows = (
            "SELECT count(*) FILTER (WHERE ok), count(*), coalesce(sum(cost_usd), 0),"
            " count(*) FILTER (WHERE cost_usd IS NULL) FROM calls WHERE role = ? AND NOT cache_hit"
        )
        sql_questions = (
            "SELECT count(DISTINCT request_hash), count(DISTINCT request_hash) FILTER (WHERE ok)"
            " FROM calls WHERE role = ?"
        )

        def fn(con: Any) -> dict[str, float]:
            ok, rows, usd, unpriced = con.execute(sql_rows, [role]).fetchone()
            asked, answered = con.execute(sql_questions, [role]).fetchone()
            return {
                "rows_ok": int(ok), "rows": int(rows), "usd": float(usd), "unpriced_rows": int(unpriced),
                "asked": int(asked), "answered": int(answered),
            }  # fmt: skip

        result: dict[str, float] = self.query(fn)
        return result

    # ------------------------------------------------------------------ per-run figures (benches)

    def slide_statuses(self, run_id: str | None = None) -> dict[str, str]:
        """Slide id -> status, in ``run_id`` or in every run."""
        sql, params = "SELECT slide_id, status FROM slides", []
        if run_id is not None:
            sql, params = sql + " WHERE run_id = ?", [run_id]
        rows = self.query(lambda con: con.execute(sql, params).fetchall())
        return {str(slide): str(status) for slide, status in rows}

    def run_calls(self, run_id: str) -> dict[str, int]:
        """The run's paid calls, paid calls that were answered, and cache hits."""
        sql = (
            "SELECT count(*) FILTER (WHERE NOT cache_hit), count(*) FILTER (WHERE ok AND NOT cache_hit), "
            "count(*) FILTER (WHERE cache_hit) FROM calls WHERE run_id = ?"
        )
        paid, ok, hits = self.query(lambda con: con.execute(sql, [run_id]).fetchone())
        return {"calls_paid": int(paid), "calls_ok_paid": int(ok), "cache_hits": int(hits)}

    def paid_call_starts(self, run_id: str) -> list[datetime]:
        """When each of the run's paid calls started (store time, naive local)."""
        sql = "SELECT started_at FROM calls WHERE run_id = ? AND NOT cache_hit"
        return [row[0] for row in self.query(lambda con: con.execute(sql, [run_id]).fetchall())]

    def stage_backend_calls(self, stage: str, backend: str) -> int:
        """Rows of ``stage`` answered (or attempted) by ``backend``, over every run in the store."""
        sql = "SELECT count(*) FROM calls WHERE stage = ? AND backend = ?"
        return int(self.query(lambda con: con.execute(sql, [stage, backend]).fetchone())[0])

    def classify_calls_by_slide(self, run_id: str) -> list[tuple[str, str, int, int]]:
        """``(slide_id, backend, calls, patches)`` of the run's paid ``classify_patches`` calls."""
        sql = (
            "SELECT slide_id, backend, count(*), sum(len(image_hashes)) FROM calls WHERE run_id = ? "
            "AND stage = 'classify_patches' AND NOT cache_hit GROUP BY slide_id, backend"
        )
        rows = self.query(lambda con: con.execute(sql, [run_id]).fetchall())
        return [(str(s), str(b), int(c), int(p or 0)) for s, b, c, p in rows]


def _pick_run(con: Any, run_id: str | None, audit: str) -> str:
    """The run asked for, else the most recent run that has patch labels."""
    runs = [r[0] for r in con.execute("SELECT DISTINCT run_id FROM patches ORDER BY run_id").fetchall()]
    if not runs:
        raise StoreError(f"audit store {str(audit)!r} has no patch labels; run `tissue-oracle segment` first")
    if run_id is not None:
        if run_id not in runs:
            raise ConfigError(
                f"run {run_id!r} has no patch labels in {str(audit)!r}; runs with labels: {runs}"
            )
        return run_id
    if "runs" in table_names(con):
        row = con.execute(
            "SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM patches) "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            return str(row[0])
    return str(runs[-1])
