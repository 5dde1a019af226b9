"""``report.html`` in headless Debian chromium, the escalation queue and ``audit escalations``.

The run behind it is real: two tiny synthetic slides segmented by the classical oracle (no VLM).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from scale_support import app, tiny_slides
from typer.testing import CliRunner

from tissue_oracle.agent.escalations import read_summaries, review_geojson, slide_escalations
from tissue_oracle.agent.summary import RegionSummary, RoundRecord
from tissue_oracle.bench.perf import headless_browser
from tissue_oracle.tools.schemas import Box, Grades

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    slides = tmp_path_factory.mktemp("slides")
    tiny_slides(slides, 2)
    out = tmp_path_factory.mktemp("run") / "out"
    result = runner.invoke(app, ["segment", str(slides), "--out", str(out), "--oracle", "classical"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_segment_writes_a_self_contained_report(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    assert len(re.findall(r'class="card" data-slide=', page)) == 2
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing fetched from a network
    assert all(
        src.startswith("data:image/jpeg;base64,") for src in re.findall(r'<img[^>]* src="([^"]+)"', page)
    )
    assert 'id="cost-plot"' in page
    assert "classical (no VLM)" in page


@pytest.mark.slow
@pytest.mark.skipif(headless_browser.chromium_path() is None, reason="chromium is not installed")
def test_report_renders_every_slide_card_in_chromium_without_console_errors(run_dir: Path) -> None:
    loaded = headless_browser.load(run_dir / "report.html")
    assert loaded.console == []
    slides = {s.slide_id for s in read_summaries(run_dir)}
    rendered = set(re.findall(r'<div class="card" data-slide="([^"]+)">', loaded.dom))
    assert rendered == slides and len(slides) == 2
    assert "<svg" in loaded.dom
    shot = headless_browser.screenshot(run_dir / "report.html", run_dir / "shot.png", height=900)
    assert shot.stat().st_size > 10_000  # a blank page compresses to a few hundred bytes


@pytest.mark.slow
def test_report_command_remakes_the_page_and_the_queue(run_dir: Path) -> None:
    (run_dir / "report.html").unlink()
    (run_dir / "escalations.csv").unlink()
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").exists() and (run_dir / "escalations.csv").exists()
    bad = runner.invoke(app, ["report", str(run_dir / "nowhere")])
    assert bad.exit_code == 2 and "summary.json" in bad.output


@pytest.mark.slow
def test_escalated_regions_and_degraded_slides_reach_the_queue(run_dir: Path) -> None:
    summary = read_summaries(run_dir)[0]
    bad_grades = Grades(precision=3, recall=4)
    escalated = RegionSummary(
        index=1,
        box=Box(x0=10, y0=20, x1=300, y1=400),
        rounds=[RoundRecord(round=0, grades=bad_grades, action="escalate", reason="recall 4")],
        final_action="escalate",
        needs_human_review=True,
        reason="recall 4",
    )
    fine = RegionSummary(index=0, box=Box(x0=0, y0=0, x1=5, y1=5))
    summary = summary.model_copy(
        update={
            "regions": [fine, escalated],
            "status": "degraded",
            "flags": ["budget_exhausted"],
            "reasons": ["budget exhausted: run calls budget of 3 would be exceeded", "region 1: recall 4"],
        }
    )
    rows = slide_escalations(summary)
    assert [(r.region, r.reason) for r in rows] == [
        ("", "budget exhausted: run calls budget of 3 would be exceeded"),
        ("1", "recall 4"),
    ]
    assert rows[1].grades == "r0 P3/R4" and (rows[1].x0, rows[1].y1) == ("10", "400")
    features = review_geojson(summary)["features"]
    assert len(features) == 1
    assert features[0]["geometry"]["coordinates"][0][2] == [300, 400]
    assert features[0]["properties"]["classification"]["name"] == "Review"
    # through the files and the CLI
    (run_dir / summary.slide_id / "summary.json").write_text(summary.model_dump_json())
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0
    with (run_dir / "escalations.csv").open() as fh:
        queued = list(csv.DictReader(fh))
    assert {(q["slide_id"], q["region"]) for q in queued} >= {(summary.slide_id, ""), (summary.slide_id, "1")}
    geo = json.loads((run_dir / summary.slide_id / "review_regions.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 1
    listed = runner.invoke(app, ["audit", "escalations", "--db", str(run_dir / "audit.duckdb"), "--json"])
    assert listed.exit_code == 0, listed.output
    assert {(q["slide_id"], q["region"]) for q in json.loads(listed.output)} == {
        (q["slide_id"], q["region"]) for q in queued
    }
