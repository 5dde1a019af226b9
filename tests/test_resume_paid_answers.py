"""A resumed slide (one process, no workers) pays for nothing its interrupted attempt was answered.

``ground_boxes`` asks the very same request twice when the first boxes are rejected (the retry
skips the cache to reach the model). The soak (``bench/soak``) caught a resumed run paying for
that retry again: the in-process store served the cache but had no queue of the attempt's paid
answers. Here the "kill" is exact: a run that recorded every call of its slide is set back to
``running``, as a ``kill -9`` before ``finish_slide`` leaves it, and the same command resumes it
against the loopback fake (pixel analysis, no VLM), which counts the bodies it answers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from scale_support import fake_args

from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.bench.soak.run import SoakConfig, prepare
from tissue_oracle.oracles.profiles import PROFILES


def _segment(slides: Path, out: Path, policy: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    cli = "from tissue_oracle.agent.cli import app; app()"
    command = [sys.executable, "-c", cli, "segment", str(slides), "--out", str(out), "--policy", str(policy)]
    command += ["--run-id", "resumed", *fake_args(base_url)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_resumed_slide_gets_back_the_box_retry_it_paid_for(tmp_path: Path) -> None:
    slides, policy = prepare(SoakConfig(slides=1, size=768, seed=5, work=tmp_path))
    out = tmp_path / "out"
    with FakeOpenAIServer(profile=PROFILES["generic"]) as server:
        first = _segment(slides, out, policy, server.base_url)
        assert first.returncode == 0, first.stderr[-3000:]
        paid = server.answered()
        # The case under test happened: one body (the rejected boxes' retry) was paid twice.
        assert max(paid.values()) == 2, paid
        mask = np.load(next(out.glob("*/mask.npy")))
        with duckdb.connect(str(out / "audit.duckdb")) as conn:
            asked = conn.execute("SELECT count(*) FROM calls WHERE ok").fetchall()[0][0]
            last_id = conn.execute("SELECT max(call_id) FROM calls").fetchall()[0][0]
            conn.execute("UPDATE slides SET status = 'running', finished_at = NULL")
        resumed = _segment(slides, out, policy, server.base_url)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        again = server.answered() - paid
    assert sum(again.values()) == 0, f"paid again after the resume: {dict(again)}"
    assert np.array_equal(np.load(next(out.glob("*/mask.npy"))), mask)
    with duckdb.connect(str(out / "audit.duckdb"), read_only=True) as conn:
        status = conn.execute("SELECT status FROM slides").fetchall()
        rows = conn.execute("SELECT cache_hit FROM calls WHERE call_id > ?", [last_id]).fetchall()
    assert status in ([("done",)], [("degraded",)])
    # The resumed slide asked what the first attempt asked, and every answer came from the store.
    assert len(rows) == asked and all(hit for (hit,) in rows)
