"""Per-slide locks on a shared filesystem that survive a crashed worker.

A lock is a file ``<dir>/<key>.lock`` created atomically (``O_CREAT | O_EXCL``), holding the
owner's pid, host, the process's start time and a random token. Whoever creates it holds it;
nobody else can. A lock is *stale*, and may be broken, when its owner is gone:

- on the same host: the pid is not running, or a process with that pid started at another time
  (the pid was reused);
- on another host (no way to look at its processes): the file's mtime is older than
  ``lease_s``; a live holder refreshes it every ``lease_s / 3`` seconds (:meth:`SlideLock.refresh`).

Breaking a stale lock is itself guarded by a ``<key>.break`` file created with ``O_EXCL``: the
breaker re-reads the lock under the guard and unlinks it only if it is still the same stale
content. So two workers that both judged a lock stale can't both take it, and a fresh lock
created meanwhile by a third is never removed (the race of TRIDENT's PR #213, where a checked
then created lock let two workers process one slide). A guard older than ``guard_s`` belongs to
a breaker that crashed and is removed.

A worker killed after its slide was recorded but before it released the lock leaves a stale lock
on a slide that the resumed run skips (it is done), so nobody would ever break it:
:func:`clear_stale_locks` breaks such leftovers when a run starts.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

#: Seconds after which another host's lock that was not refreshed counts as abandoned.
DEFAULT_LEASE_S = 120.0
_GUARD_S = 30.0


@dataclass(frozen=True, kw_only=True)
class LockOwner:
    """Who holds a lock: enough to tell, later, whether that process still runs."""

    pid: int
    host: str
    started: float
    """The owner process's start time (``psutil.Process.create_time``), to detect pid reuse."""
    token: str

    @classmethod
    def me(cls) -> LockOwner:
        pid = os.getpid()
        return cls(
            pid=pid, host=socket.gethostname(), started=_start_time(pid) or 0.0, token=secrets.token_hex(8)
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LockOwner | None:
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                started=float(data["started"]),
                token=str(data["token"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def owner_alive(owner: LockOwner) -> bool:
    """Same host only: the pid runs and started when the lock says (not a reused pid)."""
    started = _start_time(owner.pid)
    return started is not None and abs(started - owner.started) < 1.0


def _read(path: Path) -> tuple[str, float] | None:
    """(content, mtime) of ``path``, or None when it is gone."""
    try:
        return path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None


def _create(path: Path, content: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


class SlideLock:
    """One slide's lock. ``acquire()`` never blocks: it returns whether this process now holds it."""

    def __init__(
        self, lock_dir: Path, key: str, *, lease_s: float = DEFAULT_LEASE_S, guard_s: float = _GUARD_S
    ):
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"lock key {key!r} must be a plain file name")
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.path = lock_dir / f"{key}.lock"
        self._guard = lock_dir / f"{key}.break"
        self.lease_s = lease_s
        self.guard_s = guard_s
        self.owner = LockOwner.me()
        self.held = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def holder(self) -> LockOwner | None:
        found = _read(self.path)
        return None if found is None else LockOwner.from_json(found[0])

    def is_stale(self, content: str, mtime: float) -> bool:
        owner = LockOwner.from_json(content)
        if owner is None:  # unreadable: half-written by a creator that died between open and write
            return time.time() - mtime > self.guard_s
        if owner.host == self.owner.host:
            return not owner_alive(owner)
        return time.time() - mtime > self.lease_s

    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False when a live owner holds it."""
        if self.held:
            return True
        for _ in range(3):
            if _create(self.path, self.owner.to_json()):
                self.held = True
                self._start_heartbeat()
                return True
            found = _read(self.path)
            if found is None:
                continue  # released meanwhile: try again
            if not self.is_stale(*found) or not self._break(found[0]):
                return False
        return False

    def _break(self, stale_content: str) -> bool:
        """Unlink the lock if it still holds ``stale_content``, under the break guard."""
        guard = _read(self._guard)
        if guard is not None and time.time() - guard[1] > self.guard_s:
            with contextlib.suppress(FileNotFoundError):
                self._guard.unlink()  # a breaker that crashed mid-break
        if not _create(self._guard, self.owner.to_json()):
            return False
        try:
            found = _read(self.path)
            if found is not None and found[0] == stale_content:
                self.path.unlink()
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._guard.unlink()

    def break_if_stale(self) -> bool:
        """Remove the lock when its owner is gone (without taking it); True when that stale lock is gone."""
        found = _read(self.path)
        if found is None or not self.is_stale(*found) or not self._break(found[0]):
            return False
        now = _read(self.path)
        return now is None or now[0] != found[0]

    def refresh(self) -> None:
        """Renew the lease (the file's mtime) while this process holds the lock."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.lease_s / 3):
                self.refresh()

        self._stop.clear()
        self._heartbeat = threading.Thread(target=beat, name=f"lock {self.path.name}", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        """Remove the lock if (and only if) this process's token is still in it."""
        if not self.held:
            return
        self._stop.set()
        self.held = False
        found = _read(self.path)
        owner = None if found is None else LockOwner.from_json(found[0])
        if owner is not None and owner.token == self.owner.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> SlideLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def clear_stale_locks(lock_dir: Path, prefix: str) -> list[str]:
    """Break every stale ``<prefix>*.lock`` in ``lock_dir``; the keys of the locks removed.

    Live owners' locks stay. Safe while other workers run: each break goes through the guard.
    """
    if not lock_dir.is_dir():
        return []
    keys = (path.name[: -len(".lock")] for path in sorted(lock_dir.glob(f"{glob.escape(prefix)}*.lock")))
    return [key for key in keys if SlideLock(lock_dir, key).break_if_stale()]
