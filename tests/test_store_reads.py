"""``store.reads``: the read queries callers outside store/ use, over a real DuckDB file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from store_support import call_record, patch_records, run_record, slide_record

from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.reads import StoreReads
from tissue_oracle.tools.errors import ConfigError, StoreError


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    path = tmp_path / "audit.duckdb"
    with AuditStore.open(path) as store:
        store.begin_run(run_record())
        for slide in ("s1", "s2"):
            store.begin_slide(slide_record(slide))
        store.record_call(call_record("a", slide_id="s1"))
        store.record_call(call_record("b", slide_id="s1", ok=False, cost=0.0))
        store.record_call(call_record("c", slide_id="s2"))
        store.record_call(call_record("r1", slide_id="s1", stage="review_mask", role="reviewer", cost=0.25))
        store.record_call(call_record("r1", slide_id="s1", stage="review_mask", role="reviewer", cost=0.5))
        store.record_patches(patch_records("s1", 3))
        store.record_patches(patch_records("s2", 2))
        for slide in ("s1", "s2"):
            store.finish_slide("run-1", slide, status="done")
    return path


def test_figures_per_slide_and_role(audit: Path) -> None:
    reads = StoreReads.open_read_only(audit)
    assert reads.slide_patch_labels("run-1", "s1") == [(x, 0, "tissue") for x in (0, 512, 1024)]
    assert reads.tissue_focus("run-1", "s2") == [(0, 0, None), (512, 0, None)]
    paid = reads.paid_calls("run-1", "s1")
    assert paid["calls"] == 4 and paid["input_tokens"] == 4 * 900 and paid["usd"] == pytest.approx(0.751)
    assert sorted(reads.classify_calls_by_slide("run-1")) == [("s1", "openai", 2, 2), ("s2", "openai", 1, 1)]
    reviewer = reads.role_calls("reviewer")
    assert (reviewer["rows"], reviewer["rows_ok"], reviewer["asked"], reviewer["answered"]) == (2, 2, 1, 1)
    assert reviewer["usd"] == pytest.approx(0.75) and reviewer["unpriced_rows"] == 0
    assert reads.slide_statuses() == reads.slide_statuses("run-1") == {"s1": "done", "s2": "done"}
    assert reads.slide_statuses("run-2") == {}
    assert reads.run_calls("run-1") == {"calls_paid": 5, "calls_ok_paid": 4, "cache_hits": 0}
    starts = reads.paid_call_starts("run-1")
    assert len(starts) == 5 and all(isinstance(t, datetime) for t in starts)
    assert reads.stage_backend_calls("classify_patches", "openai") == 3
    assert reads.stage_backend_calls("classify_patches", "classical") == 0


def test_distillation_and_replay_reads(audit: Path) -> None:
    with AuditStore.open(audit, read_only=True) as store:
        held = StoreReads(store.query, str(audit))  # the same answers through a store held open
        assert held.served_role("oracle") == ("openai", "qwen3-vl-8b")
        assert held.served_role("planner") is None
        assert held.labelling_calls("run-1") == [("openai", "qwen3-vl-8b")]
        run, rows = held.patch_label_rows()
    assert run == "run-1" and [r[0] for r in rows] == ["s1"] * 3 + ["s2"] * 2
    assert rows[0][1:] == ("/data/s1.svs", None, 0, 0, 512, "tissue", "zero_shot", 1.0)
    assert StoreReads.open_read_only(audit).patch_label_rows("run-1") == (run, rows)
    with pytest.raises(ConfigError, match="run-2"):
        StoreReads.open_read_only(audit).patch_label_rows("run-2")
    with pytest.raises(StoreError, match="does not exist"):
        StoreReads.open_read_only(audit.with_name("nope.duckdb")).labelling_calls("run-1")
