"""kill -9 in the middle of a run: the file opens afterwards and every finished slide is whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tissue_oracle.store.audit_store import AuditStore

PATCHES_PER_SLIDE = 40

# Writes slides forever: calls, a decision, patches, then finish_slide; prints each finished slide
# only after finish_slide has returned. Between slides it keeps recording calls (in flight).
CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from store_support import call_record, decision_record, patch_records, run_record, slide_record
from tissue_oracle.store.audit_store import AuditStore

store = AuditStore.open(sys.argv[1])
store.begin_run(run_record())
n = 0
while True:
    slide = f"s{n}"
    store.begin_slide(slide_record(slide))
    for i in range(200):
        store.record_call(call_record(f"{slide}-{i}", slide_id=slide))
    store.record_decision(decision_record(slide))
    store.record_patches(patch_records(slide, int(sys.argv[3])))
    store.finish_slide("run-1", slide, status="done")
    print(slide, flush=True)
    n += 1
"""


def test_kill_9_keeps_finished_slides_and_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    tests_dir = str(Path(__file__).parent)
    args = [sys.executable, "-c", CHILD, str(path), tests_dir, str(PATCHES_PER_SLIDE)]
    reported: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            while len(reported) < 8:
                line = child.stdout.readline().strip()
                assert line, f"writer exited early with {child.poll()}"
                reported.append(line)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with AuditStore.open(path) as store:  # writable: replays the WAL, like a resumed run
        finished = store.finished_slides("run-1")
        per_slide = dict(
            store.query(
                lambda c: c.execute("SELECT slide_id, count(*) FROM patches GROUP BY slide_id").fetchall()
            )
        )
        calls = dict(
            store.query(
                lambda c: c.execute("SELECT slide_id, count(*) FROM calls GROUP BY slide_id").fetchall()
            )
        )
        decisions = store.query(
            lambda c: c.execute("SELECT count(DISTINCT slide_id) FROM decisions").fetchall()
        )
    assert set(reported) <= finished
    assert all(per_slide[s] == PATCHES_PER_SLIDE for s in finished)
    assert all(calls[s] == 200 for s in finished)  # a finished slide's calls commit with it
    assert decisions[0][0] == len(finished)
    assert set(per_slide) == finished  # an unfinished slide left no labels behind


# Records calls one by one and prints each request hash after record_call has returned; never
# finishes a slide, so nothing forces a batch commit before the kill.
RECORDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from store_support import call_record, run_record
from tissue_oracle.store.audit_store import AuditStore

store = AuditStore.open(sys.argv[1])
store.begin_run(run_record())
store.flush()
for i in range(100000):
    store.record_call(call_record(f"paid-{i}", slide_id="s1"))
    print(f"paid-{i}", flush=True)
    time.sleep(0.01)
"""


def test_kill_9_loses_no_recorded_call(tmp_path: Path) -> None:
    """Every call row recorded before a kill -9 is in the store afterwards (the call journal)."""
    path = tmp_path / "audit.duckdb"
    args = [sys.executable, "-c", RECORDER, str(path), str(Path(__file__).parent)]
    recorded: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            while len(recorded) < 30:
                line = child.stdout.readline().strip()
                assert line, f"recorder exited early with {child.poll()}"
                recorded.append(line)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    with AuditStore.open(path) as store:
        stored = {r[0] for r in store.query(lambda c: c.execute("SELECT request_hash FROM calls").fetchall())}
        assert set(recorded) <= stored
        assert store.cached_call(recorded[-1]) is not None  # a resumed run would not pay for it again
    with AuditStore.open(path) as store:  # replayed once: a second open adds nothing
        count = store.query(lambda c: c.execute("SELECT count(*) FROM calls").fetchall())[0][0]
    assert count == len(stored)


def test_a_slide_whose_records_cant_be_stored_is_a_recorded_failure(tmp_path: Path) -> None:
    """A commit that fails (a number too big for BIGINT) keeps the slide's paid calls, records the
    slide as failed with the reason, and leaves the run finishable."""
    import pytest
    from store_support import call_record, decision_record, run_record, slide_record

    from tissue_oracle.tools.errors import StoreError

    path = tmp_path / "audit.duckdb"
    with AuditStore.open(path) as store:
        store.begin_run(run_record())
        store.begin_slide(slide_record("s1"))
        store.record_call(call_record("paid-1", slide_id="s1"))
        store.record_decision(decision_record("s1").model_copy(update={"budget_left_tokens": 10**23}))
        with pytest.raises(StoreError, match="s1"):
            store.finish_slide("run-1", "s1", status="done")
        store.begin_slide(slide_record("s2"))
        store.finish_slide("run-1", "s2", status="done")
        store.finish_run("run-1", "finished")
    with AuditStore.open(path, read_only=True) as store:
        slides = dict(store.query(lambda c: c.execute("SELECT slide_id, status FROM slides").fetchall()))
        error = store.query(lambda c: c.execute("SELECT error FROM slides WHERE slide_id = 's1'").fetchall())[
            0
        ][0]
        calls = store.query(lambda c: c.execute("SELECT request_hash FROM calls").fetchall())
        run = store.query(lambda c: c.execute("SELECT status FROM runs").fetchall())
    assert slides == {"s1": "failed", "s2": "done"} and "could not be stored" in error
    assert calls == [("paid-1",)] and run == [("finished",)]
