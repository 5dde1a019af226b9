"""The single writer: one thread owns the DuckDB connection, and everything reaches it through a queue.

Write path:

- ``calls`` rows are buffered and appended with DuckDB's appender (``Connection.appender``), one
  autocommitted flush at least every ``flush_interval_s`` seconds or ``batch_rows`` rows;
- a slide's ``decisions``, ``patches`` and ``outputs`` rows wait in memory until the slide finishes,
  then go in one transaction together with the pending calls and the slide's final status. So a
  ``kill -9`` loses at most the calls of the last interval and the records of unfinished slides,
  and every slide marked finished has all its rows;
- reads run on the same thread (``submit``), in queue order, so they see every write queued before
  them except calls still in the batch buffer (the store checks those itself).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from tissue_oracle.store.rows import COLUMNS, Row

log = logging.getLogger(__name__)
T = TypeVar("T")
SlideKey = tuple[str, str]
_SLIDE_TABLES = ("decisions", "patches", "outputs")


@dataclass(kw_only=True)
class SlideFinish:
    """The final state of one slide, applied when its records commit."""

    run_id: str
    slide_id: str
    status: str
    error: str | None
    flags: list[str]
    finished_at: datetime


@dataclass(kw_only=True)
class _Pending:
    rows: dict[str, list[Row]] = field(default_factory=lambda: {t: [] for t in _SLIDE_TABLES})


class Writer:
    """Owns ``conn`` on a daemon thread; every public method may be called from any thread."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        flush_interval_s: float = 2.0,
        batch_rows: int = 20_000,
        on_calls_flushed: Callable[[int], None] | None = None,
    ) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._flush_interval_s = flush_interval_s
        self._batch_rows = batch_rows
        self._on_calls_flushed = on_calls_flushed
        self._calls: list[Row] = []
        self._calls_last_seq = 0
        self._slides: dict[SlideKey, _Pending] = {}
        self._appenders: dict[str, Any] = {}
        self._in_transaction = False
        self._flushed_seq: int | None = None
        self.error: BaseException | None = None
        """The first write that failed on the writer thread; the store raises it on flush/close."""
        self._thread = threading.Thread(target=self._loop, name="audit-store-writer", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- producer side

    def put_call(self, seq: int, row: Row) -> None:
        self._queue.put(("call", (seq, row)))

    def put(self, kind: str, payload: Any) -> None:
        """Queue ``run_begin``/``run_finish``/``slide_begin``/``slide_rows``/``slide_finish``."""
        self._queue.put((kind, payload))

    def submit(self, fn: Callable[[duckdb.DuckDBPyConnection], T], *, flush_calls: bool = False) -> T:
        """Run ``fn(conn)`` on the writer thread after everything queued so far; return its result."""
        future: Future[T] = Future()
        self._queue.put(("sync", (fn, flush_calls, future)))
        return future.result()

    def finish_slide(self, fin: SlideFinish) -> None:
        """Commit a slide's records and status; returns once they are durable (raises if not)."""
        self.submit(lambda conn: self._slide_finish(fin))

    def stop(self) -> None:
        """Write everything queued (unfinished slides' records included), close the file, end the thread."""
        done: Future[None] = Future()
        self._queue.put(("stop", done))
        done.result()
        self._thread.join()

    # ----------------------------------------------------------------- writer thread

    def _loop(self) -> None:
        deadline = time.monotonic() + self._flush_interval_s
        while True:
            try:
                kind, payload = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "stop":
                self._guarded(self._drain_unfinished)
                self._guarded(self._flush_calls)
                self._guarded(self._conn.close)
                payload.set_result(None)
                return
            self._handle(kind, payload)
            if len(self._calls) >= self._batch_rows or time.monotonic() >= deadline:
                self._guarded(self._flush_calls)
                deadline = time.monotonic() + self._flush_interval_s

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "call":
            seq, row = payload
            self._calls.append(row)
            self._calls_last_seq = seq
        elif kind == "sync":
            fn, flush_calls, future = payload
            try:
                if flush_calls:
                    self._flush_calls()
                result = fn(self._conn)
                self._conn.complete()  # a half-read result would block the appenders
                future.set_result(result)
            except BaseException as exc:
                future.set_exception(exc)
        elif kind == "slide_rows":
            key, table, rows = payload
            self._slides.setdefault(key, _Pending()).rows[table].extend(rows)
        elif kind != "tick":
            self._guarded(getattr(self, f"_{kind}"), payload)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # keep the thread alive; the store re-raises on flush/close
            log.exception("audit store write failed")
            with contextlib.suppress(duckdb.Error):  # when no transaction was open
                self._conn.execute("ROLLBACK")
            self.error = self.error or exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._flushed_seq = None
            raise
        finally:
            self._in_transaction = False
        self._conn.execute("COMMIT")
        if self._flushed_seq is not None and self._on_calls_flushed is not None:
            self._on_calls_flushed(self._flushed_seq)  # only once the rows are committed
        self._flushed_seq = None

    def _appender(self, table: str) -> Any:
        if table not in self._appenders:
            self._appenders[table] = self._conn.appender(table, columns=COLUMNS[table])
        return self._appenders[table]

    def _append(self, table: str, rows: list[Row]) -> None:
        if rows:
            appender = self._appender(table)
            try:
                appender.append_rows(rows)
                appender.flush()
            except Exception:
                appender.clear()
                raise

    def _flush_calls(self) -> None:
        rows, self._calls = self._calls, []
        self._append("calls", rows)
        if rows and self._in_transaction:
            self._flushed_seq = self._calls_last_seq
        elif rows and self._on_calls_flushed is not None:
            self._on_calls_flushed(self._calls_last_seq)

    def _run_begin(self, row: Row) -> None:
        run_id = row[0]
        found = self._conn.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()
        if found[0][0]:
            self._conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?", [run_id]
            )
        else:
            self._append("runs", [row])

    def _run_finish(self, payload: tuple[str, str, datetime]) -> None:
        run_id, status, finished_at = payload
        self._guarded(self._flush_calls)  # a failed flush must not leave the run 'running'
        self._conn.execute(
            "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", [status, finished_at, run_id]
        )

    def _slide_begin(self, row: Row) -> None:
        # A slide begun again in the same run replaces its final labels and outputs (they are about to
        # be rewritten); its calls and decisions stay, as the audit trail of the earlier attempt.
        key = [row[0], row[1]]
        self._slides.pop((row[0], row[1]), None)
        with self._transaction():
            for table in ("slides", "patches", "outputs"):
                self._conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND slide_id = ?", key)
            self._append("slides", [row])

    def _slide_finish(self, fin: SlideFinish) -> None:
        """Commit the slide; if that fails, keep its calls and record the slide as failed, then raise."""
        calls = list(self._calls)
        try:
            self._commit_slide(fin)
        except Exception as exc:
            log.exception("slide %r could not be committed", fin.slide_id)
            self._reset_appenders()
            self._calls = calls
            self._guarded(self._flush_calls)  # the paid calls are kept (and the journal has them)
            why = f"its records could not be stored ({type(exc).__name__}: {exc}); they were dropped"
            error = f"{fin.error}; {why}" if fin.error else why
            failed = SlideFinish(
                run_id=fin.run_id, slide_id=fin.slide_id, status="failed",
                error=error, flags=fin.flags, finished_at=fin.finished_at,
            )  # fmt: skip
            self._guarded(self._commit_slide, failed)
            raise

    def _reset_appenders(self) -> None:
        for appender in self._appenders.values():
            with contextlib.suppress(Exception):
                appender.close()
        self._appenders.clear()

    def _commit_slide(self, fin: SlideFinish) -> None:
        pending = self._slides.pop((fin.run_id, fin.slide_id), _Pending())
        with self._transaction():
            self._flush_calls()
            for table in _SLIDE_TABLES:
                self._append(table, pending.rows[table])
            changed = self._conn.execute(
                "UPDATE slides SET status = ?, error = ?, flags = ?, finished_at = ? "
                "WHERE run_id = ? AND slide_id = ? RETURNING 1",
                [fin.status, fin.error, fin.flags, fin.finished_at, fin.run_id, fin.slide_id],
            ).fetchall()
            if not changed:  # finished without begin_slide: keep what we know
                row = (fin.run_id, fin.slide_id, None, None, None, None, None, None)
                self._append("slides", [(*row, fin.status, fin.error, fin.flags, None, fin.finished_at)])

    def _drain_unfinished(self) -> None:
        """On a clean close, records of slides that never finished are written as they are."""
        for key in list(self._slides):
            pending = self._slides.pop(key)
            with self._transaction():
                for table in _SLIDE_TABLES:
                    self._append(table, pending.rows[table])
