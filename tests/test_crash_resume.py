"""kill -9 of a whole ``segment --workers`` run mid-way, then the same ``--run-id`` finishes it.

Against the loopback fake (pixel analysis, no VLM) failing 10% of requests with a 500. The fake
logs a hash of every request body it answered, so "paid twice" is counted on the wire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_support import fake_args, tiny_slides

from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.audit_store import AuditStore

WORKERS = 2
IN_FLIGHT = 4
"""The policy's ``classify.max_in_flight``: the whole cluster's bound (each of the WORKERS threads gets
IN_FLIGHT // WORKERS), so at most IN_FLIGHT requests can be in flight at the kill."""


def _segment(slides: Path, out: Path, policy: Path, base_url: str) -> list[str]:
    cli = "from tissue_oracle.agent.cli import main; main()"
    command = [sys.executable, "-c", cli, "segment", str(slides), "--out", str(out)]
    command += ["--workers", str(WORKERS), "--run-id", "crash", "--policy", str(policy), *fake_args(base_url)]
    return command


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_pays_only_what_was_in_flight(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    tiny_slides(slides, 4)
    policy = tmp_path / "policy.yaml"
    policy.write_text(load_policy("default").with_updates({"classify.max_in_flight": IN_FLIGHT}).to_yaml())
    out = tmp_path / "out"
    with FakeOpenAIServer(profile=PROFILES["generic"], latency_s=0.3, fail_rate=0.1, seed=1) as server:
        command = _segment(slides, out, policy, server.base_url)
        log = (tmp_path / "first.log").open("w")
        first = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=log)
        deadline = time.monotonic() + 400
        while not list(out.glob("*/summary.json")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        if first.poll() is not None:
            log.close()
            pytest.fail(
                f"the run ended before it could be killed: {(tmp_path / 'first.log').read_text()[-3000:]}"
            )
        time.sleep(1.0)  # let the other worker get well into its slide
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
        before = server.answered()
        assert first.returncode == -signal.SIGKILL

        resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = server.answered() - before

    with AuditStore.open(out / "audit.duckdb", read_only=True) as store:
        status = dict(store.query(lambda c: c.execute("SELECT slide_id, status FROM slides").fetchall()))
        hits = store.query(lambda c: c.execute("SELECT count(*) FROM calls WHERE cache_hit").fetchall())[0][0]
    assert set(status) == {f"tiny_0_00{i}" for i in range(4)}
    assert set(status.values()) <= {"done", "degraded"}
    # A body answered before the kill and again after it: paid twice because of the crash. That is
    # at most the IN_FLIGHT requests in flight at the kill (answered by the fake, never recorded by
    # the killed worker), plus, per slide running at the kill (at most WORKERS), one identical body
    # sent for the first time: ground_boxes re-asks the very same request after a rejected answer,
    # skipping the cache, so a slide killed between its first ask (answered before) and that retry
    # sends the same bytes again on resume, once. Recorded answers are handed back, never re-paid.
    twice = sum(min(n, after[h]) for h, n in before.items())
    assert twice <= IN_FLIGHT + WORKERS, f"{twice} requests answered before and after the kill"
    assert sum(after.values()) > 0  # the resumed run did ask the rest
    assert hits > 0 or twice == 0  # the interrupted slides' answered calls came from the cache
    # the killed workers' locks were broken, then released; a slide recorded as finished just before
    # the kill is skipped on resume, so its lock goes in the sweep at the start of the run
    assert not list((out / "locks").glob("*.lock"))
