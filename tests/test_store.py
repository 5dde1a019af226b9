"""The DuckDB audit store on real files: schema, cache, slide commits, locking, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
from store_support import (
    call_record,
    decision_record,
    output_record,
    patch_records,
    run_record,
    slide_record,
)

from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.schema import SCHEMA_VERSION, TABLES
from tissue_oracle.tools.errors import StoreError, StoreLockedError
from tissue_oracle.tools.schemas import CallRecorder


def _count(store: AuditStore, table: str, where: str = "TRUE") -> int:
    return store.query(lambda c: c.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0])


def test_fresh_file_is_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    for _ in range(2):
        with AuditStore.open(path):
            pass
    conn = duckdb.connect(str(path), read_only=True)
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
    tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    conn.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert set(TABLES) <= tables


def test_cache_serves_latest_ok_call_before_and_after_flush(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        assert isinstance(store.recorder, CallRecorder)
        store.record_call(call_record("h1", response='"first"'))
        store.record_call(call_record("h1", response='"second"'))
        store.record_call(call_record("h1", ok=False, response='"broken"'))
        store.record_call(call_record("h2", ok=False))
        queued = store.cached_call("h1")  # still in the writer's queue or batch
        assert _count(store, "calls") == 4  # a query sees queued calls without an explicit flush
        stored = store.cached_call("h1")
        assert queued is not None and stored is not None
        assert queued.response_raw == stored.response_raw == '"second"'
        assert stored.image_coords == [[512, 1024, 512, 512]]
        assert store.cached_call("h2") is None
        assert store.cached_call("unknown") is None


def test_slide_records_commit_only_when_the_slide_finishes(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        store.begin_run(run_record())
        store.begin_slide(slide_record("s1"))
        store.record_decision(decision_record("s1"))
        store.record_patches(patch_records("s1", 7))
        store.record_output(output_record("s1"))
        assert _count(store, "patches") == 0
        assert store.finished_slides() == set()
        store.finish_slide("run-1", "s1", status="degraded", flags=["budget"])
        assert _count(store, "patches") == 7
        assert _count(store, "decisions", "recall = 3 AND action = 'refine'") == 1
        assert _count(store, "outputs") == 1
        assert store.finished_slides("run-1") == {"s1"}
        assert store.finished_slides("other-run") == set()
        flags = store.query(lambda c: c.execute("SELECT flags, finished_at FROM slides").fetchall())
        assert flags[0][0] == ["budget"] and flags[0][1] is not None
        store.finish_run("run-1", "finished")
        assert _count(store, "runs", "status = 'finished' AND finished_at IS NOT NULL") == 1


def test_slide_begun_again_replaces_its_labels(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        store.begin_slide(slide_record("s1"))
        store.record_patches(patch_records("s1", 5))
        store.finish_slide("run-1", "s1", status="failed", error="tile decode error")
        store.begin_slide(slide_record("s1"))
        store.record_patches(patch_records("s1", 3))
        store.finish_slide("run-1", "s1", status="done")
        assert _count(store, "patches") == 3
        assert _count(store, "slides") == 1
        assert store.finished_slides() == {"s1"}


def test_sixteen_threads_lose_nothing(tmp_path: Path) -> None:
    per_thread = 300
    with AuditStore.open(tmp_path / "audit.duckdb") as store:

        def work(t: int) -> None:
            for i in range(per_thread):
                store.record_call(call_record(f"{t}-{i}", slide_id=f"s{t}"))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        store.flush()
        assert _count(store, "calls") == 16 * per_thread
        assert _count(store, "(SELECT DISTINCT request_hash FROM calls)") == 16 * per_thread


_HOLDER = """
import sys, time
from tissue_oracle.store.audit_store import AuditStore
store = AuditStore.open(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
store.close()
"""


def test_second_process_gets_a_clear_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        for read_only in (False, True):
            with pytest.raises(StoreLockedError, match=rf"is in use by PID {holder.pid}\b"):
                AuditStore.open(path, read_only=read_only)
    finally:
        holder.communicate("\n", timeout=30)
    with AuditStore.open(path, read_only=True) as store:  # free again once the holder closed
        assert store.finished_slides() == set()


def test_read_only_store_refuses_writes_and_missing_file_is_clear(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    with pytest.raises(StoreError, match="does not exist"):
        AuditStore.open(path, read_only=True)
    AuditStore.open(path).close()
    with AuditStore.open(path, read_only=True) as store, pytest.raises(StoreError, match="read-only"):
        store.record_call(call_record("h"))


def test_same_path_in_one_process_is_shared(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    with AuditStore.open(path) as writer:
        reader = AuditStore.open(path, read_only=True)
        assert reader is writer
        writer.record_call(call_record("h1"))
        reader.close()  # the writer stays open
        assert writer.cached_call("h1") is not None
    with AuditStore.open(path, read_only=True) as reader, pytest.raises(StoreError, match="read-only"):
        AuditStore.open(path)


def test_not_a_duckdb_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"audit\.duckdb"):
        AuditStore.open(path)
