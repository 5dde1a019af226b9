"""The ``AuditRecorder`` contract, run over both implementations: the DuckDB store and memory.

Each case is written once against the protocol; ``Impl`` only says how to read back what was
recorded (SQL on the store, lists in memory), so a behaviour one implementation drifts from
fails here for that implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from store_support import call_record, decision_record, output_record, patch_records, run_record, slide_record

from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.store.recorder import AuditRecorder


@dataclass(kw_only=True)
class Impl:
    """One implementation under test and how to count what it holds for a slide."""

    recorder: AuditRecorder
    count: Callable[[str, str], int]
    """(table, slide_id) -> rows held (decisions, patches, outputs)."""
    slide_status: Callable[[str], str | None]
    run_status: Callable[[str], str | None]


def _store_impl(path: Path) -> tuple[Impl, Callable[[], None]]:
    store = AuditStore.open(path)

    def one(sql: str, *params: str) -> Any:
        rows = store.query(lambda conn: conn.execute(sql, list(params)).fetchall())
        return rows[0][0] if rows else None

    def count(table: str, slide_id: str) -> int:
        return int(one(f"SELECT count(*) FROM {table} WHERE slide_id = ?", slide_id))

    impl = Impl(
        recorder=store,
        count=count,
        slide_status=lambda sid: one("SELECT status FROM slides WHERE slide_id = ?", sid),
        run_status=lambda rid: one("SELECT status FROM runs WHERE run_id = ?", rid),
    )
    return impl, store.close


def _memory_impl(_: Path) -> tuple[Impl, Callable[[], None]]:
    memory = MemoryRecorder()

    def count(table: str, slide_id: str) -> int:
        held = {"decisions": memory.decisions, "patches": memory.patches, "outputs": memory.outputs}[table]
        return sum(r.slide_id == slide_id for r in held)

    impl = Impl(
        recorder=memory,
        count=count,
        slide_status=lambda sid: next((s.status for (_, i), s in memory.slides.items() if i == sid), None),
        run_status=lambda rid: memory.runs[rid].status if rid in memory.runs else None,
    )
    return impl, lambda: None


@pytest.fixture(params=[_store_impl, _memory_impl], ids=["AuditStore", "MemoryRecorder"])
def impl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Impl]:
    made, close = request.param(tmp_path / "audit.duckdb")
    try:
        yield made
    finally:
        close()


def test_both_implement_the_protocol(impl: Impl) -> None:
    assert isinstance(impl.recorder, AuditRecorder)


def test_cache_serves_the_latest_successful_call_only(impl: Impl) -> None:
    r = impl.recorder
    assert r.cached_call("h1") is None
    r.record_call(call_record("h1", response='{"label": "tissue"}'))
    r.record_call(call_record("h1", response='{"label": "background"}'))
    r.record_call(call_record("h1", ok=False, response=""))
    r.record_call(call_record("h2", ok=False, response=""))
    hit = r.cached_call("h1")
    assert hit is not None and hit.response_raw == '{"label": "background"}'
    assert r.cached_call("h2") is None


def test_a_resumed_slide_gets_its_paid_answers_back_one_per_ask_cache_or_not(impl: Impl) -> None:
    r = impl.recorder
    # The interrupted attempt: a box answer, then the same request asked again past the cache (a
    # retry after a rejected answer), answered differently; a failed try; other runs and slides.
    r.record_call(call_record("box", response='{"n": 1}'))
    r.record_call(call_record("box", ok=False, response=""))
    r.record_call(call_record("box", response='{"n": 2}'))
    r.record_call(call_record("box", response='{"n": 9}').model_copy(update={"cache_hit": True}))
    r.record_call(call_record("box", run_id="other-run", response='{"n": 3}'))
    r.record_call(call_record("box", slide_id="s2", response='{"n": 4}'))
    assert r.resumed_call("box") is None  # nothing is handed back before a slide is resumed
    assert r.resume_slide("run-1", "s1") == 2
    latest = r.cached_call("box")  # the cache is untouched by the queue: the newest answer
    assert latest is not None and latest.response_raw == '{"n": 4}'
    first, second = r.resumed_call("box"), r.resumed_call("box")
    assert first is not None and first.response_raw == '{"n": 1}'
    assert second is not None and second.response_raw == '{"n": 2}'
    assert r.resumed_call("box") is None  # each paid answer is handed back once
    assert r.resume_slide("run-1", "never-begun") == 0


def test_a_slide_finished_done_or_degraded_is_finished_and_failed_is_not(impl: Impl) -> None:
    r = impl.recorder
    r.begin_run(run_record("run-1"))
    assert impl.run_status("run-1") == "running"
    for sid, status in [("a", "done"), ("b", "degraded"), ("c", "failed")]:
        r.begin_slide(slide_record(sid))
        assert impl.slide_status(sid) == "running"
        r.record_decision(decision_record(sid))
        r.record_patches(patch_records(sid, 3))
        r.record_output(output_record(sid))
        r.finish_slide("run-1", sid, status=status, flags=["needs_human_review"])
        assert impl.slide_status(sid) == status
        assert (impl.count("decisions", sid), impl.count("patches", sid), impl.count("outputs", sid)) == (
            1,
            3,
            1,
        )
    r.begin_slide(slide_record("d"))  # never finished
    assert r.finished_slides("run-1") == {"a", "b"}
    assert r.finished_slides("another-run") == set()
    assert r.finished_slides() == {"a", "b"}
    r.finish_run("run-1", "finished")
    assert impl.run_status("run-1") == "finished"


def test_a_slide_begun_again_replaces_its_labels_and_outputs(impl: Impl) -> None:
    r = impl.recorder
    r.begin_run(run_record("run-1"))
    r.begin_slide(slide_record("s1"))
    r.record_patches(patch_records("s1", 5))
    r.record_output(output_record("s1"))
    r.finish_slide("run-1", "s1", status="failed", error="boom")
    r.begin_slide(slide_record("s1"))
    r.record_patches(patch_records("s1", 2))
    r.finish_slide("run-1", "s1", status="done")
    assert (impl.count("patches", "s1"), impl.count("outputs", "s1")) == (2, 0)
    assert r.finished_slides("run-1") == {"s1"}


def test_a_run_begun_again_is_running_again(impl: Impl) -> None:
    r = impl.recorder
    r.begin_run(run_record("run-1"))
    r.finish_run("run-1", "interrupted")
    r.begin_run(run_record("run-1"))
    assert impl.run_status("run-1") == "running"


def test_resume_reads_finished_content_hashes_and_the_run_policy(impl: Impl) -> None:
    r = impl.recorder
    assert r.run_policy("run-1") is None
    r.begin_run(run_record("run-1"))
    assert r.run_policy("run-1") == "review_threshold: 2\n"
    for sid, status in [("a", "done"), ("b", "failed")]:
        r.begin_slide(slide_record(sid).model_copy(update={"file_hash": f"sha256:{sid}"}))
        r.finish_slide("run-1", sid, status=status)
    assert r.finished_slide_hashes("run-1") == {"a": "sha256:a"}
    assert r.finished_slide_hashes("other") == {}
