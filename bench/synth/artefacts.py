"""Slide artefacts with exact masks: what defeats thresholds and fools a model at 40x.

Each artefact is a frozen record in level-0 px with two methods: ``coverage(grid)`` (its truth
mask, a fraction in [0, 1] per output pixel) and ``add_od(od, grid, stain)`` (adds its optical
density to the block's (3, h, w) OD before Beer-Lambert). Folds, faint tissue, focus and
illumination change the tissue or the light rather than adding ink, so the renderer applies
them (``synth.py``); their geometry lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from tissue_oracle.bench.synth.noise import (
    Grid,
    blobs,
    coarse_field,
    fbm,
    hash_uniform,
    mix_seed,
    value_noise,
)
from tissue_oracle.bench.synth.stains import SlideStain
from tissue_oracle.bench.synth.tissue import polyline_distance

#: Every artefact mask name written to the truth folder.
ARTEFACT_TYPES = (
    "speckle",
    "pen",
    "bubble",
    "dust",
    "debris",
    "crystal",
    "coverslip_edge",
    "slide_border",
    "fold",
    "faint",
    "seams",
)

Box = tuple[float, float, float, float]
PenColour = Literal["blue", "green", "black", "red"]
# Red: the core of HistoQC's pen_red example stroke (../shared/data/real/pen) is RGB about
# (202, 42, 63) on glass of about 245: natural-log ODs (the renderer's light * exp(-od)) of
# (0.19, 1.77, 1.36), which x1.4 below gives back.
_PEN_OD = {
    "blue": (0.85, 0.55, 0.08),
    "green": (0.85, 0.18, 0.62),
    "black": (0.75, 0.75, 0.72),
    "red": (0.14, 1.26, 0.97),
}
_NEUTRAL = np.array([0.58, 0.58, 0.57], np.float32)


def _soft(signed: np.ndarray, ds: float) -> np.ndarray:
    """Inside-fraction from a signed distance (level-0 px, negative inside)."""
    return np.clip(0.5 - signed / max(ds, 1.5), 0, 1).astype(np.float32)


def _disc_distance(grid: Grid, x: float, y: float) -> np.ndarray:
    return np.hypot(grid.xs[None, :] - x, grid.ys[:, None] - y).astype(np.float32)


def _add(od: np.ndarray, vec: np.ndarray | tuple[float, ...], amount: np.ndarray) -> None:
    od += np.asarray(vec, np.float32)[:, None, None] * amount[None]


@dataclass(frozen=True, kw_only=True)
class Speckle:
    """A zone of background stain precipitate: nucleus-sized dark granules in cell-like clusters."""

    kind: ClassVar[str] = "speckle"
    x: float
    y: float
    rx: float
    ry: float
    seed: int
    density: float = 0.5

    @property
    def bbox(self) -> Box:
        return (self.x - self.rx, self.y - self.ry, self.x + self.rx, self.y + self.ry)

    def _zone(self, grid: Grid) -> np.ndarray:
        d = np.hypot((grid.xs[None, :] - self.x) / self.rx, (grid.ys[:, None] - self.y) / self.ry)
        edge = 0.25 * fbm(grid, mix_seed(self.seed, 1), min(self.rx, self.ry) * 0.6, octaves=3)
        return np.clip((1 - d + edge) * 4, 0, 1).astype(np.float32)

    def coverage(self, grid: Grid) -> np.ndarray:
        return self._zone(grid)

    def add_od(self, od: np.ndarray, grid: Grid, stain: SlideStain) -> None:
        zone = self._zone(grid)
        clusters = np.clip(value_noise(grid, mix_seed(self.seed, 2), 90.0) * 3 + 0.6, 0, 1)
        presence = zone * self.density * (0.3 + 0.7 * clusters)
        grains = blobs(grid, mix_seed(self.seed, 3), cell=30, r_min=6, r_max=11, presence=presence)
        small = blobs(grid, mix_seed(self.seed, 4), cell=14, r_min=2, r_max=4, presence=presence * 0.2)
        texture = 0.75 + 0.35 * value_noise(grid, mix_seed(self.seed, 5), 5.0)
        _add(od, stain.precipitate, (grains * 1.1 + small * 0.7) * texture)
        # A faint cytoplasm-like haze around clusters is what makes precipitate pass for cells.
        patchy = np.clip(0.6 + 0.9 * fbm(grid, mix_seed(self.seed, 6), 28, octaves=2), 0, 1.5)
        haze = zone * clusters * 0.2 * patchy
        _add(od, stain.matrix[:, 1] / max(float(np.linalg.norm(stain.matrix[:, 1])), 1e-3), haze)


@dataclass(frozen=True, kw_only=True)
class Pen:
    """A marker stroke (a thick rough polyline), in blue, green, black or red ink; may cross tissue."""

    kind: ClassVar[str] = "pen"
    path: tuple[tuple[float, float], ...]
    width: float
    colour: PenColour
    seed: int

    @property
    def bbox(self) -> Box:
        xs, ys = [p[0] for p in self.path], [p[1] for p in self.path]
        pad = self.width
        return (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)

    def coverage(self, grid: Grid) -> np.ndarray:
        d = polyline_distance(self.path, grid.xs, grid.ys).astype(np.float32)
        rough = 0.12 * self.width * fbm(grid, mix_seed(self.seed, 1), self.width, octaves=4)
        return _soft(d - self.width / 2 + rough, grid.ds)

    def add_od(self, od: np.ndarray, grid: Grid, stain: SlideStain) -> None:
        streaks = 0.8 + 0.3 * fbm(grid, mix_seed(self.seed, 2), 30, octaves=3)
        _add(od, _PEN_OD[self.colour], self.coverage(grid) * 1.4 * streaks)


@dataclass(frozen=True, kw_only=True)
class Bubble:
    """An air bubble under the coverslip: a dark refractive rim, a slightly bright interior."""

    kind: ClassVar[str] = "bubble"
    x: float
    y: float
    radius: float

    @property
    def bbox(self) -> Box:
        r = self.radius * 1.05
        return (self.x - r, self.y - r, self.x + r, self.y + r)

    def coverage(self, grid: Grid) -> np.ndarray:
        return _soft(_disc_distance(grid, self.x, self.y) - self.radius, grid.ds)

    def add_od(self, od: np.ndarray, grid: Grid, stain: SlideStain) -> None:
        d = _disc_distance(grid, self.x, self.y)
        rim_w = 10 + 0.05 * self.radius
        rim = np.exp(-(((d - self.radius + rim_w) / rim_w) ** 2)) * _soft(d - self.radius, grid.ds)
        inner = _soft(d - self.radius, grid.ds)
        _add(od, _NEUTRAL, rim * 1.6 - inner * 0.04)


@dataclass(frozen=True, kw_only=True)
class Speck:
    """Dust, debris or a crystal: a small object with its own shape and colour."""

    kind: str
    """'dust', 'debris' or 'crystal'."""
    x: float
    y: float
    radius: float
    seed: int
    angle: float = 0.0
    sides: int = 6
    """Polygon sides (crystals)."""

    @property
    def bbox(self) -> Box:
        r = self.radius * 1.6
        return (self.x - r, self.y - r, self.x + r, self.y + r)

    def _signed(self, grid: Grid) -> np.ndarray:
        dx, dy = grid.xs[None, :] - self.x, grid.ys[:, None] - self.y
        if self.kind == "crystal":
            # Convex polygon: the largest distance beyond any edge's half-plane.
            angles = self.angle + 2 * math.pi * np.arange(self.sides) / self.sides
            apothem = self.radius * np.array([0.55 if k % 2 else 1.0 for k in range(self.sides)])
            planes = [dx * math.cos(a) + dy * math.sin(a) - h for a, h in zip(angles, apothem, strict=True)]
            return np.max(planes, axis=0).astype(np.float32)
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u, v = (dx * ca + dy * sa), (-dx * sa + dy * ca) / 0.6
        rough = fbm(grid, mix_seed(self.seed, 1), self.radius, octaves=4) * self.radius * 0.35
        return (np.hypot(u, v) - self.radius + rough).astype(np.float32)

    def coverage(self, grid: Grid) -> np.ndarray:
        return _soft(self._signed(grid), grid.ds)

    def add_od(self, od: np.ndarray, grid: Grid, stain: SlideStain) -> None:
        s = self._signed(grid)
        inside = _soft(s, grid.ds)
        grain = fbm(grid, mix_seed(self.seed, 2), max(self.radius / 3, 4), octaves=3)
        if self.kind == "crystal":
            edge = np.exp(-((s / 4) ** 2))
            _add(od, (0.10, 0.28, 0.62), inside * (0.35 + 0.25 * grain))
            _add(od, _NEUTRAL, edge * 0.9)
        elif self.kind == "debris":
            _add(od, (0.45, 0.58, 0.68), inside * (0.7 + 0.5 * grain))
        else:
            _add(od, _NEUTRAL, inside * (0.9 + 0.4 * grain))


@dataclass(frozen=True, kw_only=True)
class CoverslipEdge:
    """The coverslip's edge: a dark line across the slide, and untinted glass beyond it."""

    kind: ClassVar[str] = "coverslip_edge"
    axis: Literal["x", "y"]
    """'x': a vertical edge at level-0 x = position; 'y': a horizontal one."""
    position: float
    beyond: Literal[-1, 1]
    """Which side lies outside the coverslip: -1 below position, +1 above."""
    seed: int
    width: float = 40.0

    bbox: ClassVar[None] = None

    def _offset(self, grid: Grid) -> np.ndarray:
        coord = grid.xs[None, :] if self.axis == "x" else grid.ys[:, None]
        wobble = 12 * fbm(grid, mix_seed(self.seed, 1), 3000, octaves=2)
        return (coord - self.position + wobble) * self.beyond

    def coverage(self, grid: Grid) -> np.ndarray:
        return _soft(np.abs(self._offset(grid)) - self.width * 1.5, grid.ds)

    def add_od(self, od: np.ndarray, grid: Grid, stain: SlideStain) -> None:
        off = self._offset(grid)
        line = np.exp(-((off / self.width) ** 2))
        outside = _soft(-off, grid.ds)
        _add(od, _NEUTRAL, line * 1.3)
        _add(od, (0.02, 0.04, 0.08), outside)


@dataclass(frozen=True, kw_only=True)
class SlideBorder:
    """A dark frame at the slide's edge (label area, slide bevel, scanner holder)."""

    kind: ClassVar[str] = "slide_border"
    slide_width: int
    slide_height: int
    widths: tuple[float, float, float, float]
    """Band width at left, top, right, bottom, level-0 px (0 for none)."""
    seed: int

    bbox: ClassVar[None] = None

    def _signed(self, grid: Grid) -> np.ndarray:
        left, top, right, bottom = self.widths
        xs, ys = grid.xs[None, :], grid.ys[:, None]
        inset = np.maximum(
            np.maximum(left - xs, top - ys),
            np.maximum(xs - (self.slide_width - right), ys - (self.slide_height - bottom)),
        )
        rough = 40 * fbm(grid, mix_seed(self.seed, 1), 900, octaves=4)
        return (-(inset + rough)).astype(np.float32)

    def coverage(self, grid: Grid) -> np.ndarray:
        return _soft(self._signed(grid), grid.ds)

    def add_od(self, od: np.ndarray, grid: Grid, stain: SlideStain) -> None:
        grain = 0.85 + 0.3 * fbm(grid, mix_seed(self.seed, 2), 200, octaves=3)
        _add(od, _NEUTRAL, self.coverage(grid) * 2.6 * grain)


@dataclass(frozen=True, kw_only=True)
class Fold:
    """A fold across a piece: a band where the tissue lies twice (about double OD)."""

    piece: int
    """Index of the folded piece in the slide's piece list."""
    start: tuple[float, float]
    end: tuple[float, float]
    width: float

    def band(self, grid: Grid) -> np.ndarray:
        d = polyline_distance((self.start, self.end), grid.xs, grid.ys).astype(np.float32)
        return _soft(d - self.width / 2, grid.ds)


@dataclass(frozen=True, kw_only=True)
class FocusRegion:
    """An elliptical region scanned out of focus: Gaussian blur of ``sigma`` level-0 px."""

    x: float
    y: float
    rx: float
    ry: float
    sigma: float
    label: Literal["mild_blur", "out_of_focus"]

    @property
    def bbox(self) -> Box:
        return (self.x - self.rx, self.y - self.ry, self.x + self.rx, self.y + self.ry)

    def weight(self, grid: Grid) -> np.ndarray:
        """1 inside, 0 outside, with a soft rim of ~10% of the radius (focus drifts smoothly)."""
        d = np.hypot((grid.xs[None, :] - self.x) / self.rx, (grid.ys[:, None] - self.y) / self.ry)
        return np.clip((1 - d) / 0.1, 0, 1).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Illumination:
    """Uneven background light and scanner tile seams (a per-tile gain step)."""

    seed: int
    gradient: float
    """Peak fractional darkening of the light field (0.0-0.15)."""
    seam_spacing: float
    """Scanner tile side, level-0 px."""
    seam_gain: float
    """Largest per-tile gain step, as a fraction (0 for no seams)."""

    def gain(self, grid: Grid) -> np.ndarray:
        """Multiplicative light field (h, w) applied to the whole image."""

        def light(g: Grid) -> np.ndarray:
            return 1 - self.gradient * (0.5 + 0.5 * fbm(g, mix_seed(self.seed, 1), 12000, octaves=2))

        field = coarse_field(grid, 64.0, light)
        if self.seam_gain <= 0:
            return field
        tx = np.floor(grid.xs / self.seam_spacing).astype(np.int64)
        ty = np.floor(grid.ys / self.seam_spacing).astype(np.int64)
        ux, uy = np.arange(tx.min(), tx.max() + 1), np.arange(ty.min(), ty.max() + 1)
        steps = (hash_uniform(ux[None, :], uy[:, None], mix_seed(self.seed, 2)) - 0.5) * 2 * self.seam_gain
        per_pixel = np.take(np.take(steps.astype(np.float32), ty - uy[0], axis=0), tx - ux[0], axis=1)
        return field * (1 + per_pixel)

    def seam_coverage(self, grid: Grid) -> np.ndarray:
        """Pixels within 16 level-0 px (or one output pixel) of a tile seam, when seams exist."""
        if self.seam_gain <= 0:
            return np.zeros((grid.h, grid.w), np.float32)
        reach = max(16.0, grid.ds)
        fx = np.abs((grid.xs + self.seam_spacing / 2) % self.seam_spacing - self.seam_spacing / 2) < reach
        fy = np.abs((grid.ys + self.seam_spacing / 2) % self.seam_spacing - self.seam_spacing / 2) < reach
        return (fx[None, :] | fy[:, None]).astype(np.float32)


InkArtefact = Speckle | Pen | Bubble | Speck | CoverslipEdge | SlideBorder
