"""Loose stroma and fat beside or inside a section are tissue.

Beside it (``oracles.precipitate._attached``): their sparse nuclei on a pale, lacy substrate are dots
on a haze, as precipitate is, so the speckle test alone drops them. A weak piece that continues
stained tissue and whose dots are sparse is given back. A haze on glass, or one as densely granular as
precipitate, is still dropped. Inside it (``oracles.tissue_map._stained_holes``): a fat lobule
enclosed by the section is a hole too large for the small-hole fill, but it is stained where a lumen
shows glass. The real case is HistoQC's coverslip-edge H&E thumbnail (skipped when ../shared is
absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from tissue_oracle.oracles.map_params import MapParams
from tissue_oracle.oracles.tissue_map import _stained_holes, tissue_map

WITHOUT_ATTACHED_RULE = MapParams(attached_share=2.0)
"""No ring is more than wholly on tissue: the map without ``_attached``."""
WITHOUT_HOLE_RULE = MapParams(stained_hole_od=1e9)
"""No hole's median OD reaches this: the map without ``_stained_holes``."""


def loose_piece(seed: int, *, dots: float, apart: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A map-scale image (12 x 14 patches of 32 px): an eosin-rich disc with nuclei, and beside it
    (touching it, or ``apart`` on glass) a pale, lacy eosin piece whose nuclei are a ``dots`` share
    of its pixels. Returns RGB uint8, the disc's mask and the pale piece's mask."""
    rng = np.random.default_rng(seed)
    h, w = 384, 448
    ys, xs = np.mgrid[:h, :w]
    core = (xs - 140) ** 2 + (ys - 190) ** 2 <= 100**2
    centre = 335 if apart else 250
    loose = (((xs - centre) / 110) ** 2 + ((ys - 190) / 130) ** 2 <= 1) & ~core
    if apart:
        loose &= xs > 260
    od = np.zeros((h, w, 3), np.float32)
    eosin, haem = np.array([0.05, 0.6, 0.15]), np.array([0.55, 0.6, 0.2])
    od[core] += eosin * rng.uniform(0.5, 0.7, (int(core.sum()), 1))
    od[core & (rng.random((h, w)) < 0.12)] += haem * 1.2
    haze = np.clip(ndi.gaussian_filter(rng.random((h, w)), 4) * 6 - 2.5, 0.3, 1.0)
    od[loose] += eosin * 0.09 * haze[loose, None]
    field = ndi.gaussian_filter(rng.normal(size=(h, w)), 4)
    od[loose & (np.abs(field) < 0.12 * field.std())] += eosin * 0.3  # a web of thin septa
    nuclei = loose & (rng.random((h, w)) < dots)
    od[nuclei] += haem * rng.uniform(0.6, 1.0, (int(nuclei.sum()), 1))
    glass = np.array([236.0, 233.0, 238.0]) + rng.normal(0, 1.5, (h, w, 1))
    return np.clip(glass * 10 ** (-od), 0, 255).astype(np.uint8), core, loose


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loose_stroma_continuing_a_stained_piece_is_tissue(seed: int) -> None:
    rgb, core, loose = loose_piece(seed, dots=0.03)
    before = tissue_map(rgb, 32, WITHOUT_ATTACHED_RULE).solid
    assert before[loose].mean() < 0.05  # the speckle test alone takes it for precipitate
    solid = tissue_map(rgb, 32).solid
    assert solid[loose].mean() > 0.9
    assert solid[core].mean() > 0.99


@pytest.mark.parametrize("seed", [1, 2])
def test_the_same_piece_alone_on_glass_is_still_dropped(seed: int) -> None:
    rgb, core, loose = loose_piece(seed, dots=0.03, apart=True)
    solid = tissue_map(rgb, 32).solid
    assert solid[loose].mean() < 0.05
    assert solid[core].mean() > 0.99
    assert np.array_equal(solid, tissue_map(rgb, 32, WITHOUT_ATTACHED_RULE).solid)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_haze_as_granular_as_precipitate_is_dropped_though_it_touches_tissue(seed: int) -> None:
    rgb, core, loose = loose_piece(seed, dots=0.05)
    solid = tissue_map(rgb, 32).solid
    assert solid[loose].mean() < 0.05
    assert solid[core].mean() > 0.99


def test_a_real_section_keeps_its_fat(real_data: Path) -> None:
    """HistoQC's coverslip-edge H&E thumbnail: the fat at the right of the tumour (a box drawn by
    eye round it) was dropped as precipitate."""
    path = real_data / "pen" / "models__coverslip_edge_he__coverslip_edge.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    fat = (slice(250, 480), slice(790, 950))
    assert tissue_map(rgb, 32, WITHOUT_ATTACHED_RULE).solid[fat].mean() < 0.1
    assert tissue_map(rgb, 32).solid[fat].mean() > 0.9


def test_a_stained_hole_is_filled_and_a_glass_hole_or_an_inked_one_is_not() -> None:
    """``_stained_holes`` on a ring of tissue round a hole of about 8 patches (32 px patches): a fat
    lobule's OD (median 0.066 on the real thumbnail below) fills it, glass (0.01) does not, nor does
    a hole mostly of ink; a small stained hole is left to the small-hole fill before it."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:384, :384]
    r = np.hypot(xs - 192, ys - 192)
    solid, hole = (r > 52) & (r <= 150), r <= 52
    min_area = 4.0 * 32 * 32
    lobule_od = np.where(hole, rng.uniform(0.03, 0.1, r.shape), 0.5).astype(np.float32)
    no_ink = np.zeros(r.shape, dtype=bool)
    assert np.array_equal(_stained_holes(solid, lobule_od, no_ink, min_area, 0.03), hole)
    glass_od = np.where(hole, rng.uniform(0.0, 0.02, r.shape), 0.5).astype(np.float32)
    assert not _stained_holes(solid, glass_od, no_ink, min_area, 0.03).any()
    assert not _stained_holes(solid, lobule_od, hole & (xs < 200), min_area, 0.03).any()
    assert not _stained_holes(solid, lobule_od, no_ink, float(hole.sum()), 0.03).any()


def test_a_real_fat_lobule_inside_a_section_is_tissue(real_data: Path) -> None:
    """The same thumbnail: a fat lobule enclosed by the tumour (7 patches, a box drawn by eye inside it)."""
    path = real_data / "pen" / "models__coverslip_edge_he__coverslip_edge.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    lobule = (slice(410, 480), slice(640, 720))
    assert tissue_map(rgb, 32, WITHOUT_HOLE_RULE).solid[lobule].mean() < 0.4
    assert tissue_map(rgb, 32).solid[lobule].mean() > 0.99
