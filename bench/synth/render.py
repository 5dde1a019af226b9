"""Render any block of a synthetic slide at any downsample, and its truth masks.

``render_block`` is the ``tile_source`` behind the pyramid writer: a pure function of the slide
spec and the block, so tiles agree across borders and levels agree with each other.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from tissue_oracle.bench.synth.artefacts import (
    FocusRegion,
    Fold,
    Illumination,
    InkArtefact,
)
from tissue_oracle.bench.synth.noise import Grid, mix_seed
from tissue_oracle.bench.synth.stains import SlideStain, optical_density
from tissue_oracle.bench.synth.tissue import Piece, coverage, overlaps, signed_distance, texture
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS

# Blur below this many output pixels of sigma is invisible at that level; skip the work.
_MIN_VISIBLE_SIGMA = 0.35
# Levels at this downsample or coarser are box averages of a render at _FINE_DS (adds ~7% to the
# cost of level 0), computed in chunks of about _FINE_PIXELS fine pixels.
_SUPERSAMPLE_FROM = 16
_FINE_DS = 4
_FINE_PIXELS = 1 << 19


@dataclass(frozen=True, kw_only=True)
class SlideSpec:
    """Everything needed to render a synthetic slide: a pure description in level-0 px."""

    preset: str
    seed: int
    width: int
    height: int
    stain: SlideStain
    pieces: tuple[Piece, ...]
    inks: tuple[InkArtefact, ...]
    """Artefacts that add optical density (speckle, pen, bubbles, specks, edges, borders)."""
    folds: tuple[Fold, ...]
    focus: tuple[FocusRegion, ...]
    illumination: Illumination
    noise: float = 1.2
    """Sensor noise, standard deviation in 8-bit levels."""


def _crop(grid: Grid, box: tuple[float, float, float, float] | None) -> tuple[int, int, int, int] | None:
    """Rows/cols [r0, r1) x [c0, c1) of ``grid`` that ``box`` touches; None when it misses."""
    if box is None:
        return (0, grid.h, 0, grid.w)
    if not overlaps(box, grid):
        return None
    c0 = max(0, math.floor((box[0] - grid.x0) / grid.ds))
    c1 = min(grid.w, math.ceil((box[2] - grid.x0) / grid.ds))
    r0 = max(0, math.floor((box[1] - grid.y0) / grid.ds))
    r1 = min(grid.h, math.ceil((box[3] - grid.y0) / grid.ds))
    return None if r1 <= r0 or c1 <= c0 else (r0, r1, c0, c1)


def _piece_od(spec: SlideSpec, index: int, piece: Piece, grid: Grid, od: np.ndarray) -> None:
    """Add one piece's optical density to ``od`` (3, h, w), texturing only where it lies."""
    alpha = coverage(signed_distance(piece, grid), grid.ds)
    rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
    if len(rows) == 0:
        return
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = grid.sub(r0, r1, c0, c1)
    fields = texture(piece, sub) * (alpha[r0:r1, c0:c1] * piece.intensity)[None]
    piece_od = optical_density(spec.stain, fields)
    for fold in spec.folds:
        if fold.piece == index:
            piece_od *= 1 + 0.9 * fold.band(sub)[None]
    od[:, r0:r1, c0:c1] += piece_od


def render_sharp(spec: SlideSpec, grid: Grid) -> np.ndarray:
    """Linear RGB in [0, 1], shape (h, w, 3), before focus blur and sensor noise."""
    od = np.zeros((3, grid.h, grid.w), dtype=np.float32)
    for index, piece in enumerate(spec.pieces):
        if overlaps(piece.bbox, grid):
            _piece_od(spec, index, piece, grid, od)
    for ink in spec.inks:
        window = _crop(grid, ink.bbox)
        if window is not None:
            r0, r1, c0, c1 = window
            ink.add_od(od[:, r0:r1, c0:c1], grid.sub(r0, r1, c0, c1), spec.stain)
    light = spec.illumination.gain(grid)[None] * spec.stain.glass[:, None, None]
    return np.moveaxis(light * np.exp(-od), 0, -1)


def render_block(
    spec: SlideSpec, level0_x: int, level0_y: int, level0_w: int, level0_h: int, ds: int
) -> np.ndarray:
    """uint8 RGB (ceil(h/ds), ceil(w/ds), 3) of a level-0 region rendered natively at ``ds``."""
    grid = Grid(x0=level0_x, y0=level0_y, w=math.ceil(level0_w / ds), h=math.ceil(level0_h / ds), ds=ds)
    rgb = render_linear(spec, grid) if ds < _SUPERSAMPLE_FROM else _supersampled(spec, grid)
    out = rgb * 255 + _sensor_noise(grid.h, grid.w, mix_seed(spec.seed, level0_x, level0_y, ds)) * spec.noise
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render_linear(spec: SlideSpec, grid: Grid) -> np.ndarray:
    """RGB in [0, 1], (h, w, 3): ``render_sharp`` with the out-of-focus regions blurred."""
    rgb = render_sharp(spec, grid)
    for region in spec.focus:
        sigma = region.sigma / grid.ds
        reach = 3 * region.sigma
        box = region.bbox
        grown = (box[0] - reach, box[1] - reach, box[2] + reach, box[3] + reach)
        if sigma < _MIN_VISIBLE_SIGMA or _crop(grid, grown) is None:
            continue
        margin = math.ceil(3 * sigma) + 1
        blurred = gaussian_filter(render_sharp(spec, grid.grown(margin)), (sigma, sigma, 0), mode="nearest")
        weight = region.weight(grid)[..., None]
        rgb = rgb * (1 - weight) + blurred[margin:-margin, margin:-margin] * weight
    return rgb


def _supersampled(spec: SlideSpec, grid: Grid) -> np.ndarray:
    """Coarse levels as box averages of a render at ``_FINE_DS``, a few output rows at a time.

    Light is averaged after Beer-Lambert, as a scanner's optics and a resize of level 0 do; a
    field averaged before it would come out darker (exp of a mean < mean of exps).
    """
    f = int(grid.ds // _FINE_DS)
    rows = max(1, _FINE_PIXELS // (grid.w * f * f))
    out = np.empty((grid.h, grid.w, 3), np.float32)
    for r0 in range(0, grid.h, rows):
        r1 = min(grid.h, r0 + rows)
        fine = Grid(x0=grid.x0, y0=grid.y0 + r0 * grid.ds, w=grid.w * f, h=(r1 - r0) * f, ds=_FINE_DS)
        out[r0:r1] = render_linear(spec, fine).reshape(r1 - r0, f, grid.w, f, 3).mean(axis=(1, 3))
    return out


@functools.lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    table = np.random.default_rng(0x5E45).standard_normal((512, 512, 3)).astype(np.float32)
    table.setflags(write=False)
    return table


def _sensor_noise(h: int, w: int, seed: int) -> np.ndarray:
    """Unit Gaussian pixel noise (h, w, 3), cut from a cached table at a seeded offset (cheap)."""
    table = _noise_table()
    rows = (np.arange(h) + seed % 512) % 512
    cols = (np.arange(w) + (seed >> 16) % 512) % 512
    return np.take(np.take(table, rows, axis=0), cols, axis=1)


def truth_block(spec: SlideSpec, grid: Grid) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(tissue bool, artefact masks name -> bool, focus codes uint8) for one block of truth pixels.

    Tissue is where the pieces' inside-fraction is at least 0.5. Dust, debris and crystals are
    marked wherever they touch a pixel (> 0.05), since they are smaller than a truth pixel.
    """
    alphas = [
        coverage(signed_distance(p, grid), grid.ds) if overlaps(p.bbox, grid) else None for p in spec.pieces
    ]
    zero = np.zeros((grid.h, grid.w), np.float32)
    union = np.clip(sum((a for a in alphas if a is not None), zero.copy()), 0, 1)
    tissue = union >= 0.5
    masks: dict[str, np.ndarray] = {}
    for ink in spec.inks:
        window = _crop(grid, ink.bbox)
        cover = zero.copy()
        if window is not None:
            r0, r1, c0, c1 = window
            cover[r0:r1, c0:c1] = ink.coverage(grid.sub(r0, r1, c0, c1))
        small = ink.kind in ("dust", "debris", "crystal")
        hit = cover > 0.05 if small else cover >= 0.5
        masks[ink.kind] = masks.get(ink.kind, np.zeros_like(tissue)) | hit
    fold = zero.copy()
    for f in spec.folds:
        a = alphas[f.piece]
        if a is not None:
            fold = np.maximum(fold, f.band(grid) * a)
    masks["fold"] = fold >= 0.5
    faint = [a for a, p in zip(alphas, spec.pieces, strict=True) if a is not None and p.intensity < 0.6]
    masks["faint"] = np.clip(sum(faint, zero.copy()), 0, 1) >= 0.5
    masks["seams"] = spec.illumination.seam_coverage(grid) > 0
    focus = np.where(tissue, FOCUS_CODES["sharp"], NO_FOCUS).astype(np.uint8)
    for region in spec.focus:
        focus[(region.weight(grid) >= 0.5) & tissue] = FOCUS_CODES[region.label]
    return tissue, masks, focus
