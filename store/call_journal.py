"""The call journal: every ``calls`` row is on disk the moment it is recorded, before DuckDB has it.

The store's writer appends calls to DuckDB in batches (every ~2 s) because a commit per call
would cost more than the call. A ``kill -9`` between a paid answer and the next batch used to
lose that row, and a resumed run then paid for the same question again. So each row is also
appended to ``<store>.calls.journal`` (one JSON line, one ``os.write`` on an ``O_APPEND`` file:
it reaches the kernel's page cache, which outlives the process; only a machine crash can lose
it). Opening the store replays lines whose rows are not in ``calls`` yet, then empties the
journal; while the run goes on, the journal is emptied whenever every row written to it has been
committed (at least once per finished slide).

A torn last line (the process died inside ``write``) is skipped: that call was not answered to
the run yet, so nothing paid was recorded by it.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from tissue_oracle.store.rows import CALL_COLUMNS, Row

_TIME_COLUMNS = frozenset({"started_at"})
#: Columns that identify one attempt's row, for replay without duplicates.
_KEY = ("run_id", "slide_id", "request_hash", "attempt", "started_at")


def journal_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".calls.journal")


class CallJournal:
    """Append-only JSON lines of call rows beside the store file; thread-safe per call."""

    def __init__(self, store_path: Path) -> None:
        self.path = journal_path(store_path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, row: Row) -> None:
        record = {
            col: (value.isoformat() if isinstance(value, datetime) else value)
            for col, value in zip(CALL_COLUMNS, row, strict=True)
        }
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())

    def clear(self) -> None:
        """Empty the journal (every row in it is committed to DuckDB)."""
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def replay(conn: duckdb.DuckDBPyConnection, store_path: Path) -> int:
    """Insert journal rows missing from ``calls`` (one transaction), empty the journal; rows added."""
    path = journal_path(store_path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
            rows.append(tuple(_value(col, record[col]) for col in CALL_COLUMNS))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    added = 0
    conn.execute("BEGIN TRANSACTION")
    try:
        key_sql = " AND ".join(f"{c} IS NOT DISTINCT FROM ?" for c in _KEY)
        index = [CALL_COLUMNS.index(c) for c in _KEY]
        cols = ", ".join(CALL_COLUMNS)
        marks = ", ".join("?" for _ in CALL_COLUMNS)
        for row in rows:
            found = conn.execute(
                f"SELECT count(*) FROM calls WHERE {key_sql}", [row[i] for i in index]
            ).fetchall()
            if not found[0][0]:
                conn.execute(f"INSERT INTO calls ({cols}) VALUES ({marks})", list(row))
                added += 1
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    os.truncate(path, 0)
    return added


def _value(column: str, value: Any) -> Any:
    if column in _TIME_COLUMNS and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value
