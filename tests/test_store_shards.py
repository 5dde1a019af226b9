"""Distributed workers: Parquet shards merged by the coordinator, idempotently."""

from __future__ import annotations

from pathlib import Path

from store_support import call_record, decision_record, patch_records, run_record, slide_record

from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.shards import ShardWriter, merge_shards


def _counts(store: AuditStore) -> dict[str, int]:
    sql = "SELECT count(*) FROM {}"
    return {
        t: store.query(lambda c, t=t: c.execute(sql.format(t)).fetchall()[0][0])
        for t in ("slides", "calls", "decisions", "patches", "merged_shards")
    }


def test_two_workers_merge_once_and_slides_upsert(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    for worker, slides in (("w0", ["a", "b"]), ("w1", ["c"])):
        with ShardWriter(shards, worker) as w:
            for slide in slides:
                w.begin_slide(slide_record(slide))
                for i in range(5):
                    w.record_call(call_record(f"{slide}-{i}", slide_id=slide))
                w.record_decision(decision_record(slide))
                w.record_patches(patch_records(slide, 4))
                w.finish_slide("run-1", slide, status="done")
            assert w.cached_call("a-0" if worker == "w0" else "c-0") is not None
    assert not list(shards.glob(".*.tmp"))

    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        store.begin_run(run_record())
        loaded = merge_shards(store, shards)
        first = _counts(store)
        assert merge_shards(store, shards) == 0  # idempotent
        assert _counts(store) == first
        assert first == {"slides": 3, "calls": 15, "decisions": 3, "patches": 12, "merged_shards": loaded}
        assert store.finished_slides("run-1") == {"a", "b", "c"}
        assert store.cached_call("b-3") is not None

        # slide "a" re-run on another worker: its row and labels are replaced, its history kept
        with ShardWriter(shards, "w2") as w:
            w.begin_slide(slide_record("a"))
            w.record_patches(patch_records("a", 2))
            w.finish_slide("run-1", "a", status="degraded", flags=["budget"])
        merge_shards(store, shards)
        after = _counts(store)
        assert after["slides"] == 3 and after["patches"] == 12 - 4 + 2 and after["calls"] == 15
        status = store.query(lambda c: c.execute("SELECT status FROM slides WHERE slide_id = 'a'").fetchall())
        assert status == [("degraded",)]
