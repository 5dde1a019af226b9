"""The answers an interrupted attempt of a slide already paid for, handed back one ask at a time.

A resumed slide runs its stages again from the start. Most of its questions are served by the
answer cache, but some skip it on purpose: ``ground_boxes`` asks the very same request again
after a rejected answer, to reach the model rather than repeat the cached answer. Without this
queue a resumed slide would pay for that retry a second time. With it, the k-th ask of a request
hash gets the k-th answer the run paid for under that hash, cache or not, and only what the
killed attempt never received (in flight at the kill, or never asked) is paid again.

Every recorder (``AuditStore``, ``MemoryRecorder``, a worker's ``ShardWriter``) keeps one,
fills it in ``resume_slide`` and empties it through ``resumed_call``, which
``oracles.base.answer_with_cache`` asks before the cache.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from tissue_oracle.tools.schemas import CallRecord


class ResumedAnswers:
    """Request hash -> the run's earlier paid answers, oldest first; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[CallRecord]] = {}

    def add(self, records: Iterable[CallRecord], *, run_id: str, slide_id: str) -> int:
        """Queue the ok, paid (not cache-hit) calls of ``run_id`` on ``slide_id``, in the given
        (call) order; returns how many were queued."""
        queued = 0
        with self._lock:
            for r in records:
                if r.ok and not r.cache_hit and r.run_id == run_id and r.slide_id == slide_id:
                    self._queues.setdefault(r.request_hash, deque()).append(r)
                    queued += 1
        return queued

    def take(self, request_hash: str) -> CallRecord | None:
        """The next queued answer for this hash (removed from the queue), or None."""
        with self._lock:
            queue = self._queues.get(request_hash)
            return queue.popleft() if queue else None
