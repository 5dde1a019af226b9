"""``tissue-oracle segment`` through the real CLI: a good slide, a bad one, all bad, resume, bad policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stage_support import core_slide_pixels
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.audit_store import AuditStore

runner = CliRunner()


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the two-core slide as a PNG, a garbage '.svs' and a small-grid policy file."""
    folder = tmp_path_factory.mktemp("slides")
    image, _ = core_slide_pixels()
    Image.fromarray(image).save(folder / "good.png")
    (folder / "bad.svs").write_bytes(b"this is not a slide")
    policy = load_policy("default").with_updates(
        {
            "classify.patch_size": 256,
            "classify.send_size": 128,
            "classify.batch_size": 16,
            "review.crop_size": 512,
        }
    )
    (folder.parent / "small.yaml").write_text(policy.to_yaml())
    return folder


def slide_rows(db: Path) -> dict[str, tuple[str, str | None]]:
    with AuditStore.open(db, read_only=True) as store:
        found = store.query(lambda c: c.execute("SELECT slide_id, status, error FROM slides").fetchall())
    return {sid: (status, error) for sid, status, error in found}


@pytest.mark.slow
def test_a_bad_slide_is_isolated_and_resume_skips_finished_slides(slides: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    policy = str(slides.parent / "small.yaml")
    args = ["segment", str(slides), "--out", str(out), "--policy", policy, "--run-id", "r1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = slide_rows(out / "audit.duckdb")
    assert rows["good"][0] in ("done", "degraded") and rows["bad"][0] == "failed"
    assert "bad.svs" in (rows["bad"][1] or "") and "not an image" in (rows["bad"][1] or "")
    assert (out / "good" / "summary.json").is_file() and not (out / "bad").exists()

    with AuditStore.open(out / "audit.duckdb", read_only=True) as store:
        calls_before = store.query(lambda c: c.execute("SELECT count(*) FROM calls").fetchone())
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    with AuditStore.open(out / "audit.duckdb", read_only=True) as store:
        calls_after = store.query(lambda c: c.execute("SELECT count(*) FROM calls").fetchone())
    assert calls_after == calls_before  # good was skipped; bad failed again without any call


@pytest.mark.slow
def test_every_slide_failing_exits_non_zero(slides: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment", str(slides / "bad.svs"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert slide_rows(tmp_path / "o" / "audit.duckdb")["bad"][0] == "failed"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy", "papper"], "paper, default"),
        (["--oracle", "nonsense:model"], "unknown oracle backend"),
    ],
)
def test_configuration_errors_exit_2_with_advice(
    slides: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = runner.invoke(app, ["segment", str(slides / "good.png"), "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_paths_that_match_nothing_are_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment", str(tmp_path / "*.svs"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "matches no slide files" in result.output


def test_a_tile_smaller_than_a_patch_is_flagged_and_patch_size_reads_it(tmp_path: Path) -> None:
    image, truth = core_slide_pixels()
    tile = tmp_path / "tile.png"
    Image.fromarray(image[1140:1260, 460:580]).save(tile)  # 120 x 120 px across a core's edge
    assert 0.5 < truth[1140:1260, 460:580].mean() < 0.8
    plain = runner.invoke(app, ["segment", str(tile), "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    summary = json.loads((tmp_path / "plain" / "tile" / "summary.json").read_text())
    assert "out_of_scope_image_too_small" in summary["flags"]
    assert any("--patch-size 120 or less" in r for r in summary["reasons"]), summary["reasons"]
    args = ["segment", str(tile), "--out", str(tmp_path / "fitted"), "--patch-size", "40"]
    fitted = runner.invoke(app, args)
    assert fitted.exit_code == 0, fitted.output
    summary = json.loads((tmp_path / "fitted" / "tile" / "summary.json").read_text())
    assert (summary["patches"]["patch_size"], summary["patches"]["rows"], summary["patches"]["cols"]) == (
        40,
        3,
        3,
    )
    assert summary["flags"] == []
    mask = np.load(tmp_path / "fitted" / "tile" / "mask.npy") > 0
    expected = truth[1140:1260, 460:580].reshape(3, 40, 3, 40).mean(axis=(1, 3)) >= 0.5
    assert 2 * (mask & expected).sum() / (mask.sum() + expected.sum()) >= 0.8, (mask, expected)
    args = ["segment", str(tile), "--out", str(tmp_path / "bad"), "--patch-size", "8"]
    too_small = runner.invoke(app, args)
    assert too_small.exit_code == 2 and "classify.patch_size" in too_small.output


def test_a_thumbnail_sized_image_without_a_pixel_size_gets_the_thumbnail_advice(tmp_path: Path) -> None:
    """HistoQC's pen_green thumbnail at the default 512 px patches is a 2 x 2 grid, and the map
    found nothing in it; the CLI names the grid and the patch size that reads a thumbnail."""
    image, _ = core_slide_pixels()
    thumb = tmp_path / "thumb.png"
    Image.fromarray(image[::2, ::2]).save(thumb)  # the two-core slide at half size: no pixel size
    result = runner.invoke(app, ["segment", str(thumb), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "thumb" / "summary.json").read_text())
    assert "coarse_grid" in summary["flags"] and summary["status"] == "done"
    note = next(r for r in summary["reasons"] if r.startswith("the grid is"))
    assert "--patch-size 32" in note and "thumb: the grid is" in " ".join(result.output.split())
    read = runner.invoke(app, ["segment", str(thumb), "--out", str(tmp_path / "fine"), "--patch-size", "32"])
    assert read.exit_code == 0, read.output
    fine = json.loads((tmp_path / "fine" / "thumb" / "summary.json").read_text())
    assert "coarse_grid" not in fine["flags"]


def test_a_real_thumbnail_shorter_than_a_patch_one_way_gets_the_thumbnail_advice(
    tmp_path: Path, real_data: Path
) -> None:
    """HistoQC's IHC coverslip-edge thumbnail (1488 x 452 px, no pixel size) is a 1 x 3 grid at the
    default 512 px patches. The map keeps a patch of it, so no ``image_too_small`` scope speaks; the
    grid note must, though the image is shorter than a patch."""
    thumb = real_data / "pen" / "models__coverslip_edge_ihc__coverslip_edge.png"
    result = runner.invoke(app, ["segment", str(thumb), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / thumb.stem / "summary.json").read_text())
    assert "coarse_grid" in summary["flags"] and "out_of_scope_image_too_small" not in summary["flags"]
    note = next(r for r in summary["reasons"] if r.startswith("the grid is"))
    assert "1 x 3 patches of 512 px" in note and "--patch-size 32" in note
