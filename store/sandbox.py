"""An audit file may be hostile: how it is opened for reading, and how a user's SQL runs on it.

DuckDB's own guidance (duckdb.org, "Securing DuckDB") is to treat SQL like code: an
``audit sql`` query, or a view stored in a crafted ``audit.duckdb``, can otherwise read any file
(``read_text('/etc/shadow')``, ``read_csv``, ``glob``), attach other databases or load extensions.

- Read-only opens use ``READ_SANDBOX``: external access off (no file, glob, attach or network),
  extension autoload and autoinstall off, and the configuration locked, so a query can't turn
  any of it back on (``SET`` fails with "the configuration has been locked").
- ``audit sql`` gets its own connection with ``QUERY_LIMITS`` too (memory and threads) and a
  wall-clock bound: ``interrupt_after`` calls ``Connection.interrupt()`` from a timer thread.
- Every open, read-only or writable, first calls ``refuse_crafted``: a store this tool wrote has
  no views and no macros, so a file holding any is refused before a single table is read. The
  writable store can't run with external access off (shard merging reads Parquet files), so
  this check is what keeps a crafted store's views from running there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from tissue_oracle.store.queries import Table, run_sql
from tissue_oracle.tools.errors import ConfigError, StoreError

READ_SANDBOX: dict[str, Any] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "lock_configuration": True,
}
#: Bounds for one ``audit sql`` query (beside its wall-clock timeout).
QUERY_LIMITS: dict[str, Any] = {"memory_limit": "1GB", "threads": 2}


def refuse_crafted(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Raise ``StoreError`` when the file holds views or macros (our stores never do).

    Reads only DuckDB's catalog (``duckdb_views()``, ``duckdb_functions()``), which never runs a
    view's query.
    """
    views = [r[0] for r in conn.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
    macros = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE NOT internal AND function_type IN ('macro', 'table_macro')"
        ).fetchall()
    ]
    if views or macros:
        found = ", ".join([*(f"view {v!r}" for v in views), *(f"macro {m!r}" for m in macros)][:8])
        raise StoreError(
            f"audit store {str(path)!r} holds {found}: an audit store written by tissue-oracle has no "
            "views or macros, so this file was made by something else (a view can read files when "
            "queried). Refusing to open it; inspect it with DuckDB's -safe mode or delete it."
        )


@contextlib.contextmanager
def interrupt_after(conn: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[threading.Event]:
    """Interrupt whatever ``conn`` runs once ``seconds`` have passed; the yielded event is set if it fired."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        conn.interrupt()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def vetted(conn: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyConnection:
    """``conn`` once ``refuse_crafted`` has passed; closed (and the error raised) otherwise."""
    try:
        refuse_crafted(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def open_read_only(path: Path, *, bounded: bool = False) -> duckdb.DuckDBPyConnection:
    """A read-only, sandboxed connection (``bounded``: plus ``QUERY_LIMITS``); ``StoreError`` if it fails."""
    if not path.is_file():
        raise StoreError(
            f"audit store {str(path)!r} does not exist. Check the path (--db / --audit): pass the "
            "audit.duckdb a run wrote."
        )
    config = {**(QUERY_LIMITS if bounded else {}), **READ_SANDBOX}
    try:
        conn = duckdb.connect(str(path), read_only=True, config=config)
    except duckdb.Error as exc:
        raise StoreError(
            f"audit store {str(path)!r} can't be opened read-only: {exc}. Is it a DuckDB file a run wrote?"
        ) from exc
    return vetted(conn, path)


def run_user_sql(path: Path, sql: str, params: list[Any], *, timeout_s: float) -> Table:
    """``queries.run_sql`` on a bounded ``open_read_only`` connection, stopped after ``timeout_s``."""
    conn = open_read_only(path, bounded=True)
    try:
        with interrupt_after(conn, timeout_s) as fired:
            try:
                return run_sql(conn, sql, params)
            except ConfigError as exc:
                if not fired.is_set():
                    raise
                raise ConfigError(
                    f"the query was stopped after {timeout_s:g} s (--timeout-s). Narrow it with WHERE "
                    "or LIMIT, or allow it more time."
                ) from exc
    finally:
        conn.close()
