"""The peer comparison (``bench --suite peers``): CLAM's segmentTissue re-implemented, peers skipped cleanly.

The peers themselves (tiatoolbox, lazyslide, histolab) live in optional virtualenvs under
``.peers/`` that CI does not build; here a missing env must give a named skip, not an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stage_support import core_slide_pixels, dice
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.bench.evaluation import peer_bench, peer_methods
from tissue_oracle.bench.evaluation.clam_segment import ClamParams, clam_mask, opencv_saturation
from tissue_oracle.bench.synth.presets import PRESETS, build_spec
from tissue_oracle.tools.errors import ConfigError


def test_opencv_saturation_scale() -> None:
    rgb = np.array([[[255, 0, 0], [200, 100, 100], [0, 0, 0], [128, 128, 128]]], dtype=np.uint8)
    assert opencv_saturation(rgb).tolist() == [[255, 128, 0, 0]]


def test_clam_finds_the_cores_and_its_area_filter_drops_small_pieces() -> None:
    image, truth = core_slide_pixels()
    thumb, small = image[::8, ::8], truth[::8, ::8]
    found = clam_mask(thumb, 8, ClamParams(a_t=1.0))
    assert dice(found, small) >= 0.95
    # CLAM's default a_t (100 reference patches of 512 px) drops both cores: they are smaller
    assert not clam_mask(thumb, 8, ClamParams()).any()


def test_a_missing_peer_env_is_skipped_with_its_name(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(peer_methods, "ROOT", tmp_path)
    got = peer_bench._peer("histolab", tmp_path / "slide.tiff")
    assert isinstance(got, str) and got.startswith("skipped") and "install.sh" in got


def held_out_row(**fields: object) -> dict:
    """A held-out slide's bench row as ``run_case`` writes it, with ``fields`` replaced or added."""
    row = {
        "slide": "s1",
        "group": "held-out",
        "reference": "truth",
        "dice": {"clam_otsu": 0.5, "ours": 0.9},
        "seconds": {"clam_otsu": 0.1, "ours": 0.4},
        "ours_scope": "brightfield",
        "notes": {},
    }
    return {**row, **fields}


def test_markdown_groups_rows_and_marks_missing_peers() -> None:
    row = held_out_row(notes={"lazyslide": "skipped: missing"})
    text = peer_bench.markdown(
        {"command": "tissue-oracle bench --suite peers", "patch_size": 512, "rows": [row]}
    )
    assert "## held-out" in text and "0.900 / 0.4s" in text and "| - |" in text
    assert "lazyslide: skipped: missing" in text


def test_markdown_marks_a_slide_where_ours_misses_the_best_threshold() -> None:
    row = {
        "slide": "s2",
        "group": "tuning",
        "reference": "truth",
        "dice": {"clam_otsu": 1.0, "lazyslide": 0.5, "ours": 0.9},
        "best_threshold": 1.0,
        "ours_minus_best": -0.1,
        "seconds": {"clam_otsu": 0.1, "tiatoolbox_otsu": 2.0, "ours": 0.4, "ours_segment": 5.0},
        "ours_scope": "brightfield",
        "notes": {},
    }
    text = peer_bench.markdown({"command": "c", "patch_size": 512, "rows": [row]})
    assert "| 1.000 | -0.100 ✗ |" in text
    assert "5.0s (2.5x tia)" in text
    assert "1 of 1 missed" in text


def test_the_report_sums_each_truth_scored_groups_wrong_patches_by_tissue_share() -> None:
    bands = {"patches": [5, 0, 0, 2, 0, 1], "wrong": {"clam_otsu": [0, 0, 0, 1, 0, 1], "ours": [0] * 6}}
    rows = [held_out_row(errors_by_share=bands), held_out_row(slide="s2", errors_by_share=bands)]
    text = peer_bench.markdown({"command": "c", "patch_size": 512, "rows": rows})
    assert "summed over these 2 slides" in text
    assert "summed over this slide" in peer_bench.markdown(
        {"command": "c", "patch_size": 512, "rows": rows[:1]}
    )
    assert "| clam_otsu | 0 (0%) | 0 | 0 | 2 (50%) | 0 | 2 (100%) | 4 |" in text
    assert "| ours | 0 (0%) | 0 | 0 | 0 (0%) | 0 | 0 (0%) | 0 |" in text


def test_a_miss_made_only_of_half_line_patches_is_named_so() -> None:
    def missed(slide: str, wrong: list[int]) -> dict:
        bands = {"patches": [5, 1, 1, 2, 1, 1], "wrong": {"ours": wrong}}
        return held_out_row(slide=slide, ours_minus_best=-0.05, errors_by_share=bands)

    rows = [missed("coin", [0, 0, 0, 1, 0, 0]), missed("whole", [0, 0, 0, 1, 0, 1]), missed("none", [0] * 6)]
    text = peer_bench.markdown({"command": "c", "patch_size": 512, "rows": rows})
    assert "| -0.050 ✗ (half line) |" in text  # the coin flip
    assert text.count("(half line) |") == 1  # a whole patch missed too, or nothing wrong: not named
    assert "3 of 3 missed (1 at the half line only)" in text


@pytest.mark.slow
def test_run_case_scores_ours_against_the_best_threshold_and_times_a_segment_run(tmp_path: Path) -> None:
    case = peer_bench._synthetic_case(tmp_path, "tuning", "tiny", 3, 2048)
    row = peer_bench.run_case(case, echo=lambda _: None)
    thresholds = [row["dice"][m] for m in peer_bench.THRESHOLDS if m in row["dice"]]
    assert row["best_threshold"] == max(thresholds)
    assert row["ours_minus_best"] == pytest.approx(row["dice"]["ours"] - max(thresholds))
    # a real default-policy segment run of the slide, timed from its own summary.json
    assert row["seconds"]["ours_segment"] > 0 and "ours_segment" not in row["notes"]
    # each method's wrong patches, counted by the truth's tissue share, agree with its Dice's labels
    bands = row["errors_by_share"]
    assert sum(bands["patches"]) == case.truth.size
    for name in ("clam_otsu", "ours"):
        wrong = sum(bands["wrong"][name])
        assert (wrong == 0) == (row["dice"][name] == 1.0)


def test_seed_ranges_parse_and_bad_ones_are_named() -> None:
    assert peer_bench.parse_seed_range("faint-hard:8401-8403") == ("faint-hard", [8401, 8402, 8403])
    assert peer_bench.parse_seed_range("stress:7") == ("stress", [7])
    for bad, says in (
        ("stress", "PRESET:FIRST-LAST"),
        ("stress:a-b", "PRESET:FIRST-LAST"),
        ("stress:9-3", "below the first"),
        ("bogus:1-2", "faint-stress"),  # the known presets are listed
    ):
        with pytest.raises(ConfigError, match=says):
            peer_bench.parse_seed_range(bad)


def test_faint_presets_make_every_piece_faint() -> None:
    for name, base in (("faint-stress", "stress"), ("faint-hard", "hard")):
        assert PRESETS[name].p_faint == 1.0 and PRESETS[base].p_faint < 1.0
        spec = build_spec(name, 8401, width=2048, height=2048)
        assert spec.pieces and all(piece.intensity < 0.6 for piece in spec.pieces)


def test_bench_cli_refuses_bad_seed_options_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = CliRunner().invoke(app, ["bench", "--suite", "peers", "--out", str(out), "--seeds", "stress"])
    assert bad.exit_code == 2 and "PRESET:FIRST-LAST" in bad.output
    alone = CliRunner().invoke(app, ["bench", "--suite", "peers", "--out", str(out), "--only-seeds"])
    assert alone.exit_code == 2 and "--only-seeds needs" in alone.output
    other = CliRunner().invoke(app, ["bench", "--suite", "quick", "--out", str(out), "--seeds", "stress:1"])
    assert other.exit_code == 2 and "for --suite peers" in other.output
    assert not out.exists()


@pytest.mark.slow
def test_only_seeds_scores_the_extra_slides_alone(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(peer_methods, "ROOT", tmp_path)  # no peer envs here: each peer is skipped by name
    said: list[str] = []
    result = peer_bench.run_peer_bench(
        tmp_path / "out",
        data=tmp_path / "data",
        real=tmp_path / "no-real",
        size=2048,
        echo=said.append,
        seeds=["tiny:3-4"],
        only_seeds=True,
    )
    assert [r["slide"].split()[0] for r in result["rows"]] == ["tiny_3", "tiny_4"]
    assert {r["group"] for r in result["rows"]} == {"extra"} and result["extra_seeds"] == ["tiny:3-4"]
    assert all(r["reference"] == "truth" and "ours" in r["dice"] for r in result["rows"])
    text = (tmp_path / "out" / "peers.md").read_text()
    assert "## extra" in text and "## tuning" not in text and "lazyslide: skipped" in text
    # progress: each slide drawn is named, then each scored one is counted
    assert sum(line.startswith("generating") for line in said) == 2
    assert any(line.startswith("[2/2] tiny_4") for line in said)
