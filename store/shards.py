"""Distributed workers: each writes Parquet shards; the coordinator merges them into ``audit.duckdb``.

Why shards: a DuckDB file has one writer process, and workers on other machines may not even
share a disk with it. So each worker records into a :class:`ShardWriter`, which writes
``<table>-<worker>-<n>.parquet`` files into a shared folder (or one shipped back with the
results), and the coordinator calls :func:`merge_shards` as they arrive and once at the end.

- A shard file appears atomically (written under a temporary name, then renamed), so the
  coordinator never loads half a file. A worker killed mid-run loses only what it had not yet
  written; every shard already on disk is whole.
- Calls are written every ``flush_interval_s`` seconds, and a slide's rows (its final ``slides``
  row, decisions, patches, outputs and its pending calls) when the slide finishes.
- Merging is idempotent: ``merged_shards`` remembers each file's name and sha256, so merging the
  same folder twice loads nothing twice. Slide rows are upserted (a slide re-run elsewhere
  replaces its earlier row, labels and outputs), everything else is appended.
- A worker's cache holds the calls it made itself; for the run's whole cache, give workers a
  read-only copy of an earlier ``audit.duckdb`` as a replay or cache source.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import duckdb

from tissue_oracle.store import rows as R
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.resumed_answers import ResumedAnswers
from tissue_oracle.store.schema import TABLES, migrate
from tissue_oracle.store.scrub import Scrubber
from tissue_oracle.tools.hashing import sha256_file
from tissue_oracle.tools.schemas import (
    CallRecord,
    CallRecorder,
    DecisionRecord,
    OutputRecord,
    PatchRecord,
    SlideRecord,
)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


class ShardWriter:
    """A worker's recorder: the ``AuditStore`` record API, written as Parquet shards to ``shard_dir``."""

    def __init__(self, shard_dir: Path, worker: str, *, flush_interval_s: float = 2.0) -> None:
        if not worker.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"worker name {worker!r} must be letters, digits, '-' or '_'")
        self.shard_dir = shard_dir
        self.worker = worker
        self._flush_interval_s = flush_interval_s
        self._scrub = Scrubber()
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._calls: list[R.Row] = []
        self._slides: dict[tuple[str, str], dict[str, list[R.Row]]] = {}
        self._started: dict[tuple[str, str], R.Row] = {}
        self._cache: dict[str, CallRecord] = {}
        self._seeded: list[CallRecord] = []
        self._resumed = ResumedAnswers()
        self._last_flush = time.monotonic()
        self._conn = duckdb.connect(":memory:")
        migrate(self._conn)
        shard_dir.mkdir(parents=True, exist_ok=True)

    @property
    def recorder(self) -> CallRecorder:
        return self

    def record_call(self, record: CallRecord) -> None:
        row = R.call_row(record, self._scrub)
        with self._lock:
            self._calls.append(row)
            if record.ok:
                self._cache[record.request_hash] = R.call_from_row(row)
            if time.monotonic() - self._last_flush >= self._flush_interval_s:
                self._write({"calls": self._take_calls()})

    def cached_call(self, request_hash: str) -> CallRecord | None:
        with self._lock:
            return self._cache.get(request_hash)

    def resumed_call(self, request_hash: str) -> CallRecord | None:
        """The next answer the interrupted attempt paid for with this hash, even for a question
        asked without the cache (a retry): so a resumed slide pays again only what was in flight."""
        return self._resumed.take(request_hash)

    def seed_cache(self, records: Iterable[CallRecord]) -> None:
        """Answer these earlier ok calls from the cache (the coordinator's, for this slide)."""
        with self._lock:
            for r in records:
                if r.ok:
                    self._cache[r.request_hash] = r
                    self._seeded.append(r)

    def resume_slide(self, run_id: str, slide_id: str) -> int:
        """Hand back the seeded calls ``run_id`` paid for on ``slide_id``, one per ask (see
        :mod:`tissue_oracle.store.resumed_answers`); returns how many are queued."""
        with self._lock:
            seeded = list(self._seeded)
        return self._resumed.add(seeded, run_id=run_id, slide_id=slide_id)

    def begin_slide(self, slide: SlideRecord) -> None:
        with self._lock:
            self._started[(slide.run_id, slide.slide_id)] = R.slide_row(slide, self._scrub)

    def record_decision(self, record: DecisionRecord) -> None:
        self._add(record.run_id, record.slide_id, "decisions", [R.decision_row(record, self._scrub)])

    def record_patches(self, records: list[PatchRecord]) -> None:
        for r in records:
            self._add(r.run_id, r.slide_id, "patches", [R.patch_row(r, self._scrub)])

    def record_output(self, record: OutputRecord) -> None:
        self._add(record.run_id, record.slide_id, "outputs", [R.output_row(record, self._scrub)])

    def _add(self, run_id: str, slide_id: str, table: str, rows: list[R.Row]) -> None:
        with self._lock:
            self._slides.setdefault((run_id, slide_id), {}).setdefault(table, []).extend(rows)

    def finish_slide(
        self, run_id: str, slide_id: str, *, status: str, error: str | None = None, flags: Iterable[str] = ()
    ) -> None:
        """Write the slide's final row, its records and all pending calls as one set of shards."""
        with self._lock:
            key = (run_id, slide_id)
            start = self._started.pop(key, None) or (run_id, slide_id, *([None] * 9), None, None)
            slide = (*start[:8], status, self._scrub(error), list(flags), start[11], datetime.now())
            tables = {"slides": [slide], **self._slides.pop(key, {}), "calls": self._take_calls()}
            self._write(tables)

    def close(self) -> None:
        """Write what is left (unfinished slides' records as they are) and release the buffer."""
        with self._lock:
            tables: dict[str, list[R.Row]] = {"calls": self._take_calls()}
            for pending in self._slides.values():
                for table, rows in pending.items():
                    tables.setdefault(table, []).extend(rows)
            self._slides.clear()
            self._write(tables)
            self._conn.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_calls(self) -> list[R.Row]:
        rows, self._calls = self._calls, []
        self._last_flush = time.monotonic()
        return rows

    def _write(self, tables: dict[str, list[R.Row]]) -> None:
        """One shard per non-empty table, each renamed into place only when complete."""
        n = next(self._counter)
        for table, rows in tables.items():
            if not rows:
                continue
            appender = self._conn.appender(table, columns=R.COLUMNS[table])
            appender.append_rows(rows)
            appender.flush()
            final = self.shard_dir / f"{table}-{self.worker}-{n:06d}.parquet"
            tmp = final.with_name(f".{final.name}.tmp")
            cols = ", ".join(R.COLUMNS[table])
            self._conn.execute(f"COPY (SELECT {cols} FROM {table}) TO {_literal(tmp)} (FORMAT parquet)")
            self._conn.execute(f"DELETE FROM {table}")
            os.replace(tmp, final)


def merge_shards(store: AuditStore, shard_dir: Path) -> int:
    """Load every shard in ``shard_dir`` not merged before into ``store``; return how many were loaded.

    Each shard loads in its own transaction together with its ``merged_shards`` row, so a crash
    mid-merge leaves each shard either fully merged or not at all.
    """
    store.flush()
    shards = sorted((key, p) for p in shard_dir.glob("*-*-*.parquet") if (key := _shard_key(p)) is not None)
    pending = [(p, sha256_file(p)) for _, p in shards]
    return store.query(lambda conn: sum(_merge_one(conn, path, digest) for path, digest in pending))


def _shard_key(path: Path) -> tuple[str, int, int] | None:
    """(worker, set number, table order): a set's ``slides`` shard loads before its patches and outputs."""
    head, _, number = path.name.removesuffix(".parquet").rpartition("-")
    table, _, worker = head.partition("-")
    if table not in TABLES or not worker or not number.isdigit():
        return None
    return (worker, int(number), TABLES.index(table))


def _merge_one(conn: duckdb.DuckDBPyConnection, path: Path, digest: str) -> int:
    seen = conn.execute("SELECT count(*) FROM merged_shards WHERE sha256 = ?", [digest]).fetchall()
    if seen[0][0]:
        return 0
    table = path.name.split("-", 1)[0]
    cols = ", ".join(R.COLUMNS[table])
    source = f"read_parquet({_literal(path)})"
    conn.execute("BEGIN TRANSACTION")
    try:
        if table == "slides":  # upsert: a slide finished again replaces its row, labels and outputs
            for replaced in ("slides", "patches", "outputs"):
                keys = f"SELECT run_id, slide_id FROM {source}"
                conn.execute(f"DELETE FROM {replaced} WHERE (run_id, slide_id) IN ({keys})")
        count = conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source}").fetchall()[0][0]
        conn.execute(
            "INSERT INTO merged_shards (name, sha256, rows) VALUES (?, ?, ?)", [path.name, digest, count]
        )
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return 1
