"""Tissue pieces: resolution-independent shapes and their level-0 microscopic texture.

A piece is a needle core (a thick polyline), a fragment, a TMA-like round core or a large
resection (noisy ellipses). Its texture is a set of *component* fields in [0, 1] (nuclei,
cytoplasm, collagen, membranes, elastic fibres, IHC marker) that a stain turns into colour
(``synth_stains``). Coordinates are level-0 px; textures are sized for 0.25 um/px (40x): nuclei
are 14-26 px across, renal tubules ~120-160 px, glomeruli ~400-500 px.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tissue_oracle.bench.synth.noise import Grid, blobs, cells, coarse_field, fbm, mix_seed, value_noise

PieceKind = Literal["core", "fragment", "tma", "resection"]
Texture = Literal["kidney", "gland", "stroma", "lymphoid"]

#: Order of the component axis in every (n_components, h, w) array.
COMPONENTS = ("nuclei", "cytoplasm", "collagen", "membrane", "elastic", "marker")
NUC, CYTO, COLL, MEMB, ELAS, MARK = range(len(COMPONENTS))


@dataclass(frozen=True, kw_only=True)
class Glomerulus:
    x: float
    """Centre, level-0 px."""
    y: float
    radius: float
    """Outer (capsule) radius, level-0 px."""


@dataclass(frozen=True, kw_only=True)
class Piece:
    """One piece of tissue on the slide, in level-0 px."""

    kind: PieceKind
    texture: Texture
    seed: int
    path: tuple[tuple[float, float], ...] = ()
    """Core centreline (kind 'core'); empty otherwise."""
    center: tuple[float, float] = (0.0, 0.0)
    """Centre of fragments, TMA cores and resections."""
    radii: tuple[float, float] = (0.0, 0.0)
    """Half-width of a core (both equal), or ellipse semi-axes."""
    angle: float = 0.0
    """Ellipse rotation, radians."""
    roughness: float = 0.1
    """Boundary perturbation as a fraction of the smaller radius."""
    intensity: float = 1.0
    """Stain uptake factor; about 0.3 makes faint or pale tissue."""
    glomeruli: tuple[Glomerulus, ...] = field(default_factory=tuple)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) in level-0 px, including the rough boundary."""
        pad = max(self.radii) * (1 + 2.2 * self.roughness) + 8
        if self.kind == "core":
            xs = [p[0] for p in self.path]
            ys = [p[1] for p in self.path]
        else:
            xs, ys = [self.center[0]], [self.center[1]]
        return (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)


def overlaps(box: tuple[float, float, float, float], grid: Grid) -> bool:
    x0, y0, x1, y1 = grid.bounds
    return not (box[2] <= x0 or box[0] >= x1 or box[3] <= y0 or box[1] >= y1)


def polyline_distance(path: tuple[tuple[float, float], ...], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    px, py = xs[None, :], ys[:, None]
    best = np.full((len(ys), len(xs)), np.inf)
    for (ax, ay), (bx, by) in itertools.pairwise(path):
        vx, vy = bx - ax, by - ay
        t = np.clip(((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy), 0, 1)
        best = np.minimum(best, np.hypot(px - ax - t * vx, py - ay - t * vy))
    return best


def signed_distance(piece: Piece, grid: Grid) -> np.ndarray:
    """Approximate signed distance (level-0 px, negative inside) to the piece's rough boundary.

    Evaluated on an 8 px lattice and interpolated: the outline has no detail finer than that.
    """
    r = min(piece.radii)

    def on_lattice(g: Grid) -> np.ndarray:
        xs, ys = g.xs, g.ys
        if piece.kind == "core":
            smooth = polyline_distance(piece.path, xs, ys) - piece.radii[0]
        else:
            ca, sa = math.cos(piece.angle), math.sin(piece.angle)
            dx, dy = xs[None, :] - piece.center[0], ys[:, None] - piece.center[1]
            u, v = (dx * ca + dy * sa) / piece.radii[0], (-dx * sa + dy * ca) / piece.radii[1]
            smooth = (np.sqrt(u * u + v * v) - 1) * r
        rough = fbm(g, mix_seed(piece.seed, 1), spacing=max(r * 0.9, 64), octaves=6, gain=0.55)
        return smooth + rough * (piece.roughness * r)

    return coarse_field(grid, 8.0, on_lattice)


def coverage(sdf: np.ndarray, ds: float) -> np.ndarray:
    """Antialiased inside-fraction of each output pixel from a signed distance in level-0 px."""
    return np.clip(0.5 - sdf / max(ds, 1.5), 0, 1).astype(np.float32)


def texture(piece: Piece, grid: Grid) -> np.ndarray:
    """Component fields (len(COMPONENTS), h, w) in [0, 1] for the piece's texture, before alpha."""
    fields = np.zeros((len(COMPONENTS), grid.h, grid.w), dtype=np.float32)
    seed = piece.seed
    if piece.texture in ("kidney", "gland"):
        epi, lumen, membrane, basal = _tubules(grid, seed, big=piece.texture == "gland")
    else:
        zeros = np.zeros((grid.h, grid.w), np.float32)
        epi, lumen, membrane, basal = zeros, zeros, zeros, zeros
    tuft, space, capsule = _glomeruli(piece.glomeruli, grid, seed)
    inter = np.clip(1 - epi - lumen - membrane, 0, 1) * (1 - tuft - space)
    epi = epi * (1 - tuft - space)
    membrane = np.maximum(membrane * (1 - tuft - space), capsule)

    mottle = 0.7 + 0.45 * fbm(grid, mix_seed(seed, 2), 24, octaves=3)
    fibres = _fibres(grid, seed)
    stroma_share = {"kidney": 0.5, "gland": 0.8, "stroma": 1.0, "lymphoid": 0.25}[piece.texture]
    fields[CYTO] = epi * mottle + inter * 0.3 + tuft * 0.45
    fields[COLL] = inter * (0.25 + 0.9 * fibres) * stroma_share
    fields[MEMB] = membrane + tuft * 0.5 * (0.6 + 0.4 * mottle)
    fields[ELAS] = inter * _elastic(grid, seed) * (0.8 if piece.texture == "stroma" else 0.4)
    fields[NUC] = _nuclei(grid, seed, piece.texture, epi * (0.3 + 0.9 * basal), inter, tuft)
    positive = np.clip(2.5 * fbm(grid, mix_seed(seed, 9), 700, octaves=2) + 0.1, 0, 1)
    fields[MARK] = (fields[CYTO] * 0.9 + fields[NUC] * 0.4) * positive
    return np.clip(fields, 0, 1.2)


def _tubules(grid: Grid, seed: int, *, big: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epithelium, lumen, basement-membrane and basal-band fields of a tubule (or gland) per cell."""
    size = 420.0 if big else 230.0
    c = cells(grid, size, mix_seed(seed, 3))
    ra = size * (0.40 + 0.08 * c.rand(0))
    rb = ra * (0.6 + 0.4 * c.rand(1))
    free = size - 2 * ra
    px = ra + free * c.rand(2) - c.dx
    py = ra + free * c.rand(3) - c.dy
    ang = c.rand(4) * math.pi
    ca, sa = np.cos(ang), np.sin(ang)
    u, v = (px * ca + py * sa) / ra, (-px * sa + py * ca) / rb
    rho = np.sqrt(u * u + v * v)
    rho = rho * (1 + 0.1 * fbm(grid, mix_seed(seed, 4), 50, octaves=3))
    present = (c.rand(5) < (0.9 if not big else 0.75)).astype(np.float32)
    soft = max(grid.ds, 1.5) / ra  # one output pixel, in rho units
    lumen_r = (0.55 + 0.2 * c.rand(6)) if big else (0.2 + 0.25 * c.rand(6))
    inside = np.clip((0.9 - rho) / soft + 0.5, 0, 1) * present
    lumen = np.clip((lumen_r - rho) / soft + 0.5, 0, 1) * present
    ring = np.clip((0.05 - np.abs(rho - 0.94)) / soft + 0.5, 0, 1) * present
    basal = np.clip(1 - np.abs(rho - 0.74) / 0.14, 0, 1) * present
    return inside - lumen, lumen, ring, basal


def _glomeruli(
    gloms: tuple[Glomerulus, ...], grid: Grid, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tuft, Bowman's space and capsule fields for the glomeruli that touch the block."""
    tuft = np.zeros((grid.h, grid.w), np.float32)
    space, capsule = tuft.copy(), tuft.copy()
    for g in gloms:
        if not overlaps((g.x - g.radius, g.y - g.radius, g.x + g.radius, g.y + g.radius), grid):
            continue
        d = np.hypot(grid.xs[None, :] - g.x, grid.ys[:, None] - g.y).astype(np.float32) / g.radius
        lobes = 0.06 * fbm(grid, mix_seed(seed, 5, int(g.x)), g.radius * 0.5, octaves=2)
        soft = max(grid.ds, 1.5) / g.radius
        t = np.clip((0.8 + lobes - d) / soft + 0.5, 0, 1)
        holes = value_noise(grid, mix_seed(seed, 6), 18.0) > 0.18  # capillary lumina
        tuft = np.maximum(tuft, t * np.where(holes, 0.15, 1.0))
        s = np.clip((0.92 - d) / soft + 0.5, 0, 1) - t
        space = np.maximum(space, s)
        capsule = np.maximum(capsule, np.clip((0.02 - np.abs(d - 0.94)) / soft + 0.5, 0, 1))
    return tuft, space, capsule


def _fibres(grid: Grid, seed: int) -> np.ndarray:
    """Wavy collagen fibre bundles (~16 px period) in [0, 1]; their mean (0.3) when too fine.

    The phase is warped at two scales, so fibres curve and fan out; a
    bundle mask leaves looser, paler gaps between bundles.
    """
    period = 16.0
    if grid.ds * 2 > period:
        return np.full((grid.h, grid.w), 0.3, np.float32)
    theta = math.pi * (mix_seed(seed, 7) % 1000) / 1000
    # Phase in float64 then wrapped, so float32 keeps precision far from the origin; a large slow
    # warp bends whole bundles.
    along64 = grid.xs[None, :] * math.cos(theta) + grid.ys[:, None] * math.sin(theta)
    along = (along64 % period).astype(np.float32)
    warp = 60.0 * fbm(grid, mix_seed(seed, 15), 900, octaves=2)
    warp += 22.0 * fbm(grid, mix_seed(seed, 8), 170, octaves=2)
    wave = 0.5 + 0.5 * np.sin(along * (2 * math.pi / period) + warp)
    bundles = np.clip(0.55 + 1.6 * fbm(grid, mix_seed(seed, 16), 90, octaves=2), 0, 1)
    return (wave * wave * bundles).astype(np.float32)


def _elastic(grid: Grid, seed: int) -> np.ndarray:
    """Thin wavy elastic fibres as iso-lines of a noise field, in [0, 1]."""
    width = 0.035
    if grid.ds > 8:
        return np.full((grid.h, grid.w), 0.08, np.float32)
    f = fbm(grid, mix_seed(seed, 10), 220, octaves=3)
    return np.exp(-((np.sin(f * 9.0) / width) ** 2) * 0.5).astype(np.float32) * (f > -0.1)


def _nuclei(
    grid: Grid, seed: int, tex: Texture, epi: np.ndarray, inter: np.ndarray, tuft: np.ndarray
) -> np.ndarray:
    """Round epithelial/immune nuclei plus spindle stromal nuclei, with chromatin texture."""
    inflam = np.clip(1.8 * fbm(grid, mix_seed(seed, 11), 500, octaves=2) - 0.2, 0, 1)
    dense = 0.85 if tex == "lymphoid" else 0.0
    presence = epi * 0.55 + inter * (0.08 + 0.7 * inflam + dense) + tuft * 0.85
    round_n = blobs(grid, mix_seed(seed, 12), cell=32, r_min=7, r_max=12, presence=presence)
    spindle = blobs(
        grid, mix_seed(seed, 13), cell=44, r_min=6, r_max=8, presence=inter * 0.35, elongation=3.5
    )
    chromatin = 0.8 + 0.3 * value_noise(grid, mix_seed(seed, 14), 5.0)
    return np.clip(np.maximum(round_n, spindle) * chromatin, 0, 1)
