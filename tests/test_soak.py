"""A small soak (``bench/soak``): faults, a kill -9 and a resume lose nothing and change no mask.

The full soak (200 slides) is a benchmark script, not a test; this runs the same code on a few
slides. Nothing here is timed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tissue_oracle.bench.soak.run import SoakConfig, report_text, run_soak


@pytest.mark.slow
def test_a_small_soak_loses_nothing_and_matches_the_fault_free_run(tmp_path: Path) -> None:
    report = run_soak(SoakConfig(slides=3, size=768, seed=5, work=tmp_path))
    text = report_text(report)
    assert report.slides == 3 and report.slides_lost == 0, text
    assert report.every_attempt_in_store, text
    assert report.masks_identical == 3 and not report.masks_different, text
    assert report.repeated_not_in_flight == 0, text
    assert sum(n for f, n in report.faults_injected.items() if f != "none") > 0, text  # faults were served
    assert report.passed
