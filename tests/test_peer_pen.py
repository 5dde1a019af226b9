"""The peers bench's ``pen`` group: thumbnails with human pen masks, scored at their pixels.

The real HistoQC thumbnails live in ../shared; here a thumbnail is drawn with the same layout
(``pen/<stem>.png`` beside ``pen/<stem>_mask.png``) so that the group runs without them. The
peer virtualenvs are absent, so those peers are skipped by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.bench.evaluation import peer_bench, peer_methods, peer_pen

STEM = "pen__1k_version__pen_black"


def draw_thumbnail(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 480 x 640 thumbnail: glass, a brown-black stroke (the real pen_black's colour), a pink piece."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:640, :480]
    stroke = np.abs(xs - 0.2 * ys - 120) < 16
    piece = (xs - 340) ** 2 + (ys - 420) ** 2 <= 90**2
    rgb = np.empty((640, 480, 3))
    rgb[:] = (238, 236, 239)
    rgb[piece] = (225, 150, 190)
    rgb[piece & (rng.random(piece.shape) < 0.08)] = (120, 70, 150)  # nuclei
    rgb[stroke] = (24, 20, 14)
    rgb += rng.normal(0, 2.0, rgb.shape)
    (folder / "pen").mkdir(parents=True)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / "pen" / f"{STEM}.png")
    Image.fromarray((stroke * 255).astype(np.uint8)).save(folder / "pen" / f"{STEM}_mask.png")
    return stroke, piece


def test_the_pen_group_scores_each_method_on_the_human_marks(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(peer_methods, "ROOT", tmp_path)  # no peer envs: each subprocess peer is skipped
    draw_thumbnail(tmp_path / "real")
    (case,) = peer_pen.pen_cases(tmp_path / "real")
    row = peer_pen.run_pen_case(case, echo=lambda _: None)
    assert set(row["marks_called"]) == {"clam_otsu", "clam_sthresh8", "ours"}
    assert all(note.startswith("skipped") for note in row["notes"].values()) and len(row["notes"]) == 4
    # CLAM's saturation reads the brown-black stroke as colour; ours reads it as ink
    assert row["marks_called"]["clam_otsu"] > 0.9
    assert row["marks_called"]["ours"] < 0.05
    # off the marks, both find the same pink piece (the reference here: CLAM's Otsu, the only voter that ran)
    assert row["off_marks_agreement"]["ours"] > 0.9
    text = "\n".join(peer_pen.pen_markdown([row]))
    assert "## pen (real thumbnails, HUMAN" in text and f"| {STEM} | black pen on glass |" in text


def test_off_the_marks_is_not_scored_where_the_majority_finds_no_tissue(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(peer_methods, "ROOT", tmp_path)
    stroke, _ = draw_thumbnail(tmp_path / "real")
    image = tmp_path / "real" / "pen" / f"{STEM}.png"
    rgb = np.asarray(Image.open(image)).copy()
    rgb[~stroke] = (238, 236, 239)  # glass and the stroke alone
    Image.fromarray(rgb).save(image)
    (case,) = peer_pen.pen_cases(tmp_path / "real")
    row = peer_pen.run_pen_case(case, echo=lambda _: None)
    assert row["off_marks_agreement"] == {}
    assert peer_pen._cell(row, "ours").endswith(" / n/a") and row["marks_called"]["ours"] < 0.05


@pytest.mark.slow
def test_only_real_runs_the_real_groups_and_writes_the_pen_section(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(peer_methods, "ROOT", tmp_path)
    monkeypatch.setattr(peer_bench, "ROOT", tmp_path)  # no CMU-1 either
    draw_thumbnail(tmp_path / "real")
    said: list[str] = []
    result = peer_bench.run_peer_bench(
        tmp_path / "out",
        data=tmp_path / "data",
        real=tmp_path / "real",
        size=2048,
        echo=said.append,
        only_real=True,
    )
    assert result["rows"] == [] and [r["image"] for r in result["pen_rows"]] == [STEM]
    assert not (tmp_path / "data").exists()  # no synthetic slide was drawn
    text = (tmp_path / "out" / "peers.md").read_text()
    assert "## pen" in text and "## tuning" not in text and "histolab: skipped" in text
    assert said == [said[0]] and said[0].startswith(f"[1/1] {STEM}: ")


def test_only_real_is_refused_with_only_seeds_and_outside_the_peers_suite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    both = [
        "bench",
        "--suite",
        "peers",
        "--out",
        str(out),
        "--only-real",
        "--only-seeds",
        "--seeds",
        "tiny:1",
    ]
    refused = CliRunner().invoke(app, both)
    assert refused.exit_code == 2 and "exclude each other" in refused.output
    other = CliRunner().invoke(app, ["bench", "--suite", "quick", "--out", str(out), "--only-real"])
    assert other.exit_code == 2 and "for --suite peers" in other.output
