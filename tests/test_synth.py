"""The synthetic slide generator: files OpenSlide reads, determinism, consistent levels and tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.bench.synth.artefacts import ARTEFACT_TYPES
from tissue_oracle.bench.synth.generate import compute_truth, generate_slide, plan_set
from tissue_oracle.bench.synth.noise import Grid
from tissue_oracle.bench.synth.presets import PRESETS, build_spec
from tissue_oracle.bench.synth.render import render_block, render_sharp
from tissue_oracle.bench.synth.stains import STAINS
from tissue_oracle.bench.synth.truth import load_truth
from tissue_oracle.tools.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_slide(tmp_path_factory.mktemp("synth") / "tiny.tiff", preset="tiny", seed=3)


def test_openslide_reads_levels_mpp_and_magnification(tiny_slide: Path) -> None:
    with openslide.OpenSlide(str(tiny_slide)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.dimensions == PRESETS["tiny"].size
        assert slide.level_count == 4
        assert [round(d) for d in slide.level_downsamples] == [1, 4, 16, 64]
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.objective-power"]) == pytest.approx(40)


def test_no_mpp_leaves_mpp_and_magnification_out(tmp_path: Path) -> None:
    path = generate_slide(
        tmp_path / "bare.tiff", preset="tiny", seed=1, width=512, height=384, with_mpp=False
    )
    with openslide.OpenSlide(str(path)) as slide:
        assert "openslide.mpp-x" not in slide.properties
        assert "openslide.objective-power" not in slide.properties
    assert load_truth(path).mpp is None


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    a, b, c = (build_spec("tiny", s) for s in (5, 5, 6))
    region = (200, 300, 768, 512, 1)
    assert np.array_equal(render_block(a, *region), render_block(b, *region))
    assert not np.array_equal(render_block(a, *region), render_block(c, *region))
    assert plan_set("leica-like", 3, 0) == plan_set("leica-like", 3, 0)


def test_tile_borders_match_when_a_block_is_split() -> None:
    spec = build_spec("tiny", 3)
    whole = render_sharp(spec, Grid(x0=0, y0=256, w=2048, h=512, ds=1))
    left = render_sharp(spec, Grid(x0=0, y0=256, w=1000, h=512, ds=1))
    right = render_sharp(spec, Grid(x0=1000, y0=256, w=1048, h=512, ds=1))
    np.testing.assert_allclose(np.hstack([left, right]), whole, atol=2e-3)


def test_lower_level_agrees_with_downsampled_level0(tiny_slide: Path) -> None:
    with openslide.OpenSlide(str(tiny_slide)) as slide:
        level0 = np.asarray(slide.read_region((0, 0), 0, (2048, 1536)).convert("RGB"), dtype=np.float64)
        level2 = np.asarray(slide.read_region((0, 0), 2, (128, 96)).convert("RGB"), dtype=np.float64)
    boxed = level0.reshape(96, 16, 128, 16, 3).mean(axis=(1, 3))
    assert np.abs(boxed - level2).mean() < 5.0


def test_tissue_has_texture_at_level0(tiny_slide: Path) -> None:
    fraction = load_truth(tiny_slide).tissue_fraction(256)
    row, col = np.unravel_index(np.argmax(fraction), fraction.shape)
    assert fraction[row, col] > 0.9
    with openslide.OpenSlide(str(tiny_slide)) as slide:
        patch = slide.read_region((int(col) * 256, int(row) * 256), 0, (256, 256)).convert("L")
    assert np.asarray(patch).std() > 12  # nuclei, fibres and lumina, not a flat colour


def test_zoo_truth_has_every_artefact_and_focus_label() -> None:
    spec = build_spec("zoo", 0, width=6144, height=4608)
    tissue, masks, focus = compute_truth(spec)
    assert set(ARTEFACT_TYPES) <= set(masks)
    assert all(m.any() for name, m in masks.items()), [n for n, m in masks.items() if not m.any()]
    assert tissue.any() and set(np.unique(focus)) <= {0, 1, 2, 255}
    assert {r.label for r in spec.focus} == {"mild_blur", "out_of_focus"} or len(spec.focus) == 2


def test_every_stain_renders_distinct_colours() -> None:
    means = []
    for stain in STAINS:
        spec = build_spec("tiny", 3, stain=stain)
        piece = spec.pieces[0]
        x, y = piece.path[2] if piece.kind == "core" else piece.center
        means.append(render_block(spec, int(x) - 128, int(y) - 128, 256, 256, 1).reshape(-1, 3).mean(axis=0))
    dists = [np.abs(a - b).sum() for i, a in enumerate(means) for b in means[i + 1 :]]
    assert min(dists) > 8


def test_red_pen_preset_draws_red_marker_like_the_real_stroke() -> None:
    """HistoQC's pen_red stroke core is RGB about (202, 42, 63); the other presets keep to blue,
    green and black."""
    found = [
        (spec, ink)
        for spec in (build_spec("red-pen", seed) for seed in range(6))
        for ink in spec.inks
        if getattr(ink, "colour", None) == "red"
    ]
    assert found
    spec, pen = found[0]
    x, y = pen.path[0]
    core = render_block(spec, int(x) - 32, int(y) - 32, 64, 64, 1).reshape(-1, 3)
    assert np.abs(np.median(core, axis=0) - (202, 42, 63)).max() < 35, np.median(core, axis=0)
    for name in ("leica-like", "stress", "hard", "zoo", "faint-hard"):
        for seed in range(4):
            assert all(getattr(ink, "colour", None) != "red" for ink in build_spec(name, seed).inks)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match="leica-like, stress, hard, zoo, tiny"):
        build_spec("bogus", 0)


def test_cli_writes_slides_and_truth(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path), "--preset", "tiny", "--count", "1", "--size", "512"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny_0_000.tiff").is_file()
    assert load_truth(tmp_path / "tiny_0_000.tiff").slide_width == 512
    bad = CliRunner().invoke(app, ["synth", str(tmp_path), "--preset", "bogus"])
    assert bad.exit_code != 0 and "leica-like" in bad.output
