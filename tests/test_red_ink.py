"""Crimson marker strokes (``oracles.ink_marks.red_strokes``).

HistoQC's ``pen_red`` thumbnail (a human traced the strokes) had its red strokes on glass called
tissue: no ink test took red, because eosin and fuchsin are red too. The synthetic images are made
as in ``test_under_ink`` (ODs add, sensor noise on the light), 32 px per patch.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from stage_support import dice
from test_ink_marks import segment_pen_thumbnail, soft
from test_under_ink import PINK_STAIN, SIDE, render, streaky, textured

from tissue_oracle.oracles.ink_marks import channel_max, ink_mask, red_strokes, saturation
from tissue_oracle.oracles.tissue_map import tissue_map

RED_INK = np.array([0.07, 0.75, 0.58])
"""OD against glass of pen_red's stroke cores (RGB about 202, 42, 63 on glass at 245)."""
BLUE_INK = np.array([0.52, 0.33, 0.05])
"""The synthetic blue marker's OD at full density (``bench.synth.artefacts``, in base 10)."""
BRIGHT_EOSIN = np.array([0.15, 0.64, 0.38])
"""OD of the brightest eosin on TCGA's frozen section (RGB about 168, 55, 99): as saturated as
the ink, but pinker (blue well above green)."""


@pytest.fixture(scope="module")
def grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[:SIDE, :SIDE]
    return ys, xs


def glass_of(arr: np.ndarray) -> np.ndarray:
    return (channel_max(arr) > 200) & (saturation(arr) < 0.1)


def test_a_red_stroke_on_glass_is_ink_and_the_tissue_beside_it_stays(grid) -> None:
    ys, xs = grid
    stroke = (np.abs(xs - 0.3 * ys - 120) < 18) & (ys > 30)  # about a patch wide, on glass
    piece = (xs - 290) ** 2 + (ys - 260) ** 2 <= 60**2
    od = soft(stroke)[..., None] * streaky(np.ones_like(stroke), RED_INK, 1) + textured(piece, PINK_STAIN, 1)
    rgb = render(od, 1)
    arr = rgb.astype(np.float32)
    core = stroke & (ndi.distance_transform_edt(stroke) > 4)
    assert saturation(arr)[core].mean() > 0.6  # the stain-like colour no other ink test takes
    assert red_strokes(arr, channel_max(arr), saturation(arr), 32, glass_of(arr))[core].mean() > 0.99
    assert ink_mask(rgb, 32)[stroke].mean() > 0.97
    tmap = tissue_map(rgb, 32)
    assert tmap.solid[stroke].mean() < 0.02
    assert dice(tmap.solid, piece) >= 0.9


def test_bright_eosin_and_fuchsin_on_glass_are_tissue_not_red_ink(grid) -> None:
    """As saturated as the ink, but pinker: TCGA's brightest eosin, and van Gieson's fuchsin
    (the synthetic EVG's collagen, OD vector (0.10, 0.88, 0.47) at strength 0.85)."""
    ys, xs = grid
    eosin = (xs - 120) ** 2 + (ys - 190) ** 2 <= 80**2
    fuchsin = (xs - 290) ** 2 + (ys - 190) ** 2 <= 70**2
    od = textured(eosin, BRIGHT_EOSIN, 2) + textured(fuchsin, 0.85 * np.array([0.10, 0.88, 0.47]), 3)
    rgb = render(od, 2)
    arr = rgb.astype(np.float32)
    assert saturation(arr)[eosin | fuchsin].mean() > 0.45
    assert red_strokes(arr, channel_max(arr), saturation(arr), 32, glass_of(arr)).mean() < 0.001
    assert dice(tissue_map(rgb, 32).solid, eosin | fuchsin) >= 0.95


def test_red_that_faces_no_glass_is_left_to_the_tissue_rules(grid) -> None:
    """Ink-coloured red boxed in by tissue (a stroke drawn over a section, or red stain that
    passes the colour test) is no stroke on glass: the under-ink rules decide it."""
    ys, xs = grid
    piece = (xs - 190) ** 2 + (ys - 190) ** 2 <= 150**2
    spot = (np.abs(xs - 190) < 30) & (np.abs(ys - 190) < 30)
    od = textured(piece & ~spot, PINK_STAIN, 4) + streaky(spot, RED_INK, 4)
    rgb = render(od, 4)
    arr = rgb.astype(np.float32)
    assert not red_strokes(arr, channel_max(arr), saturation(arr), 32, glass_of(arr))[spot].any()
    assert tissue_map(rgb, 32).solid[spot].mean() > 0.95


def test_a_blue_stroke_against_a_red_one_on_glass_is_not_tissue_under_ink(grid) -> None:
    """Seen on a synthetic red-pen slide: the under-ink rule put red and blue ink in one colour
    class, whose median is neither ink. A narrow blue stroke drawn against a wide red one then
    strayed from that median and read as tissue under pen (10339 px here before the red class)."""
    ys, xs = grid
    red = (ys > 60) & (ys <= 180) & (xs > 40) & (xs < 344)
    blue = (ys > 180) & (ys < 210) & (xs > 40) & (xs < 344)
    od = soft(red, 1.0)[..., None] * streaky(np.ones_like(red), RED_INK, 5)
    od += soft(blue, 1.0)[..., None] * streaky(np.ones_like(blue), BLUE_INK, 6)
    tmap = tissue_map(render(od, 5), 32)
    assert tmap.ink[red | blue].mean() > 0.99
    assert not tmap.solid.any()


def test_the_real_red_pen_thumbnail_loses_its_strokes_on_glass(real_data, tmp_path) -> None:
    """HistoQC's pen_red thumbnail at 32 px patches: of the 50 patches at least a quarter covered
    by the traced strokes, 45 were called tissue at 131b27d, and 23 are now. The strokes on glass
    are ink; the stroke along the section's left edge stays tissue where it lies over the
    section, and so do pale streaks with no saturated core near them."""
    mask, stroke = segment_pen_thumbnail(real_data, tmp_path, "pen__1k_version__pen_red")
    rows, cols = mask.shape  # the last row and column are partial patches
    padded = np.zeros((rows * 32, cols * 32), dtype=bool)
    padded[: stroke.shape[0], : stroke.shape[1]] = stroke
    share = padded.reshape(rows, 32, cols, 32).mean(axis=(1, 3))
    inked = share >= 0.25
    assert inked.sum() >= 20
    assert (mask & inked).sum() <= 0.5 * inked.sum(), (mask & inked).sum()
