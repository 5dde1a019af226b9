"""Near-black marker strokes with a tint (``oracles.ink_marks.tinted_black_strokes``).

HistoQC's ``pen_black`` thumbnail (a human traced its stroke) was called tissue from end to end:
its ink is brown-black, RGB (24, 20, 14), whose HSV saturation (0.42) the neutral-black test reads
as a colour. The synthetic images are made as in ``test_under_ink`` (ODs add, sensor noise on the
light), 32 px per patch; the ink's OD is the real stroke's, measured on that thumbnail.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from stage_support import dice
from test_under_ink import PINK_STAIN, SIDE, render, streaky, textured
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.oracles.ink_marks import channel_max, ink_mask, saturation, tinted_black_strokes
from tissue_oracle.oracles.tissue_map import tissue_map

TINTED_BLACK_INK = np.array([0.95, 1.03, 1.19])
"""OD against glass of pen_black's stroke core (median RGB 24, 20, 14 on glass at 239)."""


@pytest.fixture(scope="module")
def grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[:SIDE, :SIDE]
    return ys, xs


def soft(mask: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    """A stroke's edge as a marker leaves it: the ink thins out over a few pixels."""
    return np.clip(ndi.gaussian_filter(mask.astype(float), sigma) * 1.5, 0.0, 1.0)


def test_a_tinted_black_stroke_on_glass_is_ink_not_tissue(grid) -> None:
    ys, xs = grid
    stroke = (np.abs(xs - 0.3 * ys - 140) < 18) & (ys > 30)  # about a patch wide, with a tip
    piece = (xs - 300) ** 2 + (ys - 280) ** 2 <= 50**2
    od = soft(stroke)[..., None] * streaky(np.ones_like(stroke), TINTED_BLACK_INK, 1) + textured(
        piece, PINK_STAIN, 1
    )
    rgb = render(od, 1)
    core = stroke & (ndi.distance_transform_edt(stroke) > 4)
    arr = rgb.astype(np.float32)
    # what the neutral tests miss: near black, but "saturated"
    assert (channel_max(arr)[core] < 60).mean() > 0.95 and saturation(arr)[core].mean() > 0.2
    assert tinted_black_strokes(arr, channel_max(arr), 32)[core].mean() > 0.99
    assert ink_mask(rgb, 32)[stroke].mean() > 0.97
    tmap = tissue_map(rgb, 32)
    assert tmap.solid[stroke].mean() < 0.02
    assert dice(tmap.solid, piece) >= 0.9


def test_tissue_under_a_tinted_black_stroke_stays_tissue(grid) -> None:
    ys, xs = grid
    stroke = np.abs(xs - 190) < 18  # a patch wide, across a piece and the glass on both sides
    piece = (xs - 190) ** 2 + (ys - 190) ** 2 <= 120**2
    od = soft(stroke)[..., None] * streaky(np.ones_like(stroke), TINTED_BLACK_INK, 3)
    rgb = render(od + textured(piece, PINK_STAIN, 3), 3)
    tmap = tissue_map(rgb, 32)
    assert tmap.ink[stroke & ~piece].mean() > 0.97
    assert tmap.solid[stroke & ~piece].mean() < 0.03
    assert dice(tmap.solid, piece) >= 0.95


def test_a_tinted_dark_area_that_faces_no_glass_is_not_a_tinted_stroke(grid) -> None:
    """Seen on a synthetic hard slide: where a blue stroke crosses a grey-black one (over tissue),
    the sum is near black with a blue tint, boxed in by the strokes, which the older tests already
    find. A marker stroke lies on glass somewhere; that crossing does not, and the under-ink rules
    decide it as before the tinted rule existed."""
    ys, xs = grid
    box = (np.abs(ys - 190) < 30) & (np.abs(xs - 190) < 30)
    frame = (np.abs(ys - 190) < 62) & (np.abs(xs - 190) < 62) & ~box
    od = np.zeros((SIDE, SIDE, 3))
    od[frame] = 0.5  # grey-black ink (RGB about 75): the neutral test finds it, the tinted core does not
    od[box] = TINTED_BLACK_INK
    rgb = render(od, 4)
    arr = rgb.astype(np.float32)
    brightest = channel_max(arr)
    glass = (brightest > 200) & (saturation(arr) < 0.1)
    assert ink_mask(rgb, 32)[frame].mean() > 0.95
    assert tinted_black_strokes(arr, brightest, 32)[box].mean() > 0.99  # without the glass test
    assert not tinted_black_strokes(arr, brightest, 32, glass=glass)[box].any()
    # the same box on open glass is a stroke
    alone = render(np.where(box[..., None], TINTED_BLACK_INK, 0.0), 4).astype(np.float32)
    alone_glass = (channel_max(alone) > 200) & (saturation(alone) < 0.1)
    assert tinted_black_strokes(alone, channel_max(alone), 32, glass=alone_glass)[box].mean() > 0.99


def test_dark_nuclei_and_thin_dark_fibres_are_not_a_tinted_stroke(grid) -> None:
    """Dense nuclei are violet, not neutral; thin black fibres (silver, elastic) are narrower than
    the stroke's core must be."""
    ys, xs = grid
    piece = (xs - 190) ** 2 + (ys - 190) ** 2 <= 120**2
    fibres = piece & ((ys % 24) < 2)  # 2 px black fibres across the piece
    od = textured(piece, PINK_STAIN, 2) + fibres[..., None] * TINTED_BLACK_INK
    nuclei = piece & (((xs // 6) + (ys // 6)) % 5 == 0)  # dense clusters of dark violet nuclei
    od[nuclei] += (0.7, 1.0, 0.4)
    rgb = render(od, 2)
    arr = rgb.astype(np.float32)
    assert not tinted_black_strokes(arr, channel_max(arr), 32).any()
    assert dice(tissue_map(rgb, 32).solid, piece) >= 0.95


def segment_pen_thumbnail(real_data, tmp_path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``segment`` one of HistoQC's pen thumbnails at 32 px patches: (patch mask, traced strokes)."""
    image = real_data / "pen" / f"{name}.png"
    traced = real_data / "pen" / f"{name}_mask.png"
    if not (image.is_file() and traced.is_file()):
        pytest.skip(f"{image.name} or its mask is absent from {str(real_data)!r}")
    result = CliRunner().invoke(app, ["segment", str(image), "--out", str(tmp_path), "--patch-size", "32"])
    assert result.exit_code == 0, result.output
    return np.load(tmp_path / image.stem / "mask.npy") > 0, np.asarray(Image.open(traced).convert("L")) > 0


def test_the_real_black_pen_thumbnail_is_not_tissue(real_data, tmp_path) -> None:
    """HistoQC's pen_black thumbnail: glass, dust and one stroke a human traced. ``segment`` at 32 px
    patches called 263 patches tissue, the whole stroke; a few at its pale tip may stay."""
    mask, stroke = segment_pen_thumbnail(real_data, tmp_path, "pen__1k_version__pen_black")
    rows, cols = mask.shape
    stroke_cells = np.zeros_like(mask)
    for r, c in zip(*np.nonzero(stroke), strict=True):
        stroke_cells[min(r // 32, rows - 1), min(c // 32, cols - 1)] = True
    assert stroke_cells.sum() > 200
    assert mask.sum() <= 15 and (mask & ~stroke_cells).sum() <= 2, mask.sum()
