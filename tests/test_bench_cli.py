"""``tissue-oracle bench``: the quick suite end to end, and the real and folder suites' inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-quick")
    result = CliRunner().invoke(app, ["bench", "--suite", "quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_quick_suite_writes_tables_json_and_plots(quick_run: Path) -> None:
    report = (quick_run / "report.md").read_text()
    for title in ("Table 1. Segmentation per stain", "Table 5. Focus", "Table 6. Reviewer", "Cost per slide"):
        assert title in report
    data = json.loads((quick_run / "results.json").read_text())
    methods = {r["method"] for r in data["rows"]}
    assert {"Otsu (CLAM)", "K-means (OD)", "classical oracle, every patch"} <= methods
    assert data["plots"] and all((quick_run / p).stat().st_size > 1000 for p in data["plots"])
    scored = [r for r in data["rows"] if r.get("dice") is not None]
    assert scored and all(0.0 <= r["dice"] <= 1.0 for r in scored)
    assert {r["stain"] for r in scored} == {"he", "jones", "evg"}
    # Baselines on tiny synthetic slides: a saturation threshold handles H&E.
    otsu_he = [r["dice"] for r in scored if r["method"] == "Otsu (CLAM)" and r["stain"] == "he"]
    assert otsu_he and min(otsu_he) > 0.7


@pytest.mark.slow
def test_pipeline_rows_carry_stages_and_cost(quick_run: Path) -> None:
    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    staged = [r for r in rows if r.get("stage")]
    if not staged:
        pytest.skip("the controller is not installed in this tree")
    assert {r["stage"] for r in staged} == {"zero-shot", "zero-shot + clean", "+ auto-context + clean"}
    for r in staged:
        assert r["calls"] > 0 and 0 < r["patches_sent"] <= r["naive_calls"] * 2


@pytest.mark.slow
def test_simulated_numbers_are_labelled_everywhere(quick_run: Path) -> None:
    data = json.loads((quick_run / "results.json").read_text())
    simulated = [r for r in data["rows"] if r.get("simulated")]
    assert simulated and all("SIMULATED" in r["method"] for r in simulated)
    assert all("SIMULATED" in r["method"] for r in data["reviewer"] if r["simulated"])
    report = (quick_run / "report.md").read_text()
    table_lines = [
        line for line in report.splitlines() if line.startswith("| ") and "simulated" in line.lower()
    ]
    assert table_lines and all("SIMULATED" in line for line in table_lines)


def test_unknown_suite_lists_the_known_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--suite", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2  # a named error, not a traceback
    assert "quick" in result.output


def test_folder_suite_scores_a_users_labelled_slides(tmp_path: Path) -> None:
    data = tmp_path / "mine"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        yy, xx = np.mgrid[:256, :320]
        tissue = ((xx - 150) / 90.0) ** 2 + ((yy - 128) / 70.0) ** 2 <= 1
        img = np.full((256, 320, 3), 240, np.uint8)
        img[tissue] = (200, 110, 170)
        img[tissue & (rng.random(tissue.shape) < 0.1)] = (100, 40, 120)
        Image.fromarray(img).save(data / f"slide{i}.png")
        np.save(data / f"slide{i}.mask.npy", tissue[::4, ::4])  # a mask at a quarter of the resolution
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "--suite", "folder", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    otsu = [r for r in rows if r["method"] == "Otsu (CLAM)"]
    assert len(otsu) == 2 and all(r["dice"] > 0.9 for r in otsu)


@pytest.mark.real
def test_real_suite_cases_call_histolab_masks_agreement(real_data: Path) -> None:
    from tissue_oracle.bench.evaluation.suites import get_suite, real_cases

    cases = real_cases(real_data, get_suite("real"))
    tissue = [c for c in cases if c.truth is not None]
    pens = [c for c in cases if c.reference_kind == "artefact_only"]
    assert {c.slide_id for c in tissue} >= {"tcga-lung-rgb", "kidney-48-5", "tcga-cr-7395-01a-01-ts1"}
    assert all(c.reference_kind == "agreement" and "AGREEMENT" in c.reference for c in tissue)
    assert len(pens) == 5 and all(c.artefact is not None and c.artefact.any() for c in pens)
    assert all(c.patch_size <= 64 for c in cases)


@pytest.mark.slow
def test_report_only_rebuilds_from_json(quick_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick_run, copy, ignore=shutil.ignore_patterns("data", "work", "*.png"))
    (copy / "report.md").unlink()
    result = CliRunner().invoke(app, ["bench", "--out", str(copy), "--report-only"])
    assert result.exit_code == 0, result.output
    assert (copy / "report.md").read_text().count("Table 1.") >= 1
    assert json.loads((copy / "results.json").read_text())["plots"]
