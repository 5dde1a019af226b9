"""Marks that are not tissue: pen ink, slide borders, label shadows, coverslip and bubble rims.

The classical map (``oracles.tissue_map``) keeps these out of its seeds and growth. Three kinds:

- marker ink of pure blue or green (cyan-blue: G well above R; haematoxylin and aniline blue are
  violet-blue, G no higher than R);
- wide neutral-dark areas and near-black pixels (black pen, slide borders, label shadows, rims);
  dark stain (silver, elastic, dense nuclei) is thin and averages with its coloured substrate;
- near-black strokes with a tint (``tinted_black_strokes``). A real black marker is rarely
  neutral: HistoQC's ``pen_black`` example stroke is RGB (24, 20, 14) at its core. HSV saturation
  is (max - min) / max, so at that brightness a channel spread of 10 reads as a strong colour
  (0.42), and the neutral tests above miss the stroke. Its optical densities (1.03, 1.09, 1.23),
  though, are nearly equal: the test is made in OD, and the stroke must lie beside glass;
- crimson marker strokes on glass (``red_strokes``). HistoQC's ``pen_red`` stroke cores are RGB
  about (190-220, 30-80, 45-105): saturation 0.6-0.85, blue only a little above green. Eosin
  and fuchsin are pinker (blue well above green: TCGA's bright eosin at saturation 0.45-0.7 has
  blue - green 0.31-0.47 of the channel span, the strokes 0.09-0.26). Red stain that passes the
  colour test lies inside tissue, so a red stroke, too, must lie on glass.

Not a VLM: part of the classical map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.piece_rings import padded_box, ring_shares

TINTED_BLACK_MAX = 60.0
"""A tinted-black core pixel: every channel under this (0-255) ..."""
TINTED_BLACK_OD_SPREAD = 0.1
"""... and its three channel ODs spread by under this share of their sum (a grey, black or
brown-black ink; a dark purple nucleus or a green stroke over eosin spreads by 0.25 or more) ..."""
TINTED_RIM_OD_SPREAD = 0.15
"""... and the stroke's paler rim and tip: pixels within a third of a patch of the core, under
``TINTED_RIM_MAX`` in every channel and neutral to this spread."""
TINTED_RIM_MAX = 200.0
STROKE_GLASS_SHARE = 0.1
"""A stroke lies on glass: at least this share of the ring around it is within a sixteenth of a
patch of glass (HistoQC's pen_black: 0.77; a blue stroke crossing a grey-black one over tissue on
a synthetic slide: 0.003; HistoQC's pen_red strokes on glass 0.22-0.99, the part of one that lies
over the section 0.05. TCGA's green-pen stroma beside fat cells, which read as glass, reaches
0.33: the red colour test, not this one, leaves it alone)."""
RED_CORE_SATURATION = 0.6
"""A red stroke's core: saturation above this, red the brightest channel, green at most a tenth
of the channel span above blue, and blue at most ``RED_CORE_BLUE`` of it above green ..."""
RED_CORE_BLUE = 0.25
RED_RIM_SATURATION = 0.3
"""... and its paler streaks within a third of a patch of the core: saturation above this, blue at
most ``RED_RIM_BLUE`` of the span above green."""
RED_RIM_BLUE = 0.33


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """The brightest channel of each pixel (element-wise over the three planes: numpy's reduction
    over a length-3 last axis is slow)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_min(rgb: np.ndarray) -> np.ndarray:
    """The darkest channel of each pixel."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_sum(rgb: np.ndarray) -> np.ndarray:
    """The sum of the three channels of each pixel."""
    return rgb[..., 0] + rgb[..., 1] + rgb[..., 2]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation, (max - min) / max."""
    high, low = channel_max(rgb), channel_min(rgb)
    return (high - low) / np.maximum(high, 1.0)


def ink_mask(rgb: np.ndarray, patch_px: int) -> np.ndarray:
    """Pen ink (pure blue/green, black, tinted black) and wide neutral-dark areas, dilated a little."""
    arr = rgb.astype(np.float32)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    sat = saturation(arr)
    blue = (b > r + 40) & (g > r + 10) & (sat > 0.35)
    green = (g > r + 15) & (g > b - 5) & (sat > 0.25)
    brightest = channel_max(arr)
    neutral_dark = (brightest < 150) & (sat < 0.15)
    radius = max(1, patch_px // 16)
    wide_dark = ndi.binary_opening(neutral_dark, iterations=radius)
    black = (brightest < 110) & (sat < 0.12)
    found = blue | green | wide_dark | black
    glass = (brightest > 200) & (sat < 0.1) & ~found
    tinted = tinted_black_strokes(arr, brightest, patch_px, glass=glass)
    red = red_strokes(arr, brightest, sat, patch_px, glass)
    return np.asarray(ndi.binary_dilation(found | tinted | red, iterations=radius))


def tinted_black_strokes(
    arr: np.ndarray, brightest: np.ndarray, patch_px: int, glass: np.ndarray | None = None
) -> np.ndarray:
    """Near-black strokes whose OD is neutral, wider than an eighth of a patch, with their rims.

    The core must be wide (an opening of a sixteenth of a patch), so thin dark stain never
    starts one. The rim grows from it only within a third of a patch, so it cannot run along a
    dark slide border into the rest of the image. With ``glass`` (bright, neutral pixels that no
    other ink test took), a stroke must lie on glass (``STROKE_GLASS_SHARE`` of the ring around it):
    a marker stroke is drawn on the slide, while a near-black sum boxed in by other strokes (a blue
    stroke crossing a grey-black one over tissue) is left to the under-ink rules, as before this rule
    existed. (A test of the distance to the nearest glass pixel was fragile: that sum came within 3-4
    pixels of glass at one point.)
    """
    od = np.log10(256.0 / (arr + 1.0))
    spread = (channel_max(od) - channel_min(od)) / np.maximum(channel_sum(od), 1e-3)
    radius = max(1, patch_px // 16)
    dark_neutral = (brightest < TINTED_BLACK_MAX) & (spread < TINTED_BLACK_OD_SPREAD)
    core = ndi.binary_opening(dark_neutral, iterations=radius)
    if not core.any():
        return core
    near = ndi.binary_dilation(core, iterations=max(1, patch_px // 3))
    rim = (brightest < TINTED_RIM_MAX) & (spread < TINTED_RIM_OD_SPREAD) & near
    strokes = np.asarray(ndi.binary_propagation(core, mask=rim | core))
    return strokes if glass is None else strokes_on_glass(strokes, glass, radius)


def red_strokes(
    arr: np.ndarray, brightest: np.ndarray, sat: np.ndarray, patch_px: int, glass: np.ndarray
) -> np.ndarray:
    """Crimson marker strokes lying on glass: a saturated core wider than an eighth of a patch,
    grown within a third of a patch into its paler streaks (constants ``RED_*``).

    Tissue under a red stroke that faces glass is kept only where the map closes around the
    stroke (``MapParams.under_ink_reach``): red ink adds OD in the colours of eosin, fuchsin and
    DAB, so the under-ink colour test (``oracles.under_ink``) cannot see those stains under it.
    Left alone: faint streaks with no saturated core nearby (eosin's colour), and red on glass
    that is not ink but passes the colour test, such as a blood clot beside the tissue (it
    would be taken for ink).
    """
    red, green, blue = arr[..., 0], arr[..., 1], arr[..., 2]
    span = np.maximum(sat * brightest, 1.0)  # max - min
    reddest = (red >= green) & (red >= blue) & (green - blue <= 0.1 * span)
    radius = max(1, patch_px // 16)
    core_px = reddest & (blue - green <= RED_CORE_BLUE * span) & (sat > RED_CORE_SATURATION)
    core = ndi.binary_opening(core_px, iterations=radius)
    if not core.any():
        return core
    near = ndi.binary_dilation(core, iterations=max(1, patch_px // 3))
    rim = reddest & (blue - green <= RED_RIM_BLUE * span) & (sat > RED_RIM_SATURATION) & near
    strokes = np.asarray(ndi.binary_propagation(core, mask=rim | core))
    return strokes_on_glass(strokes, glass, radius)


def strokes_on_glass(strokes: np.ndarray, glass: np.ndarray, radius: int) -> np.ndarray:
    """The strokes (connected pieces) of which at least ``STROKE_GLASS_SHARE`` of the one-pixel
    ring around lies within ``radius`` pixels of glass (worked out in the strokes' bounding box)."""
    if not strokes.any():
        return strokes
    box = padded_box(strokes, radius + 2)
    labels, count = ndi.label(strokes[box])
    near_glass = ndi.binary_dilation(glass[box], iterations=radius)
    keep = np.concatenate([[False], ring_shares(labels, count, near_glass, 1) >= STROKE_GLASS_SHARE])
    out = np.zeros_like(strokes)
    out[box] = keep[labels]
    return out
