"""Secrets never reach the audit file: plant keys, write real records, search every byte on disk."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from store_support import call_record, decision_record, output_record, run_record, slide_record

from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.scrub import REDACTED, Scrubber


def _disk_bytes(path: Path) -> bytes:
    """The database file and its write-ahead log, whichever exist."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + ".wal")) if p.exists())


def _secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    tag = uuid.uuid4().hex
    planted = {
        "env_openai": f"sk-proj-{tag}",  # a well-known key shape, also in the environment
        "env_plain": f"plainsecret{tag[:20]}",  # no recognisable shape: only the environment betrays it
        "bearer": f"tok{tag[:24]}",
        "goog_header": f"AIzaSy{tag}",
        "amz_sig": f"{tag}deadbeef",
        "query_key": f"qk{tag[:22]}",
    }
    monkeypatch.setenv("OPENAI_API_KEY", planted["env_openai"])
    monkeypatch.setenv("TISSUE_ORACLE_VENDOR_TOKEN", planted["env_plain"])
    return planted


def test_planted_keys_never_reach_the_file_or_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _secrets(monkeypatch)
    canary = f"canary{uuid.uuid4().hex}"  # not a secret: proves the byte search sees stored text
    signed_url = f"https://bucket.example/slide.svs?X-Amz-Expires=3600&X-Amz-Signature={s['amz_sig']}"
    request = {
        "model": "qwen3-vl-8b",
        "note": canary,
        "headers": {"Authorization": f"Bearer {s['bearer']}", "x-goog-api-key": s["goog_header"]},
        "api_key": s["env_openai"],
        "leaked": f"client built with {s['env_plain']}",
        "url": signed_url,
    }
    path = tmp_path / "audit.duckdb"
    with AuditStore.open(path) as store:
        run = run_record().model_copy(update={"command_line": f"tissue-oracle run --key {s['env_openai']}"})
        store.begin_run(run)
        store.begin_slide(slide_record("s1").model_copy(update={"path": signed_url}))
        store.record_call(
            call_record("h1").model_copy(
                update={
                    "request_json": json.dumps(request),
                    "response_raw": f'authorization: Bearer {s["bearer"]}\n{{"label": "tissue"}}',
                    "error": f"GET https://gen.example/v1?key={s['query_key']} failed, {canary}",
                }
            )
        )
        store.record_decision(
            decision_record("s1").model_copy(update={"reason": f"{s['env_plain']} {canary}"})
        )
        store.record_output(output_record("s1").model_copy(update={"path": signed_url}))
        store.finish_slide("run-1", "s1", status="done")
        store.flush()
        before_close = _disk_bytes(path)
    after_close = _disk_bytes(path)

    with AuditStore.open(path, read_only=True) as store:
        stored = store.query(lambda c: c.execute("SELECT request_json, error FROM calls").fetchall())
    assert canary in stored[0][0] and REDACTED in stored[0][0]
    assert "X-Amz-Expires=3600" in stored[0][0]  # only the signature goes
    for blob in (before_close, after_close):
        assert canary.encode() in blob
        for name, secret in s.items():
            assert secret.encode() not in blob, f"{name} secret found in the audit file"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("https://x/y.svs?sig=abc123XYZ&sv=2020", "sv=2020"),
        ('{"Authorization": "Basic dXNlcjpwYXNz", "max_tokens": 256}', '"max_tokens": 256'),
        ("x-goog-api-key: AIzaSyABCDEFGHIJKLMNOPQRSTUVWXYZ0123456\nuser-agent: t", "user-agent: t"),
        ("policy:\n  tokens: 1000\n  calls: 5", "tokens: 1000"),
    ],
)
def test_scrubber_removes_credentials_and_keeps_the_rest(text: str, kept: str) -> None:
    scrubbed = Scrubber(environ={})(text)
    assert scrubbed is not None and kept in scrubbed
    for secret in ("abc123XYZ", "dXNlcjpwYXNz", "AIzaSyABCDEFGHIJKLMNOPQRSTUVWXYZ0123456"):
        assert secret not in scrubbed
