"""Per-slide lock files: one holder, stale locks of dead or reused pids broken, no double take-over."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from scale_support import dead_pid

from tissue_oracle.agent.slide_lock import LockOwner, SlideLock, clear_stale_locks


def test_one_holder_at_a_time_and_release_frees_it(tmp_path: Path) -> None:
    first, second = SlideLock(tmp_path, "s1"), SlideLock(tmp_path, "s1")
    assert first.acquire()
    assert not second.acquire()  # a live owner (this very process) holds it
    assert second.holder() == first.owner
    first.release()
    assert not first.path.exists()
    assert second.acquire()
    second.release()


def test_a_dead_owners_lock_is_broken(tmp_path: Path) -> None:
    lock = SlideLock(tmp_path, "s2")
    dead = LockOwner(pid=dead_pid(), host=lock.owner.host, started=time.time() - 5, token="dead")
    lock.path.write_text(dead.to_json())
    assert lock.acquire()
    assert lock.holder() == lock.owner


def test_a_reused_pid_does_not_keep_the_lock(tmp_path: Path) -> None:
    """Same pid as a live process but another start time: the original owner is gone."""
    lock = SlideLock(tmp_path, "s3")
    me = LockOwner.me()
    reused = LockOwner(pid=os.getpid(), host=me.host, started=me.started - 3600, token="old")
    lock.path.write_text(reused.to_json())
    assert lock.acquire()


def test_another_hosts_lock_is_stale_only_after_its_lease(tmp_path: Path) -> None:
    remote = LockOwner(pid=1, host="some-other-host", started=0.0, token="remote")
    lock = SlideLock(tmp_path, "s4", lease_s=60)
    lock.path.write_text(remote.to_json())
    assert not lock.acquire()  # fresh: it may be alive
    old = time.time() - 120
    os.utime(lock.path, (old, old))
    assert lock.acquire()


def test_many_workers_breaking_one_stale_lock_leave_exactly_one_holder(tmp_path: Path) -> None:
    dead = LockOwner(pid=dead_pid(), host=LockOwner.me().host, started=1.0, token="dead")
    for _round in range(20):
        (tmp_path / "s5.lock").write_text(dead.to_json())
        locks = [SlideLock(tmp_path, "s5") for _ in range(8)]
        won: list[SlideLock] = []
        barrier = threading.Barrier(len(locks))

        def take(lock: SlideLock, won: list[SlideLock] = won, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            if lock.acquire():
                won.append(lock)

        threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {_round}: {len(won)} holders"
        assert won[0].holder() == won[0].owner
        won[0].release()


def test_release_never_removes_someone_elses_lock(tmp_path: Path) -> None:
    mine = SlideLock(tmp_path, "s6")
    assert mine.acquire()
    other = LockOwner(pid=os.getpid(), host=mine.owner.host, started=mine.owner.started, token="other")
    mine.path.write_text(other.to_json())  # e.g. taken over after this holder was judged dead
    mine.release()
    assert SlideLock(tmp_path, "s6").holder() == other


def test_clearing_stale_locks_removes_only_dead_owners_locks_of_that_run(tmp_path: Path) -> None:
    host = LockOwner.me().host
    dead = LockOwner(pid=dead_pid(), host=host, started=time.time() - 5, token="dead")
    for key in ("run--a", "run--b", "other--c"):
        (tmp_path / f"{key}.lock").write_text(dead.to_json())
    live = SlideLock(tmp_path, "run--d")
    assert live.acquire()
    try:
        assert clear_stale_locks(tmp_path, "run--") == ["run--a", "run--b"]
        left = sorted(p.name for p in tmp_path.glob("*.lock"))
        assert left == ["other--c.lock", "run--d.lock"]  # another run's lock, and a live holder's
        assert live.holder() == live.owner
        assert clear_stale_locks(tmp_path / "missing", "run--") == []
    finally:
        live.release()
