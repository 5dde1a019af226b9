"""An in-memory ``CallRecorder`` for tests and dry runs: the same contract as the DuckDB store.

``cached_call`` follows the store's rule: the most recent successful record with that request
hash (cache hits included, since they carry the original answer), or None. Failed calls are
recorded but never served from the cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tissue_oracle.tools.schemas import CallRecord, DecisionRecord, OutputRecord, PatchRecord


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _latest_ok: dict[str, CallRecord] = field(default_factory=dict, repr=False)

    def record_call(self, record: CallRecord) -> None:
        with self._lock:
            self.calls.append(record)
            if record.ok:
                self._latest_ok[record.request_hash] = record

    def cached_call(self, request_hash: str) -> CallRecord | None:
        with self._lock:
            return self._latest_ok.get(request_hash)

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
