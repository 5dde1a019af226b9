"""``segment --workers N`` on a Dask LocalCluster against the loopback fake (pixel analysis, no VLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scale_support import app, dead_pid, fake_args, tiny_slides
from typer.testing import CliRunner

from tissue_oracle.agent.slide_lock import LockOwner
from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.audit_store import AuditStore

runner = CliRunner()


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    tiny_slides(folder, 3)
    (folder / "broken.svs").write_bytes(b"not a slide")
    # two requests in flight for the whole cluster: each of the two workers gets one
    policy = load_policy("default").with_updates({"classify.max_in_flight": 2})
    (folder.parent / "narrow.yaml").write_text(policy.to_yaml())
    return folder


def _store(db: Path, sql: str) -> list[tuple[object, ...]]:
    with AuditStore.open(db, read_only=True) as store:
        return store.query(lambda c: c.execute(sql).fetchall())


@pytest.mark.slow
def test_workers_share_the_in_flight_limit_and_the_run_budget(slides: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FakeOpenAIServer(profile=PROFILES["generic"], latency_s=0.05) as server:
        args = ["segment", str(slides), "--out", str(out), "--workers", "2", "--run-id", "r1"]
        args += ["--policy", str(slides.parent / "narrow.yaml"), "--max-calls", "30"]
        args += fake_args(server.base_url)
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert server.max_in_flight_seen <= 2
    status = dict(_store(out / "audit.duckdb", "SELECT slide_id, status FROM slides"))
    assert status["broken"] == "failed"
    assert {status[f"tiny_0_00{i}"] for i in range(3)} <= {"done", "degraded"}
    (paid,) = _store(out / "audit.duckdb", "SELECT count(*) FROM calls WHERE NOT cache_hit")[0]
    assert 0 < int(paid) <= 30  # type: ignore[call-overload]
    assert list((out / "shards" / "r1").glob("*.parquet")) == []  # every shard merged
    assert list((out / "locks").glob("*.lock")) == []  # every lock released
    report = (out / "report.html").read_text()
    assert all(f'data-slide="tiny_0_00{i}"' in report for i in range(3))
    assert "<polyline" in report  # the priced calls' cumulative cost is plotted
    assert (out / "escalations.csv").exists()

    # a worker killed after its slide was recorded, before it released the lock: the resumed run
    # skips that finished slide, so only the sweep at the start of a run can remove the lock
    dead = LockOwner(pid=dead_pid(), host=LockOwner.me().host, started=1.0, token="killed")
    (out / "locks" / "r1--tiny_0_000.lock").write_text(dead.to_json())
    again = runner.invoke(app, args)  # the same run id: resume
    assert again.exit_code == 0, again.output
    assert list((out / "locks").glob("*.lock")) == []
    (paid_after,) = _store(out / "audit.duckdb", "SELECT count(*) FROM calls WHERE NOT cache_hit")[0]
    assert paid_after == paid  # finished slides are kept; the broken one fails again without a call
