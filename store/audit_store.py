"""``AuditStore``: the DuckDB audit file of a run, its call recorder, cache and resume state.

One process opens a file for writing; a second gets ``StoreLockedError`` naming the PID that
holds it. Within a process, opening the same path again returns the same store (reference
counted), so a replay source and the run's own store may be one file. All DuckDB work happens on
the store's writer thread (:mod:`tissue_oracle.store.writer`); the methods here only convert
records to scrubbed rows and queue them, so they are cheap and thread-safe.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import re
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import duckdb

from tissue_oracle.store import rows as R
from tissue_oracle.store.call_journal import CallJournal, replay
from tissue_oracle.store.recorder import FINISHED_STATUSES
from tissue_oracle.store.resumed_answers import ResumedAnswers
from tissue_oracle.store.sandbox import READ_SANDBOX, vetted
from tissue_oracle.store.schema import SCHEMA_VERSION, migrate
from tissue_oracle.store.scrub import Scrubber
from tissue_oracle.store.writer import SlideFinish, Writer
from tissue_oracle.tools.errors import StoreError, StoreLockedError
from tissue_oracle.tools.schemas import (
    CallRecord,
    CallRecorder,
    DecisionRecord,
    OutputRecord,
    PatchRecord,
    RunRecord,
    SlideRecord,
)

T = TypeVar("T")
_LOCK_PID = re.compile(r"Conflicting lock is held in (?P<prog>.*?) \(PID (?P<pid>\d+)\)")
_OPEN: dict[Path, AuditStore] = {}
_OPEN_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    """Stop writer threads before the interpreter tears down: a daemon thread killed inside DuckDB
    aborts the process, and queued records would be lost."""
    for store in list(_OPEN.values()):
        store._refs = 1
        with contextlib.suppress(Exception):
            store.close()


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the file, translating DuckDB's errors into the store's (lock held, corrupt, missing)."""
    if read_only and not path.exists():
        raise StoreError(
            f"audit store {str(path)!r} does not exist. Check the path, or run a curation first."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path), read_only=read_only, config=READ_SANDBOX if read_only else {})
    except duckdb.IOException as exc:
        match = _LOCK_PID.search(str(exc))
        if match:
            raise StoreLockedError(
                f"audit store {str(path)!r} is in use by PID {match['pid']} ({match['prog']}). "
                "Wait for that run to finish or stop it, or use another output folder."
            ) from exc
        raise StoreError(f"audit store {str(path)!r} can't be opened: {exc}. Check the file.") from exc
    except duckdb.Error as exc:
        raise StoreError(
            f"audit store {str(path)!r} can't be opened: {exc}. "
            "If it is not a DuckDB file, move it aside and let a new one be created."
        ) from exc


class AuditStore:
    """The audit file. Use :meth:`open`; also a context manager. Implements ``CallRecorder``."""

    def __init__(self, path: Path, conn: duckdb.DuckDBPyConnection, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._refs = 1
        self._closed = False
        self._scrub = Scrubber()
        self._seq = itertools.count(1)
        self._pending_lock = threading.Lock()
        self._pending: dict[str, tuple[int, R.Row]] = {}  # request_hash -> newest unflushed ok call
        self._last_seq = 0
        self._resumed = ResumedAnswers()
        self._journal = None if read_only else CallJournal(path)
        self._writer = Writer(conn, on_calls_flushed=self._forget_flushed)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, path: Path | str, *, read_only: bool = False) -> AuditStore:
        """Open (creating and migrating if needed) the audit file at ``path``.

        Raises ``StoreLockedError`` when another process holds it, ``StoreError`` when it can't
        be read, is newer than this tool, or is asked writable while open read-only here.
        """
        key = Path(path).resolve()
        with _OPEN_LOCK:
            shared = _OPEN.get(key)
            if shared is not None:
                if shared.read_only and not read_only:
                    raise StoreError(
                        f"audit store {str(key)!r} is open read-only in this process; close it before "
                        "opening it for writing."
                    )
                shared._refs += 1
                return shared
            store = cls(key, cls._prepared(key, read_only), read_only=read_only)
            _OPEN[key] = store
            return store

    @staticmethod
    def _prepared(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
        conn = vetted(_connect(path, read_only), path)
        try:
            if read_only:
                row = next(iter(conn.execute("SELECT max(version) FROM schema_version").fetchall()), None)
                version = row[0] if row and row[0] is not None else 0
            else:
                version = migrate(conn)
                replay(conn, path)  # calls a killed run recorded but had not committed
        except duckdb.Error as exc:
            conn.close()
            raise StoreError(f"audit store {str(path)!r} has no readable schema: {exc}") from exc
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"audit store {str(path)!r} has schema version {version}, newer than this tool's "
                f"{SCHEMA_VERSION}. Upgrade tissue-oracle to read it."
            )
        return conn

    def close(self) -> None:
        """Write everything queued, then close the file (the last of the shared opens closes it)."""
        with _OPEN_LOCK:
            if self._closed:
                return
            self._refs -= 1
            if self._refs > 0:
                return
            self._closed = True
            _OPEN.pop(self.path, None)
        self._writer.stop()
        if self._journal is not None:
            self._journal.close()
        self._raise_write_error()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def flush(self) -> None:
        """Write every queued call now (slide records still wait for their slide to finish)."""
        self._writer.submit(lambda conn: None, flush_calls=True)
        self._raise_write_error()

    def _raise_write_error(self) -> None:
        if self._writer.error is not None:
            raise StoreError(
                f"audit store {str(self.path)!r}: a write failed ({self._writer.error}). "
                "Records queued with it were not stored; see the log."
            ) from self._writer.error

    def _check_writable(self) -> None:
        if self.read_only or self._closed:
            state = "read-only" if self.read_only else "closed"
            raise StoreError(f"audit store {str(self.path)!r} is {state}; open it for writing to record.")

    # ----------------------------------------------------------------- calls and cache

    @property
    def recorder(self) -> CallRecorder:
        """The ``CallRecorder`` oracles write to (this store)."""
        return self

    def record_call(self, record: CallRecord) -> None:
        """Queue one call row (scrubbed of secrets). Thread-safe; the write happens within ~2 s."""
        self._check_writable()
        row = R.call_row(record, self._scrub)
        with self._pending_lock:
            seq = self._last_seq = next(self._seq)
            if self._journal is not None:
                self._journal.append(row)  # on disk now; DuckDB gets it with the next batch
            if record.ok:
                self._pending[record.request_hash] = (seq, row)
            self._writer.put_call(seq, row)

    def cached_call(self, request_hash: str) -> CallRecord | None:
        """The most recent ok call with this request hash (queued or stored), or None."""
        with self._pending_lock:
            hit = self._pending.get(request_hash)
        if hit is not None:
            return R.call_from_row(hit[1])
        cols = ", ".join(R.CALL_COLUMNS)
        sql = f"SELECT {cols} FROM calls WHERE request_hash = ? AND ok ORDER BY call_id DESC LIMIT 1"
        # No flush needed: every queued ok call is in _pending, which was checked first.
        row = self._read(lambda conn: next(iter(conn.execute(sql, [request_hash]).fetchall()), None))
        return None if row is None else R.call_from_row(row)

    def resumed_call(self, request_hash: str) -> CallRecord | None:
        """The next answer :meth:`resume_slide` queued for this hash (removed from the queue), or None.
        Oracles ask it before the cache, and also for an ask that skips the cache (a retry)."""
        return self._resumed.take(request_hash)

    def resume_slide(self, run_id: str, slide_id: str) -> int:
        """Queue the answers ``run_id`` already paid for on ``slide_id`` (an interrupted attempt's,
        on resume), to be handed back one per ask (see :mod:`tissue_oracle.store.resumed_answers`).
        Returns how many were queued; a slide begun for the first time has none."""
        cols = ", ".join(R.CALL_COLUMNS)
        sql = (
            f"SELECT {cols} FROM calls WHERE run_id = ? AND slide_id = ? AND ok AND NOT cache_hit "
            "ORDER BY call_id"
        )
        rows = self._read(lambda conn: conn.execute(sql, [run_id, slide_id]).fetchall(), flush_calls=True)
        return self._resumed.add((R.call_from_row(r) for r in rows), run_id=run_id, slide_id=slide_id)

    def _forget_flushed(self, last_seq: int) -> None:
        """Called by the writer once calls up to ``last_seq`` are committed."""
        with self._pending_lock:
            for key in [k for k, (seq, _) in self._pending.items() if seq <= last_seq]:
                del self._pending[key]
            if self._journal is not None and last_seq == self._last_seq:
                self._journal.clear()

    # ----------------------------------------------------------------- runs, slides, records

    def begin_run(self, run: RunRecord) -> None:
        """Record a run as running (a run id begun again, on resume, is set back to running)."""
        self._check_writable()
        self._writer.put("run_begin", R.run_row(run, self._scrub))

    def finish_run(self, run_id: str, status: str) -> None:
        """Set the run's final status (``finished``, ``failed``, ``interrupted``) and end time."""
        self._check_writable()
        self._writer.put("run_finish", (run_id, status, datetime.now()))

    def begin_slide(self, slide: SlideRecord) -> None:
        """Record a slide as started; its records then wait in memory until :meth:`finish_slide`."""
        self._check_writable()
        self._writer.put("slide_begin", R.slide_row(slide, self._scrub))

    def finish_slide(
        self, run_id: str, slide_id: str, *, status: str, error: str | None = None, flags: Iterable[str] = ()
    ) -> None:
        """Commit the slide's decisions, patches, outputs and pending calls with its final status.

        Blocks until the transaction is committed (milliseconds), so a slide reported finished
        survives a ``kill -9`` the moment this returns: resume can trust :meth:`finished_slides`.
        """
        self._check_writable()
        fin = SlideFinish(
            run_id=run_id,
            slide_id=slide_id,
            status=status,
            error=self._scrub(error),
            flags=list(flags),
            finished_at=datetime.now(),
        )
        try:
            self._writer.finish_slide(fin)
        except Exception as exc:
            raise StoreError(
                f"audit store {str(self.path)!r}: slide {slide_id!r} could not be committed ({exc}). "
                "Its records are lost; re-run the slide."
            ) from exc

    def record_decision(self, record: DecisionRecord) -> None:
        self._slide_rows(record.run_id, record.slide_id, "decisions", [R.decision_row(record, self._scrub)])

    def record_patches(self, records: list[PatchRecord]) -> None:
        by_slide: dict[tuple[str, str], list[R.Row]] = {}
        for r in records:
            by_slide.setdefault((r.run_id, r.slide_id), []).append(R.patch_row(r, self._scrub))
        for (run_id, slide_id), rows in by_slide.items():
            self._slide_rows(run_id, slide_id, "patches", rows)

    def record_output(self, record: OutputRecord) -> None:
        self._slide_rows(record.run_id, record.slide_id, "outputs", [R.output_row(record, self._scrub)])

    def _slide_rows(self, run_id: str, slide_id: str, table: str, rows: list[R.Row]) -> None:
        self._check_writable()
        self._writer.put("slide_rows", ((run_id, slide_id), table, rows))

    # ----------------------------------------------------------------- reads

    def query(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(conn)`` on the store's thread and return its result.

        It sees every write queued before it: queued calls are flushed first. Records of a slide
        not yet finished are not visible (they commit with the slide).
        """
        return self._read(fn, flush_calls=True)

    def _read(self, fn: Callable[[duckdb.DuckDBPyConnection], T], *, flush_calls: bool = False) -> T:
        if self._closed:
            raise StoreError(f"audit store {str(self.path)!r} is closed.")
        return self._writer.submit(fn, flush_calls=flush_calls)

    def finished_slides(self, run_id: str | None = None) -> set[str]:
        """Ids of slides whose status is done or degraded (in ``run_id``, or in any run)."""
        marks = ", ".join("?" for _ in FINISHED_STATUSES)
        sql = f"SELECT DISTINCT slide_id FROM slides WHERE status IN ({marks})"
        params: list[object] = list(FINISHED_STATUSES)
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        return {r[0] for r in self._read(lambda conn: conn.execute(sql, params).fetchall())}

    def finished_slide_hashes(self, run_id: str) -> dict[str, str | None]:
        """``slide_id -> file_hash`` (content hash) of the slides ``run_id`` finished (done or degraded)."""
        marks = ", ".join("?" for _ in FINISHED_STATUSES)
        sql = f"SELECT slide_id, file_hash FROM slides WHERE run_id = ? AND status IN ({marks})"
        params: list[object] = [run_id, *FINISHED_STATUSES]
        return {r[0]: r[1] for r in self._read(lambda conn: conn.execute(sql, params).fetchall())}

    def run_policy(self, run_id: str) -> str | None:
        """The canonical policy YAML ``run_id`` was begun under, or None for a run the store lacks."""
        sql = "SELECT policy_yaml FROM runs WHERE run_id = ? LIMIT 1"
        rows = self._read(lambda conn: conn.execute(sql, [run_id]).fetchall())
        return rows[0][0] if rows else None
