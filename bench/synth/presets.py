"""Presets: seeded recipes that lay out tissue, stain and artefacts on a slide.

``leica-like`` mimics Leica-75 (H&E, Jones and EVG renal biopsy cores, ordinary artefacts);
``stress`` mimics Stress-32 (artefact-heavy, mostly Jones and EVG); ``hard`` is stress at real
scale (marker strokes several patches wide, IHC too); ``faint-stress`` and ``faint-hard`` are
those two with every piece faint (pale, under-stained: the hardest case for any detector, and
the one thresholds fail on); ``red-pen`` is hard with red marker among H&E and EVG; ``zoo``
shows every stain and every artefact; ``tiny`` is a small slide for unit tests. Same preset +
seed -> same slide.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from typing import cast

import numpy as np

from tissue_oracle.bench.synth.artefacts import (
    Bubble,
    CoverslipEdge,
    FocusRegion,
    Fold,
    Illumination,
    InkArtefact,
    Pen,
    PenColour,
    SlideBorder,
    Speck,
    Speckle,
)
from tissue_oracle.bench.synth.noise import mix_seed
from tissue_oracle.bench.synth.render import SlideSpec
from tissue_oracle.bench.synth.stains import STAINS, draw_stain
from tissue_oracle.bench.synth.tissue import Glomerulus, Piece
from tissue_oracle.tools.errors import ConfigError

Box = tuple[float, float, float, float]


@dataclass(frozen=True, kw_only=True)
class Preset:
    """How a preset draws a slide. Counts are (low, high) inclusive ranges; p_ are probabilities."""

    size: tuple[int, int]
    """Default (width, height), level-0 px."""
    stains: dict[str, float]
    """Stain family -> weight."""
    pieces: dict[str, float]
    """Piece kind -> weight."""
    n_pieces: tuple[int, int]
    speckle: tuple[int, int]
    pens: tuple[int, int]
    bubbles: tuple[int, int]
    dust: tuple[int, int]
    debris: tuple[int, int]
    crystals: tuple[int, int]
    focus: tuple[int, int]
    p_coverslip: float
    p_border: float
    p_fold: float
    p_faint: float
    gradient: float
    seam_gain: float
    every_artefact: bool = False
    """Guarantee one piece of each kind, a fold and a faint piece (zoo)."""
    speckle_size: float = 1.0
    """Scale of precipitate zones (stress has larger ones)."""
    pen_width_px: tuple[float, float] | None = None
    """Marker stroke width range in level-0 px, not scaled with the slide (a real marker is
    0.1-1 mm: 400-4000 px at 0.25 mpp); None: 90-220 px scaled with the slide."""
    pen_colours: tuple[PenColour, ...] = ("blue", "green", "black")
    """The marker inks drawn from (in turn on slides with three or more strokes)."""


PRESETS: dict[str, Preset] = {
    "leica-like": Preset(
        size=(14336, 10240),
        stains={"he": 1, "jones": 1, "evg": 1},
        pieces={"core": 0.8, "fragment": 0.2},
        n_pieces=(2, 4),
        speckle=(0, 1),
        pens=(0, 1),
        bubbles=(0, 1),
        dust=(3, 12),
        debris=(0, 2),
        crystals=(0, 0),
        focus=(0, 1),
        p_coverslip=0.3,
        p_border=0.3,
        p_fold=0.2,
        p_faint=0.1,
        gradient=0.04,
        seam_gain=0.0,
    ),
    "stress": Preset(
        size=(12288, 12288),
        stains={"jones": 0.45, "evg": 0.4, "he": 0.15},
        pieces={"core": 0.6, "fragment": 0.4},
        n_pieces=(2, 4),
        speckle=(3, 5),
        pens=(2, 4),
        bubbles=(1, 3),
        dust=(15, 40),
        debris=(3, 8),
        crystals=(1, 5),
        focus=(1, 2),
        p_coverslip=0.7,
        p_border=0.8,
        p_fold=0.6,
        p_faint=0.5,
        gradient=0.12,
        seam_gain=0.03,
        speckle_size=1.4,
    ),
    # Stress at real scale: marker strokes several patches wide, more precipitate and faint tissue.
    "hard": Preset(
        size=(12288, 12288),
        stains={"jones": 0.3, "evg": 0.3, "he": 0.2, "ihc": 0.2},
        pieces={"core": 0.6, "fragment": 0.4},
        n_pieces=(2, 4),
        speckle=(3, 5),
        pens=(2, 3),
        bubbles=(1, 3),
        dust=(15, 40),
        debris=(3, 8),
        crystals=(1, 5),
        focus=(1, 2),
        p_coverslip=0.7,
        p_border=0.8,
        p_fold=0.6,
        p_faint=0.6,
        gradient=0.12,
        seam_gain=0.03,
        speckle_size=1.4,
        pen_width_px=(400.0, 1600.0),
    ),
    "zoo": Preset(
        size=(12288, 9216),
        stains={s: 1 for s in STAINS},
        pieces={"core": 1, "fragment": 1, "tma": 1, "resection": 1},
        n_pieces=(4, 5),
        speckle=(1, 2),
        pens=(3, 3),
        bubbles=(1, 2),
        dust=(10, 20),
        debris=(2, 4),
        crystals=(2, 4),
        focus=(2, 2),
        p_coverslip=1.0,
        p_border=1.0,
        p_fold=0.3,
        p_faint=0.2,
        gradient=0.08,
        seam_gain=0.025,
        every_artefact=True,
    ),
    "tiny": Preset(
        size=(2048, 1536),
        stains={"he": 1, "jones": 1, "evg": 1},
        pieces={"core": 1, "fragment": 0.5},
        n_pieces=(2, 2),
        speckle=(1, 1),
        pens=(1, 1),
        bubbles=(1, 1),
        dust=(3, 5),
        debris=(1, 1),
        crystals=(1, 1),
        focus=(1, 1),
        p_coverslip=0.0,
        p_border=0.5,
        p_fold=0.5,
        p_faint=0.0,
        gradient=0.05,
        seam_gain=0.03,
    ),
}
# Every piece faint: pale special stains and under-stained tissue, drawn on stress and hard slides.
PRESETS["faint-stress"] = replace(PRESETS["stress"], p_faint=1.0)
PRESETS["faint-hard"] = replace(PRESETS["hard"], p_faint=1.0)
# Red marker at real scale among the stains whose red it must not be taken for: eosin (H&E) and
# van Gieson's fuchsin (EVG). Red is the third common marker colour, and the one closest to stain.
PRESETS["red-pen"] = replace(
    PRESETS["hard"],
    stains={"he": 0.4, "evg": 0.4, "jones": 0.1, "ihc": 0.1},
    pen_colours=("red", "red", "blue"),
)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown synth preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_spec(
    preset: str, seed: int, *, width: int | None = None, height: int | None = None, stain: str | None = None
) -> SlideSpec:
    """Draw a slide for ``preset`` and ``seed``; width/height (level-0 px) and stain override."""
    cfg = get_preset(preset)
    w, h = width or cfg.size[0], height or cfg.size[1]
    if w < 256 or h < 256:
        raise ConfigError(f"synthetic slides must be at least 256 px a side, got {w}x{h}")
    rng = np.random.default_rng(mix_seed(seed, zlib.crc32(preset.encode())))
    stain_name = stain or str(rng.choice(list(cfg.stains), p=_weights(cfg.stains)))
    slide_stain = draw_stain(stain_name, rng)
    # Tissue shrinks with the slide, but no further than nuclei allow on small test slides.
    scale = float(np.clip(min(w, h) / 10000, min(0.5, min(w, h) / 3000), 3.0))
    pieces = _with_faint(cfg, rng, _lay_out_pieces(cfg, rng, w, h, scale))
    taken = [p.bbox for p in pieces]
    inks: list[InkArtefact] = []
    inks += _speckle_zones(cfg, rng, w, h, scale, taken)
    inks += _pens(cfg, rng, w, h, scale, pieces)
    inks += _specks(cfg, rng, w, h, scale)
    inks += _edges(cfg, rng, w, h, scale)
    folded = [rng.random() < cfg.p_fold or (cfg.every_artefact and i == 0) for i in range(len(pieces))]
    folds = tuple(
        Fold(
            piece=i,
            start=_point_in(p, rng, 0.9),
            end=_point_in(p, rng, 0.9),
            width=rng.uniform(60, 180) * scale,
        )
        for i, p in enumerate(pieces)
        if folded[i]
    )
    focus = tuple(_focus_region(rng, p, scale) for p in _choose(rng, pieces, cfg.focus))
    illum = Illumination(
        seed=mix_seed(seed, 77),
        gradient=cfg.gradient,
        seam_spacing=float(rng.choice([1024, 1536, 2048])),
        seam_gain=cfg.seam_gain * rng.uniform(0.5, 1.0),
    )
    return SlideSpec(
        preset=preset, seed=seed, width=w, height=h, stain=slide_stain, pieces=tuple(pieces),
        inks=tuple(inks), folds=folds, focus=focus, illumination=illum,
    )  # fmt: skip


def _with_faint(cfg: Preset, rng: np.random.Generator, pieces: list[Piece]) -> list[Piece]:
    """Make some pieces faint (pale, under-stained); zoo always has one, the last."""
    out = []
    for i, p in enumerate(pieces):
        faint = rng.random() < cfg.p_faint or (cfg.every_artefact and i == len(pieces) - 1)
        out.append(Piece(**{**p.__dict__, "intensity": float(rng.uniform(0.2, 0.35))}) if faint else p)
    return out


def _between(rng: np.random.Generator, low: float, high: float) -> float:
    """Uniform in [low, high]; the midpoint when the range is empty (small slides)."""
    return float(rng.uniform(low, high)) if high > low else (low + high) / 2


def _weights(table: dict[str, float]) -> np.ndarray:
    v = np.asarray(list(table.values()), dtype=float)
    return v / v.sum()


def _count(rng: np.random.Generator, span: tuple[int, int]) -> int:
    return int(rng.integers(span[0], span[1] + 1))


def _free(box: Box, taken: list[Box], gap: float) -> bool:
    return all(
        box[2] + gap < t[0] or box[0] - gap > t[2] or box[3] + gap < t[1] or box[1] - gap > t[3]
        for t in taken
    )


def _lay_out_pieces(cfg: Preset, rng: np.random.Generator, w: int, h: int, scale: float) -> list[Piece]:
    """Place non-overlapping pieces, retrying positions; the first always fits (made smaller)."""
    pieces: list[Piece] = []
    want = _count(rng, cfg.n_pieces)
    margin = 0.06 * min(w, h)
    for attempt in range(want * 30):
        if len(pieces) == want:
            break
        kind = str(rng.choice(list(cfg.pieces), p=_weights(cfg.pieces)))
        if cfg.every_artefact and len(pieces) < len(cfg.pieces):  # zoo: one of each kind first
            kind = list(cfg.pieces)[len(pieces)]
        elif not pieces:  # the first piece is the preset's main kind (a needle core on leica-like)
            kind = max(cfg.pieces, key=lambda k: cfg.pieces[k])
        shrink = 0.85 ** (attempt // 10)
        piece = _draw_piece(kind, rng, w, h, scale * shrink, seed=int(rng.integers(2**62)))
        b = piece.bbox
        inside = b[0] > margin and b[1] > margin and b[2] < w - margin and b[3] < h - margin
        if inside and _free(b, [p.bbox for p in pieces], 0.03 * min(w, h)):
            pieces.append(piece)
    return pieces


def _draw_piece(kind: str, rng: np.random.Generator, w: int, h: int, scale: float, *, seed: int) -> Piece:
    texture = str(rng.choice(["kidney", "gland", "stroma", "lymphoid"], p=[0.6, 0.15, 0.15, 0.1]))
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    if kind == "core":
        texture = "kidney" if rng.random() < 0.85 else texture
        r = rng.uniform(330, 560) * scale
        long_side = max(w, h)
        length = rng.uniform(0.3, 0.62) * (long_side - 2.6 * r - 0.12 * min(w, h))
        ang = (0.0 if w >= h else math.pi / 2) + rng.normal(0, 0.1)
        # Centre the core along the long axis so that it fits; cores lie side by side across it.
        half = 0.5 * length + 1.4 * r
        along = _between(rng, half + 0.06 * min(w, h), long_side - half - 0.06 * min(w, h))
        cx, cy = (along, cy) if w >= h else (cx, along)
        ts = np.linspace(-0.5, 0.5, 6)
        wiggle = rng.normal(0, 0.25 * r, 6)
        path = tuple(
            (
                cx + t * length * math.cos(ang) - q * math.sin(ang),
                cy + t * length * math.sin(ang) + q * math.cos(ang),
            )
            for t, q in zip(ts, wiggle, strict=True)
        )
        piece = Piece(kind="core", texture=texture, seed=seed, path=path, radii=(r, r), roughness=0.12)  # type: ignore[arg-type]
    else:
        size = {"fragment": (200, 800), "tma": (1100, 1500), "resection": (1600, 2600)}[kind]
        rough = {"fragment": 0.35, "tma": 0.04, "resection": 0.18}[kind]
        ra = rng.uniform(*size) * scale
        rb = ra if kind == "tma" else ra * rng.uniform(0.55, 0.95)
        piece = Piece(
            kind=kind, texture=texture, seed=seed, center=(cx, cy), radii=(ra, rb),  # type: ignore[arg-type]
            angle=rng.uniform(0, math.pi), roughness=rough,
        )  # fmt: skip
    gloms = _glomeruli(piece, rng, scale) if piece.texture == "kidney" else ()
    return Piece(**{**piece.__dict__, "glomeruli": gloms})


def _glomeruli(piece: Piece, rng: np.random.Generator, scale: float) -> tuple[Glomerulus, ...]:
    out: list[Glomerulus] = []
    area = (piece.bbox[2] - piece.bbox[0]) * (piece.bbox[3] - piece.bbox[1])
    for _ in range(int(area / 2.5e6) + 1):
        rad = rng.uniform(180, 250) * min(1.0, max(scale, 0.6))
        if min(piece.radii) < 1.6 * rad:  # a glomerulus never outgrows its piece
            continue
        x, y = _point_in(piece, rng, 0.55)
        if all(math.hypot(x - g.x, y - g.y) > rad + g.radius + 40 for g in out):
            out.append(Glomerulus(x=x, y=y, radius=rad))
    return tuple(out)


def _point_in(piece: Piece, rng: np.random.Generator, reach: float) -> tuple[float, float]:
    """A point well inside the piece: ``reach`` is the fraction of its half-width to stray."""
    if piece.kind == "core":
        k = int(rng.integers(len(piece.path) - 1))
        t = rng.uniform(0.1, 0.9)
        (ax, ay), (bx, by) = piece.path[k], piece.path[k + 1]
        r = piece.radii[0] * reach * 0.6
        return (ax + t * (bx - ax) + rng.uniform(-r, r), ay + t * (by - ay) + rng.uniform(-r, r))
    ang, rho = rng.uniform(0, 2 * math.pi), math.sqrt(rng.random()) * reach * 0.7
    return (
        piece.center[0] + rho * piece.radii[0] * math.cos(ang),
        piece.center[1] + rho * piece.radii[1] * math.sin(ang),
    )


def _choose(rng: np.random.Generator, pieces: list[Piece], span: tuple[int, int]) -> list[Piece]:
    n = min(_count(rng, span), len(pieces))
    return [pieces[i] for i in rng.choice(len(pieces), size=n, replace=False)] if n else []


def _focus_region(rng: np.random.Generator, piece: Piece, scale: float) -> FocusRegion:
    x, y = _point_in(piece, rng, 0.5)
    label = "mild_blur" if rng.random() < 0.5 else "out_of_focus"
    sigma = rng.uniform(2.0, 3.5) if label == "mild_blur" else rng.uniform(6.0, 10.0)
    r = rng.uniform(900, 1800) * scale
    return FocusRegion(x=x, y=y, rx=r, ry=r * rng.uniform(0.6, 1.0), sigma=sigma, label=label)  # type: ignore[arg-type]


def _speckle_zones(
    cfg: Preset, rng: np.random.Generator, w: int, h: int, scale: float, taken: list[Box]
) -> list[Speckle]:
    zones: list[Speckle] = []
    want = _count(rng, cfg.speckle)
    for attempt in range(want * 40):
        if len(zones) == want:
            break
        shrink = 0.85 ** (attempt // 8)  # crowded slides get smaller zones rather than none
        size = scale * shrink * cfg.speckle_size
        rx = min(rng.uniform(700, 1600) * size, w / 2.2)
        ry = min(rng.uniform(500, 1300) * size, h / 2.2)
        x, y = _between(rng, rx, w - rx), _between(rng, ry, h - ry)
        if _free((x - rx, y - ry, x + rx, y + ry), taken, 0):
            zones.append(
                Speckle(x=x, y=y, rx=rx, ry=ry, seed=int(rng.integers(2**62)), density=rng.uniform(0.35, 0.7))
            )
    return zones


def _pens(
    cfg: Preset, rng: np.random.Generator, w: int, h: int, scale: float, pieces: list[Piece]
) -> list[Pen]:
    out = []
    for k in range(_count(rng, cfg.pens)):
        inks = list(cfg.pen_colours)
        colour = inks[k % len(inks)] if cfg.pens[0] >= 3 else str(rng.choice(inks))
        x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        if pieces and rng.random() < 0.5:  # over tissue: pen circles or ticks a lesion
            x, y = _point_in(pieces[int(rng.integers(len(pieces)))], rng, 0.8)
        ang = rng.uniform(0, 2 * math.pi)
        n, step = int(rng.integers(3, 7)), rng.uniform(300, 900) * scale
        path = [(x, y)]
        for _ in range(n):
            ang += rng.normal(0, 0.6)
            path.append((path[-1][0] + step * math.cos(ang), path[-1][1] + step * math.sin(ang)))
        out.append(
            Pen(
                path=tuple(path),
                width=rng.uniform(*cfg.pen_width_px) if cfg.pen_width_px else rng.uniform(90, 220) * scale,
                colour=cast(PenColour, colour),
                seed=int(rng.integers(2**62)),
            )
        )
    return out


def _specks(cfg: Preset, rng: np.random.Generator, w: int, h: int, scale: float) -> list[InkArtefact]:
    out: list[InkArtefact] = []
    for _ in range(_count(rng, cfg.bubbles)):
        r = rng.uniform(250, 900) * scale
        out.append(Bubble(x=_between(rng, r, w - r), y=_between(rng, r, h - r), radius=r))
    for kind, span, size in (
        ("dust", cfg.dust, (4, 28)),
        ("debris", cfg.debris, (40, 150)),
        ("crystal", cfg.crystals, (30, 140)),
    ):
        for _ in range(_count(rng, span)):
            out.append(
                Speck(
                    kind=kind, x=rng.uniform(0, w), y=rng.uniform(0, h), radius=rng.uniform(*size),
                    seed=int(rng.integers(2**62)), angle=rng.uniform(0, math.pi),
                    sides=int(rng.choice([4, 6])),
                )
            )  # fmt: skip
    return out


def _edges(cfg: Preset, rng: np.random.Generator, w: int, h: int, scale: float) -> list[InkArtefact]:
    out: list[InkArtefact] = []
    if rng.random() < cfg.p_coverslip:
        axis = str(rng.choice(["x", "y"]))
        extent = w if axis == "x" else h
        side = int(rng.choice([-1, 1]))
        pos = extent * (rng.uniform(0.03, 0.07) if side == -1 else rng.uniform(0.93, 0.97))
        out.append(CoverslipEdge(axis=axis, position=pos, beyond=side, seed=int(rng.integers(2**62))))  # type: ignore[arg-type]
    if rng.random() < cfg.p_border:
        widths = tuple(
            float(rng.uniform(0.01, 0.04) * min(w, h)) if rng.random() < 0.5 else 0.0 for _ in range(4)
        )
        if not any(widths):
            widths = (0.03 * min(w, h), 0.0, 0.0, 0.0)
        out.append(SlideBorder(slide_width=w, slide_height=h, widths=widths, seed=int(rng.integers(2**62))))  # type: ignore[arg-type]
    return out
