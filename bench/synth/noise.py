"""Seeded procedural fields that can be evaluated on any block of a slide at any downsample.

Everything here is a pure function of level-0 coordinates and a seed, so a tile rendered alone,
the same tile rendered inside a larger block, and the same area rendered at another downsample
all agree. Fields are *band-limited*: a detail smaller than about two output pixels is replaced
by its mean instead of being point-sampled, so coarse levels look like averaged level 0, not
aliasing noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, kw_only=True)
class Grid:
    """A block of output pixels: level-0 origin (x0, y0), ``w`` x ``h`` output pixels at ``ds``.

    Output pixel (i, j) covers level-0 [x0 + j*ds, x0 + (j+1)*ds) x [y0 + i*ds, y0 + (i+1)*ds);
    fields are sampled at its centre.
    """

    x0: float
    """Level-0 x of the block's left edge."""
    y0: float
    """Level-0 y of the block's top edge."""
    w: int
    """Width in output pixels."""
    h: int
    """Height in output pixels."""
    ds: float
    """Level-0 pixels per output pixel."""

    @property
    def xs(self) -> np.ndarray:
        """Level-0 x of each column's pixel centre, shape (w,), float64."""
        return self.x0 + (np.arange(self.w) + 0.5) * self.ds

    @property
    def ys(self) -> np.ndarray:
        """Level-0 y of each row's pixel centre, shape (h,), float64."""
        return self.y0 + (np.arange(self.h) + 0.5) * self.ds

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) in level-0 px."""
        return (self.x0, self.y0, self.x0 + self.w * self.ds, self.y0 + self.h * self.ds)

    def sub(self, r0: int, r1: int, c0: int, c1: int) -> Grid:
        """The sub-block of rows [r0, r1) and columns [c0, c1)."""
        return Grid(x0=self.x0 + c0 * self.ds, y0=self.y0 + r0 * self.ds, w=c1 - c0, h=r1 - r0, ds=self.ds)

    def grown(self, margin: int) -> Grid:
        """The block grown by ``margin`` output pixels on every side."""
        m = margin * self.ds
        return Grid(x0=self.x0 - m, y0=self.y0 - m, w=self.w + 2 * margin, h=self.h + 2 * margin, ds=self.ds)


def mix_seed(*parts: int) -> int:
    """Combine integers into one 64-bit seed (splitmix64 over the parts)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h ^= h >> 31
    return h


def hash_uniform(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) float64 per integer lattice point; ix, iy broadcast together."""
    a = np.asarray(ix, dtype=np.int64).view(np.uint64)
    b = np.asarray(iy, dtype=np.int64).view(np.uint64)
    h = a * np.uint64(0x9E3779B97F4A7C15) ^ b * np.uint64(0xC2B2AE3D27D4EB4F)
    h = h ^ np.uint64(seed & _MASK64)
    h = (h ^ (h >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _bspline_weights(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, int]:
    """Cubic B-spline interpolation matrix (len(coords), n) and the first lattice index."""
    u = coords / spacing
    i = np.floor(u).astype(np.int64)
    t = u - i
    start = int(i.min()) - 1
    n = int(i.max()) - start + 3
    w = np.zeros((len(coords), n), dtype=np.float32)
    rows = np.arange(len(coords))
    basis = (
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    )
    for k, b in enumerate(basis):
        w[rows, i - start + k - 1] = b
    return w, start


def value_noise(grid: Grid, seed: int, spacing: float) -> np.ndarray:
    """Smooth noise with lattice ``spacing`` (level-0 px), roughly in [-0.6, 0.6], mean 0.

    Returns zeros when the spacing is below two output pixels (band-limiting). Fine spacings
    (< 64 px) are sampled from a cached periodic table (period 1024 level-0 px, offset by seed),
    because evaluating them per block costs far more than the detail is worth.
    """
    if spacing < 2 * grid.ds:
        return np.zeros((grid.h, grid.w), dtype=np.float32)
    if spacing < _PERIODIC_BELOW:
        # Lattice counts on a half-octave ladder keep the cache small (a few tables per slide set).
        n = max(2, round(2 ** (round(2 * math.log2(_PERIOD / spacing)) / 2)))
        table = _periodic_table(n)
        ox, oy = seed % _PERIOD, (seed >> 20) % _PERIOD
        ix = (np.floor(grid.xs).astype(np.int64) + ox) % _PERIOD
        iy = (np.floor(grid.ys).astype(np.int64) + oy) % _PERIOD
        return np.take(np.take(table, iy, axis=0), ix, axis=1)
    wx, sx = _bspline_weights(grid.xs, spacing)
    wy, sy = _bspline_weights(grid.ys, spacing)
    ix = np.arange(sx, sx + wx.shape[1])[None, :]
    iy = np.arange(sy, sy + wy.shape[1])[:, None]
    lattice = (hash_uniform(ix, iy, seed) * 2 - 1).astype(np.float32)
    # Contract the lattice along its short side first: blocks are wide and short (256 x 2048),
    # and the cheaper order is up to 5x faster.
    ny, nx = lattice.shape
    if ny * nx * grid.w + grid.h * ny * grid.w < grid.h * ny * nx + grid.h * nx * grid.w:
        return wy @ (lattice @ wx.T)
    return (wy @ lattice) @ wx.T


_PERIOD = 1024
_PERIODIC_BELOW = 64.0


@functools.lru_cache(maxsize=64)
def _periodic_table(n: int) -> np.ndarray:
    """Value noise on a (_PERIOD, _PERIOD) torus with ``n`` lattice cells per period."""
    step = _PERIOD / n
    coords = np.arange(_PERIOD) + 0.5
    wx, sx = _bspline_weights(coords, step)
    idx = np.arange(sx, sx + wx.shape[1]) % n  # wrap the lattice so the table tiles seamlessly
    lattice = (hash_uniform(idx[None, :], idx[:, None], 0x5EED + n) * 2 - 1).astype(np.float32)
    table = wx @ lattice @ wx.T
    table.setflags(write=False)
    return table


def fbm(grid: Grid, seed: int, spacing: float, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Fractal noise: octaves of ``value_noise`` at spacing, spacing/2, ...; about [-1, 1]."""
    out = np.zeros((grid.h, grid.w), dtype=np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        total += amp
        s = spacing / 2**k
        if s >= 2 * grid.ds:
            out += amp * value_noise(grid, mix_seed(seed, k), s)
        amp *= gain
    return out * (1.6 / total)


def coarse_field(grid: Grid, step: float, func: Callable[[Grid], np.ndarray]) -> np.ndarray:
    """Evaluate ``func`` on a global lattice of ``step`` level-0 px and interpolate linearly to
    the block; exact (no lattice) when the block is already that coarse.

    For smooth fields (distances, rough outlines) that are costly per pixel. The lattice is
    aligned to multiples of ``step`` from the slide origin, so neighbouring blocks agree.
    """
    if grid.ds >= step:
        return np.asarray(func(grid), dtype=np.float32)
    ix, tx = _linear_taps(grid.xs, step)
    iy, ty = _linear_taps(grid.ys, step)
    x0, y0 = int(ix.min()), int(iy.min())
    lattice = Grid(x0=x0 * step, y0=y0 * step, w=int(ix.max()) - x0 + 2, h=int(iy.max()) - y0 + 2, ds=step)
    values = np.asarray(func(lattice), dtype=np.float32)
    cols = values[:, ix - x0] * (1 - tx) + values[:, ix - x0 + 1] * tx
    return cols[iy - y0] * (1 - ty)[:, None] + cols[iy - y0 + 1] * ty[:, None]


def _linear_taps(coords: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    u = coords / step - 0.5
    i = np.floor(u).astype(np.int64)
    return i, (u - i).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Cells:
    """Per-pixel view of a jittered lattice of square cells (side ``size`` level-0 px).

    ``rand(k)`` gives the k-th uniform random number of the cell each pixel falls in, and
    ``dx``/``dy`` the pixel's offset from the cell's top-left corner, in level-0 px.
    """

    size: float
    seed: int
    cx: np.ndarray
    cy: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    def rand(self, k: int) -> np.ndarray:
        ux = np.arange(int(self.cx.min()), int(self.cx.max()) + 1)
        uy = np.arange(int(self.cy.min()), int(self.cy.max()) + 1)
        table = hash_uniform(ux[None, :], uy[:, None], mix_seed(self.seed, k)).astype(np.float32)
        return np.take(np.take(table, self.cy - uy[0], axis=0), self.cx - ux[0], axis=1)


def cells(grid: Grid, size: float, seed: int) -> Cells:
    cx = np.floor(grid.xs / size).astype(np.int64)
    cy = np.floor(grid.ys / size).astype(np.int64)
    dx = (grid.xs - cx * size).astype(np.float32)[None, :]
    dy = (grid.ys - cy * size).astype(np.float32)[:, None]
    return Cells(size=size, seed=seed, cx=cx, cy=cy, dx=dx, dy=dy)


def blobs(
    grid: Grid,
    seed: int,
    *,
    cell: float,
    r_min: float,
    r_max: float,
    presence: np.ndarray | float,
    elongation: float = 1.0,
) -> np.ndarray:
    """Coverage in [0, 1] of round-to-oval blobs (nuclei, granules), at most one per cell.

    Radii are level-0 px. A cell holds a blob where its random draw is below ``presence`` (a
    field or a constant). Blobs stay inside their cell, so each pixel tests one cell only. Below
    ~1.5 output px per radius the blobs are replaced by their expected coverage (band-limiting).
    """
    r_mean_sq = (r_min**2 + r_min * r_max + r_max**2) / 3
    if r_min < 1.5 * grid.ds:
        mean_cover = math.pi * r_mean_sq * elongation / cell**2 * 0.775 * 1.1
        return np.clip(np.asarray(presence, dtype=np.float32) * mean_cover, 0, 1) * np.ones(
            (grid.h, grid.w), np.float32
        )
    c = cells(grid, cell, seed)
    radius = r_min + (r_max - r_min) * c.rand(0)
    long_r = np.minimum(radius * math.sqrt(elongation), cell / 2 - 1)
    free = cell - 2 * long_r
    px = long_r + free * c.rand(1) - c.dx
    py = long_r + free * c.rand(2) - c.dy
    if elongation != 1.0:
        ang = c.rand(3) * math.pi
        ca, sa = np.cos(ang), np.sin(ang)
        u = (px * ca + py * sa) / math.sqrt(elongation)
        v = (-px * sa + py * ca) * math.sqrt(elongation)
        dist = np.sqrt(u * u + v * v)
    else:
        dist = np.sqrt(px * px + py * py)
    # Irregular outlines and a darker rim (nuclear membrane, marginated chromatin).
    dist = dist * (1 + 0.22 * value_noise(grid, mix_seed(seed, 7), 7.0))
    cover = np.clip((radius - dist) / grid.ds + 0.5, 0, 1)
    rim = np.clip((dist / radius - 0.65) / 0.35, 0, 1)
    cover = cover * (0.55 + 0.45 * c.rand(6)) * (1 + 0.35 * rim)
    return np.where(c.rand(5) < presence, cover, 0).astype(np.float32)
