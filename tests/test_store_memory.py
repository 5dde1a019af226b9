"""MemoryRecorder follows the store's cache rule: latest ok call per request hash."""

from __future__ import annotations

from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.schemas import CallRecord, CallRecorder


def _call(request_hash: str, *, ok: bool, response: str) -> CallRecord:
    return CallRecord(
        run_id="r",
        slide_id="s",
        stage="classify_patches",
        role="oracle",
        backend="openai",
        model="m",
        request_hash=request_hash,
        response_raw=response,
        ok=ok,
    )


def test_memory_recorder_serves_latest_ok_call() -> None:
    rec = MemoryRecorder()
    assert isinstance(rec, CallRecorder)
    rec.record_call(_call("h1", ok=True, response="first"))
    rec.record_call(_call("h1", ok=True, response="second"))
    rec.record_call(_call("h1", ok=False, response="broken"))
    rec.record_call(_call("h2", ok=False, response="nope"))
    hit = rec.cached_call("h1")
    assert hit is not None and hit.response_raw == "second"
    assert rec.cached_call("h2") is None
    assert rec.cached_call("missing") is None
    assert len(rec.calls) == 4
