"""bench.perf.student_speed: a whole CLI run's timing adds up and counts grid patches (no speed asserted)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tissue_oracle.bench.perf.student_speed import CommandTiming, timed_segment
from tissue_oracle.bench.synth.generate import generate_set
from tissue_oracle.store.audit_store import AuditStore


@pytest.mark.slow
def test_a_timed_run_splits_its_wall_time_and_counts_grid_patches(tmp_path: Path) -> None:
    slides = generate_set(tmp_path / "slides", preset="tiny", count=2, seed=5)
    out = tmp_path / "run"
    (out / "stale").mkdir(parents=True)  # a fresh run: whatever OUT held is gone
    timing = timed_segment(slides, out, [])  # the default policy: the classical map, no VLM
    assert not (out / "stale").exists()
    summaries = [json.loads((out / s.stem / "summary.json").read_text()) for s in slides]
    grid = sum(m["patches"]["rows"] * m["patches"]["cols"] for m in summaries)
    assert timing.slides == 2 and timing.grid_patches == grid
    assert timing.startup_s > 0 and timing.slides_s > 0 and timing.wrap_up_s >= 0
    assert abs(timing.startup_s + timing.slides_s + timing.wrap_up_s - timing.wall_s) <= 0.02
    assert 0 < timing.segment_s <= timing.slides_s
    # wall_s is rounded to 0.01 s after the rate was taken from the unrounded wall time
    assert timing.patches_per_s == pytest.approx(grid / timing.wall_s, rel=0.01, abs=0.1)
    assert timing.patches_per_s_after_startup >= timing.patches_per_s
    assert CommandTiming.read(out) == timing
    with AuditStore.open(out / "audit.duckdb", read_only=True) as store:
        runs = store.query(lambda c: c.execute("SELECT count(*) FROM runs").fetchone())
    assert runs == (1,)
    assert set(asdict(timing)) >= {"load_before", "load_after"}
