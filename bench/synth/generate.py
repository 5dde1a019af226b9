"""Synthetic whole-slide images with exact ground truth: ``generate_slide`` and ``generate_set``.

A slide ``NAME.tiff`` (pyramidal Aperio-style TIFF, JPEG tiles, levels 1/4/16/64) gets a truth
folder ``NAME.truth/`` beside it: ``meta.json``, ``tissue.png``, ``focus.png`` and one
``artefact_<type>.png`` per artefact type on the slide, all at ``mask_downsample`` (16) level-0
px per pixel. ``tissue_oracle.bench.synth.truth.load_truth`` reads it back; docs/synth.md is the format.

Module map: ``synth_noise`` (seeded band-limited fields), ``synth_tissue`` (pieces and texture),
``synth_stains`` (stain families), ``synth_artefacts`` (artefacts), ``synth_presets`` (recipes),
``synth_render`` (blocks and truth), this module (files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tissue_oracle.bench.synth.noise import Grid, mix_seed
from tissue_oracle.bench.synth.presets import PRESETS, build_spec, get_preset
from tissue_oracle.bench.synth.pyramid_writer import write_pyramidal_tiff
from tissue_oracle.bench.synth.render import SlideSpec, render_block, truth_block
from tissue_oracle.bench.synth.truth import truth_folder
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS

__all__ = ["MASK_DOWNSAMPLE", "PRESETS", "TRUTH_FORMAT", "generate_set", "generate_slide", "plan_set"]

#: Level-0 px per truth-mask pixel.
MASK_DOWNSAMPLE = 16
TRUTH_FORMAT = "tissue-oracle-synth-truth/1"
DOWNSAMPLES = (1, 4, 16, 64)
_TRUTH_ROWS = 256  # truth pixels computed per strip

Progress = Callable[[int, int], None]


def generate_slide(
    path: str | Path,
    *,
    preset: str,
    seed: int,
    width: int | None = None,
    height: int | None = None,
    stain: str | None = None,
    mpp: float = 0.25,
    with_mpp: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Write one synthetic slide at ``path`` (a .tiff) and its truth folder; return the path.

    ``width``/``height`` are level-0 px (default: the preset's size); ``stain`` forces a family
    (he, pas, jones, evg, masson, ihc). ``with_mpp=False`` leaves mpp and magnification out of
    the file, as on slides whose scanner metadata was lost. ``progress(done, total)`` counts tiles.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"synthetic slide path {str(path)!r} must end in .tiff or .tif")
    spec = build_spec(preset, seed, width=width, height=height, stain=stain)
    path.parent.mkdir(parents=True, exist_ok=True)

    def tile_source(x: int, y: int, w: int, h: int, ds: int) -> np.ndarray:
        return render_block(spec, x, y, w, h, ds)

    magnification = 40.0 * 0.25 / mpp
    write_pyramidal_tiff(
        path, spec.width, spec.height, tile_source, downsamples=DOWNSAMPLES,
        mpp=mpp if with_mpp else None, magnification=magnification if with_mpp else None, progress=progress,
    )  # fmt: skip
    write_truth(spec, truth_folder(path), mpp=mpp if with_mpp else None)
    return path


def plan_set(preset: str, count: int, seed: int) -> list[tuple[str, int, str | None]]:
    """(file name, slide seed, forced stain or None) for each slide of a set.

    Slide i is ``<preset>_<seed>_<i>.tiff`` with seed ``mix_seed(seed, i)``. Presets with an even
    stain mix (leica-like, zoo, tiny) cycle through their stains so a small set covers each;
    stress draws by weight (mostly Jones and EVG).
    """
    cfg = get_preset(preset)
    if count < 1:
        raise ConfigError(f"count must be at least 1, got {count}")
    stains = list(cfg.stains)
    even = len(set(cfg.stains.values())) == 1
    names = [f"{preset}_{seed}_{i:03d}.tiff" for i in range(count)]
    seeds = [mix_seed(seed, i) % 2**31 for i in range(count)]
    forced = [stains[i % len(stains)] if even else None for i in range(count)]
    return list(zip(names, seeds, forced, strict=True))


def generate_set(
    out_dir: str | Path,
    *,
    preset: str,
    count: int,
    seed: int,
    size: int | None = None,
    with_mpp: bool = True,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``count`` slides into ``out_dir`` (named by ``plan_set``); ``size`` makes them square."""
    paths = []
    for name, slide_seed, stain in plan_set(preset, count, seed):
        paths.append(
            generate_slide(
                Path(out_dir) / name, preset=preset, seed=slide_seed, width=size, height=size, stain=stain,
                with_mpp=with_mpp, progress=progress,
            )
        )  # fmt: skip
    return paths


def compute_truth(spec: SlideSpec) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(tissue bool, artefact masks, focus codes) over the whole slide at MASK_DOWNSAMPLE."""
    ds = MASK_DOWNSAMPLE
    w, h = math.ceil(spec.width / ds), math.ceil(spec.height / ds)
    tissue = np.zeros((h, w), bool)
    focus = np.full((h, w), NO_FOCUS, np.uint8)
    masks: dict[str, np.ndarray] = {}
    for r0 in range(0, h, _TRUTH_ROWS):
        r1 = min(h, r0 + _TRUTH_ROWS)
        t, m, f = truth_block(spec, Grid(x0=0, y0=r0 * ds, w=w, h=r1 - r0, ds=ds))
        tissue[r0:r1], focus[r0:r1] = t, f
        for name, mask in m.items():
            masks.setdefault(name, np.zeros((h, w), bool))[r0:r1] = mask
    return tissue, _present(spec, masks), focus


def _present(spec: SlideSpec, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the artefact types this slide actually has (empty masks of absent types are dropped)."""
    kinds = {ink.kind for ink in spec.inks}
    if spec.folds:
        kinds.add("fold")
    if any(p.intensity < 0.6 for p in spec.pieces):
        kinds.add("faint")
    if spec.illumination.seam_gain > 0:
        kinds.add("seams")
    return {k: v for k, v in masks.items() if k in kinds}


def write_truth(spec: SlideSpec, folder: Path, *, mpp: float | None) -> None:
    """Write meta.json and the masks (PNG, 0/255; focus.png holds ``tools.focus`` codes) into ``folder``."""
    tissue, masks, focus = compute_truth(spec)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tissue.astype(np.uint8) * 255).save(folder / "tissue.png", optimize=True)
    Image.fromarray(focus).save(folder / "focus.png", optimize=True)
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"artefact_{name}.png", optimize=True)
    (folder / "meta.json").write_text(json.dumps(_meta(spec, sorted(masks), mpp), indent=2) + "\n")


def _meta(spec: SlideSpec, artefact_types: list[str], mpp: float | None) -> dict[str, object]:
    return {
        "format": TRUTH_FORMAT,
        "preset": spec.preset,
        "seed": spec.seed,
        "stain": spec.stain.name,
        "slide_width": spec.width,
        "slide_height": spec.height,
        "mpp": mpp,
        "level_downsamples": list(DOWNSAMPLES),
        "mask_downsample": MASK_DOWNSAMPLE,
        "tissue_rule": "tissue.png pixel is tissue where >= 50% of it lies inside a tissue piece",
        "artefact_types": artefact_types,
        "focus_codes": {str(name): code for name, code in FOCUS_CODES.items()} | {"none": NO_FOCUS},
        "focus_regions": [
            {"x": r.x, "y": r.y, "rx": r.rx, "ry": r.ry, "sigma_level0_px": r.sigma, "label": r.label}
            for r in spec.focus
        ],
        "pieces": [
            {
                "kind": p.kind,
                "texture": p.texture,
                "bbox_level0": [round(v) for v in p.bbox],
                "intensity": p.intensity,
            }
            for p in spec.pieces
        ],
        "illumination": {
            "gradient": spec.illumination.gradient,
            "seam_spacing": spec.illumination.seam_spacing,
            "seam_gain": spec.illumination.seam_gain,
        },
    }
