"""An in-memory ``AuditRecorder`` for tests and dry runs: the same contract as the DuckDB store.

``cached_call`` follows the store's rule: the most recent successful record with that request
hash (cache hits included, since they carry the original answer), or None. Failed calls are
recorded but never served from the cache. Runs and slides keep their latest status, so
``finished_slides`` answers a resume the way the store does, and ``resume_slide`` queues a
resumed slide's paid answers for ``resumed_call`` as the store does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from tissue_oracle.store.recorder import FINISHED_STATUSES
from tissue_oracle.store.resumed_answers import ResumedAnswers
from tissue_oracle.tools.schemas import (
    CallRecord,
    DecisionRecord,
    OutputRecord,
    PatchRecord,
    RunRecord,
    SlideRecord,
)


@dataclass(kw_only=True)
class MemoryRecorder:
    """Keeps every record in lists, in arrival order. Thread-safe."""

    calls: list[CallRecord] = field(default_factory=list)
    """Every call row recorded, cache hits included."""
    decisions: list[DecisionRecord] = field(default_factory=list)
    """Every policy decision recorded."""
    patches: list[PatchRecord] = field(default_factory=list)
    """Every final patch label recorded."""
    outputs: list[OutputRecord] = field(default_factory=list)
    """Every output file recorded."""
    runs: dict[str, RunRecord] = field(default_factory=dict)
    """Run id -> the run, with its latest status."""
    slides: dict[tuple[str, str], SlideRecord] = field(default_factory=dict)
    """(run id, slide id) -> the slide, with its latest status, error and flags."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _latest_ok: dict[str, CallRecord] = field(default_factory=dict, repr=False)
    _resumed: ResumedAnswers = field(default_factory=ResumedAnswers, repr=False)

    def record_call(self, record: CallRecord) -> None:
        with self._lock:
            self.calls.append(record)
            if record.ok:
                self._latest_ok[record.request_hash] = record

    def cached_call(self, request_hash: str) -> CallRecord | None:
        with self._lock:
            return self._latest_ok.get(request_hash)

    def resumed_call(self, request_hash: str) -> CallRecord | None:
        return self._resumed.take(request_hash)

    def resume_slide(self, run_id: str, slide_id: str) -> int:
        with self._lock:
            earlier = list(self.calls)
        return self._resumed.add(earlier, run_id=run_id, slide_id=slide_id)

    def begin_run(self, run: RunRecord) -> None:
        """Record a run as running (a run id begun again, on resume, is set back to running)."""
        with self._lock:
            self.runs[run.run_id] = run.model_copy(update={"status": "running", "finished_at": None})

    def finish_run(self, run_id: str, status: str) -> None:
        with self._lock:
            run = self.runs.get(run_id)
            if run is not None:
                self.runs[run_id] = run.model_copy(update={"status": status, "finished_at": datetime.now()})

    def begin_slide(self, slide: SlideRecord) -> None:
        """Record a slide as running; begun again, its earlier patch labels and outputs are dropped
        (they are about to be rewritten), its calls and decisions stay."""
        key = (slide.run_id, slide.slide_id)
        with self._lock:
            self.slides[key] = slide.model_copy(update={"status": "running"})
            self.patches = [p for p in self.patches if (p.run_id, p.slide_id) != key]
            self.outputs = [o for o in self.outputs if (o.run_id, o.slide_id) != key]

    def finish_slide(
        self, run_id: str, slide_id: str, *, status: str, error: str | None = None, flags: Iterable[str] = ()
    ) -> None:
        with self._lock:
            # finished without begin_slide: keep what we know, as the store does
            slide = self.slides.get((run_id, slide_id)) or SlideRecord(
                run_id=run_id, slide_id=slide_id, path=""
            )
            self.slides[(run_id, slide_id)] = slide.model_copy(
                update={"status": status, "error": error, "flags": list(flags), "finished_at": datetime.now()}
            )

    def finished_slides(self, run_id: str | None = None) -> set[str]:
        """Ids of slides whose status is done or degraded (in ``run_id``, or in any run)."""
        with self._lock:
            return {
                sid
                for (rid, sid), slide in self.slides.items()
                if slide.status in FINISHED_STATUSES and run_id in (None, rid)
            }

    def finished_slide_hashes(self, run_id: str) -> dict[str, str | None]:
        """``slide_id -> file_hash`` of the slides ``run_id`` finished."""
        with self._lock:
            return {
                sid: slide.file_hash
                for (rid, sid), slide in self.slides.items()
                if slide.status in FINISHED_STATUSES and rid == run_id
            }

    def run_policy(self, run_id: str) -> str | None:
        """The policy YAML ``run_id`` was begun under, or None."""
        with self._lock:
            run = self.runs.get(run_id)
            return None if run is None else run.policy_yaml

    def record_decision(self, record: DecisionRecord) -> None:
        with self._lock:
            self.decisions.append(record)

    def record_patches(self, records: list[PatchRecord]) -> None:
        with self._lock:
            self.patches.extend(records)

    def record_output(self, record: OutputRecord) -> None:
        with self._lock:
            self.outputs.append(record)

    @property
    def paid_calls(self) -> list[CallRecord]:
        """Calls that reached a backend (not answered from the cache)."""
        with self._lock:
            return [c for c in self.calls if not c.cache_hit]
