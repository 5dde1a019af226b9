"""Baselines and mask resampling on drawn images, the real thumbnails, and synthetic slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tissue_oracle.bench.evaluation.baselines import MorphParams, kmeans_mask, otsu_mask, to_patch_grid
from tissue_oracle.bench.evaluation.labelled import find_pairs, load_mask, mask_fraction, mask_to_patches
from tissue_oracle.bench.evaluation.metrics import seg_scores


def _drawn_slide() -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 'slide': pale glass, a pink elliptical section with darker nuclei dots."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    tissue = ((xx - 100) / 70.0) ** 2 + ((yy - 128) / 90.0) ** 2 <= 1.0
    img = np.full((256, 256, 3), 238, dtype=np.uint8) + rng.integers(-4, 4, (256, 256, 3)).astype(np.uint8)
    img[tissue] = (215, 140, 180)
    dots = tissue & (rng.random((256, 256)) < 0.05)
    img[dots] = (120, 60, 140)
    return img, tissue


@pytest.mark.parametrize("method", [otsu_mask, kmeans_mask])
def test_baselines_find_a_drawn_section(method) -> None:
    img, tissue = _drawn_slide()
    mask = method(img, MorphParams(patch_area_px=16 * 16))
    pred = to_patch_grid(mask, 256, 256, 16)
    truth = mask_to_patches(tissue, 256, 256, 16)
    assert seg_scores(pred, truth).dice > 0.9


def test_blank_glass_has_no_tissue() -> None:
    glass = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert not otsu_mask(glass, MorphParams(patch_area_px=64)).any()
    assert not kmeans_mask(glass, MorphParams(patch_area_px=64)).any()


def test_mask_fraction_at_any_resolution() -> None:
    coarse = np.zeros((4, 4), dtype=bool)
    coarse[:2, :] = True  # top half of a 100x100 slide
    frac = mask_fraction(coarse, 100, 100, 25)
    assert frac.shape == (4, 4)
    np.testing.assert_allclose(frac[:2], 1.0)
    np.testing.assert_allclose(frac[2:], 0.0)
    fine = np.kron(coarse, np.ones((50, 50), dtype=bool))  # same mask at 2x the slide resolution
    np.testing.assert_allclose(mask_fraction(fine, 100, 100, 25), frac)
    # An edge cell running past the slide counts its outside part as background.
    edge = mask_fraction(np.ones((10, 10), dtype=bool), 100, 100, 30)
    assert edge[0, 3] == pytest.approx(1 / 3) and edge[0, 0] == 1.0


def test_geojson_and_png_and_npy_masks_agree(tmp_path: Path) -> None:
    square = np.zeros((200, 200), dtype=bool)
    square[40:120, 60:160] = True
    Image.fromarray(square.astype(np.uint8) * 255).save(tmp_path / "s.mask.png")
    np.save(tmp_path / "s.mask.npy", square[::2, ::2])
    ring = [[60, 40], [160, 40], [160, 120], [60, 120], [60, 40]]
    hole = [[100, 60], [120, 60], [120, 80], [100, 80], [100, 60]]
    doc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring, hole]}}],
    }
    (tmp_path / "s.mask.geojson").write_text(json.dumps(doc))
    grids = [
        mask_to_patches(load_mask(tmp_path / n, slide_width=200, slide_height=200), 200, 200, 20)
        for n in ("s.mask.png", "s.mask.npy", "s.mask.geojson")
    ]
    np.testing.assert_array_equal(grids[0], grids[1])
    assert grids[2].sum() == grids[0].sum() - 1  # the 20x20 hole is one patch


def test_pairing_rules(tmp_path: Path) -> None:
    (tmp_path / "slides").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("slides/a-01-ts1.svs", "slides/b.png", "slides/b_mask.png", "masks/tissue-mask-a.npy"):
        (tmp_path / name).write_bytes(b"x")
    pairs = {p.image.name: p for p in find_pairs(tmp_path)}
    assert set(pairs) == {"a-01-ts1.svs", "b.png"}
    assert pairs["a-01-ts1.svs"].tissue == tmp_path / "masks/tissue-mask-a.npy"
    assert pairs["b.png"].tissue == tmp_path / "slides/b_mask.png"
    as_artefact = {p.image.name: p for p in find_pairs(tmp_path, beside_role="pen")}
    assert as_artefact["b.png"].tissue is None and "pen" in as_artefact["b.png"].artefacts


@pytest.mark.real
def test_otsu_agrees_with_histolab_on_the_lung_thumbnail(real_data: Path) -> None:
    img = np.asarray(Image.open(real_data / "pen/tcga-lung-rgb.png").convert("RGB"))
    ref = np.load(real_data / "masks/tissue-mask-tcga-lung-rgb.npy")
    h, w = img.shape[:2]
    pred = to_patch_grid(otsu_mask(img, MorphParams(patch_area_px=256)), w, h, 16)
    # Agreement with another algorithm's mask, not accuracy.
    assert seg_scores(pred, mask_to_patches(ref, w, h, 16)).dice > 0.9
