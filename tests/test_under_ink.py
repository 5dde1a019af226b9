"""Tissue under wide marker strokes (``oracles.under_ink``) and tinted strips beside the slide's border.

The images are made the way light makes them: optical densities of stain and ink add (Beer-Lambert),
strokes are streaky (their density varies, their colour does not), and sensor noise is added to the
transmitted light. 32 px per patch, as the map is calibrated.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from stage_support import dice

from tissue_oracle.oracles import edge_strips
from tissue_oracle.oracles.map_params import DEFAULT_MAP_PARAMS, MapParams
from tissue_oracle.oracles.tissue_map import tissue_map
from tissue_oracle.oracles.under_ink import pen_colour, tissue_under_ink

SIDE = 384
GLASS = np.array([236.0, 233.0, 238.0])
# Median OD of marker inks over glass, as measured on the synthetic slides' 16x thumbnails
BLACK_INK = np.array([0.5, 0.5, 0.5])
GREEN_INK = np.array([0.42, 0.10, 0.31])
PINK_STAIN = np.array([0.08, 0.30, 0.12])
DAB_STAIN = np.array([0.12, 0.20, 0.30])


def render(od: np.ndarray, seed: int) -> np.ndarray:
    """RGB uint8 of glass seen through the summed OD (H, W, 3), with sensor noise."""
    rng = np.random.default_rng(seed)
    rgb = GLASS * np.power(10.0, -od) + rng.normal(0, 2.5, od.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def streaky(mask: np.ndarray, ink: np.ndarray, seed: int) -> np.ndarray:
    """A stroke's OD: its ink at a density that varies by +-15% in soft streaks."""
    rng = np.random.default_rng(seed)
    density = 1.0 + 0.15 * ndi.gaussian_filter(rng.normal(0, 1, mask.shape), 6) / 0.05
    density = np.clip(density, 0.7, 1.3)
    return (mask * density)[..., None] * ink


def textured(mask: np.ndarray, stain: np.ndarray, seed: int) -> np.ndarray:
    """A tissue piece's OD: its stain at a density that varies from 0.6 to 1.4, with dark nuclei."""
    rng = np.random.default_rng(seed)
    density = np.clip(1.0 + 0.4 * rng.uniform(-1, 1, mask.shape), 0.6, 1.4)
    nuclei = rng.random(mask.shape) < 0.05
    od = (mask * density)[..., None] * stain
    od[mask & nuclei] += (0.45, 0.6, 0.25)
    return od


@pytest.fixture(scope="module")
def grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[:SIDE, :SIDE]
    return ys, xs


@pytest.mark.parametrize(("stain", "seed"), [(PINK_STAIN, 1), (DAB_STAIN, 2)], ids=["eosin", "dab"])
def test_a_piece_wholly_under_a_wide_stroke_is_tissue(grid, stain: np.ndarray, seed: int) -> None:
    """Under green ink, stained tissue stays ink to the ink mask, and only this rule finds it. (Under
    black or blue ink, stained tissue is no longer neutral or cyan, and the ordinary rules see it.)"""
    ink = GREEN_INK
    ys, xs = grid
    stroke = np.abs(ys - 190) < 56  # 3.5 patches wide, across the slide
    piece = (xs - 150) ** 2 + ((ys - 190) * 1.6) ** 2 <= 70**2  # wholly inside the stroke
    other = (xs - 300) ** 2 + (ys - 60) ** 2 <= 40**2  # a piece on open glass
    rgb = render(streaky(stroke, ink, seed) + textured(piece | other, stain, seed), seed)
    tmap = tissue_map(rgb, 32)
    assert tmap.ink[piece].mean() > 0.9  # the piece is under ink, not beside it
    assert dice(tmap.solid, piece | other) >= 0.9
    stroke_on_glass = stroke & (ndi.distance_transform_edt(~piece) > 4)
    assert tmap.solid[stroke_on_glass].mean() < 0.01
    # without the rule the piece is lost with the stroke
    without = tissue_map(rgb, 32, MapParams(stain_under_ink=False))
    assert without.solid[piece].mean() < 0.1


def test_two_crossing_strokes_are_not_tissue(grid) -> None:
    ys, xs = grid
    black = np.abs(ys - 190) < 50
    green = np.abs(xs - 200) < 50
    piece = (xs - 80) ** 2 + (ys - 60) ** 2 <= 40**2
    od = streaky(black, BLACK_INK, 2) + streaky(green, GREEN_INK, 3) + textured(piece, PINK_STAIN, 2)
    tmap = tissue_map(render(od, 2), 32)
    crossing = black & green
    assert tmap.ink[crossing].mean() > 0.9
    assert tmap.solid[black | green].mean() < 0.01
    assert dice(tmap.solid, piece) >= 0.9


def test_ink_colour_classes_follow_the_marker_inks() -> None:
    od = np.stack([BLACK_INK, GREEN_INK, np.array([0.42, 0.28, 0.06]), 0.6 * BLACK_INK])[None]
    assert pen_colour(od).tolist() == [[1, 2, 3, 1]]


def test_no_ink_means_nothing_under_ink() -> None:
    od = np.zeros((64, 64, 3), np.float32)
    assert not tissue_under_ink(od, np.zeros((64, 64), bool), 32).any()


def test_a_tinted_strip_between_a_coverslip_edge_and_the_dark_border_is_not_tissue(grid) -> None:
    """Seen on synthetic zoo slides and real scans: the slide's dark border along one side, a
    strip of tinted mounting medium, then the coverslip's dark edge. The strip does not touch the
    image's edge; it reaches it through the border."""
    ys, xs = grid
    piece = (xs - 150) ** 2 + (ys - 190) ** 2 <= 80**2
    od = textured(piece, PINK_STAIN, 5)
    od[:, 374:] += 0.5  # dark slide border, grey
    od[:, 363:374] += (0.02, 0.045, 0.07)  # beige medium beyond the coverslip
    od[:, 357:363] += 0.35  # the coverslip's dark edge
    tmap = tissue_map(render(od, 5), 32)
    assert not tmap.solid[:, 357:].any()
    assert dice(tmap.solid, piece) >= 0.95


def test_a_tinted_strip_cut_by_a_pen_stroke_is_not_tissue(grid, monkeypatch) -> None:
    """Seen on a synthetic hard slide: a strip of tinted medium along the image's left edge, the
    coverslip's dark edge beside it, and a wide black stroke drawn across both from the glass to the
    edge. Each piece of the strip is shorter than 4 patches; measured through the ink it is the
    whole side."""
    ys, xs = grid
    piece = (xs - 230) ** 2 + (ys - 190) ** 2 <= 80**2
    od = textured(piece, PINK_STAIN, 6)
    od[:, :12] += (0.02, 0.045, 0.07)  # beige medium beyond the coverslip
    od[:, 12:17] += 0.35  # the coverslip's dark edge
    stroke = (np.abs(ys - 195) < 80) & (xs < 110)  # 5 patches wide, from the edge inwards
    rgb = render(od + streaky(stroke, BLACK_INK, 6), 6)
    strip = (xs < 12) & ~stroke
    tmap = tissue_map(rgb, 32)
    assert tmap.solid[strip].mean() < 0.02  # a few pixels at the stroke's soft edge may stay
    assert dice(tmap.solid, piece) >= 0.95
    # measured piece by piece, each is too short to be a strip, and the medium is kept as tissue
    monkeypatch.setattr(edge_strips, "_joined_through_ink", lambda band, ink, patch: band)
    assert tissue_map(rgb, 32).solid[strip].mean() > 0.5
    assert DEFAULT_MAP_PARAMS.stain_under_ink
