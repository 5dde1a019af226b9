"""Read the ground truth written beside a synthetic slide (``NAME.truth/``, see docs/synth.md).

    truth = load_truth("slides/leica-like_0_000.tiff")
    truth.patch_labels(512)          # bool (rows, cols) on PatchGrid(slide_w, slide_h, 512)
    truth.patch_focus(512)           # uint8 focus codes, 255 where the patch holds no tissue

Masks are stored at ``mask_downsample`` level-0 px per pixel; patch-level truth is computed
from them by exact area overlap, for any patch size and level.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tissue_oracle.tools.errors import CorruptSlideError, SlideError
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS
from tissue_oracle.tools.schemas import PatchGrid

__all__ = ["Truth", "find_truth", "load_truth"]

_FORMAT = "tissue-oracle-synth-truth/1"


@dataclass(frozen=True, kw_only=True)
class Truth:
    """Ground truth of one synthetic slide. Masks are (ceil(H/ds), ceil(W/ds)), ds = mask_downsample."""

    folder: Path
    """The NAME.truth folder."""
    stain: str
    """Stain family: he, pas, jones, evg, masson or ihc."""
    preset: str
    seed: int
    slide_width: int
    """Level-0 width, px."""
    slide_height: int
    mask_downsample: int
    """Level-0 px per mask pixel (16)."""
    mpp: float | None
    """Microns per level-0 px written into the slide, or None when the slide carries none."""
    tissue: np.ndarray
    """bool mask: True where at least half the mask pixel lies inside tissue."""
    artefacts: dict[str, np.ndarray]
    """Artefact type -> bool mask, for the types present on this slide (meta 'artefact_types')."""
    focus: np.ndarray
    """uint8 focus code per mask pixel: 0 sharp, 1 mild_blur, 2 out_of_focus, 255 no tissue."""
    meta: dict[str, Any] = field(default_factory=dict)
    """meta.json as written (focus regions with blur sigma, pieces, illumination...)."""

    def grid(self, patch_size: int = 512, *, downsample: float = 1.0) -> PatchGrid:
        """The patch grid for patches of ``patch_size`` px at a level of ``downsample``."""
        return PatchGrid(
            slide_width=self.slide_width,
            slide_height=self.slide_height,
            patch_size=_level0(patch_size, downsample),
        )

    def tissue_fraction(self, patch_size: int = 512, *, downsample: float = 1.0) -> np.ndarray:
        """Fraction (float, 0-1) of each patch that is tissue, shape ``grid(patch_size).shape``.

        ``patch_size`` is in px at the level of ``downsample`` (1.0 = level 0); the part of an
        edge patch that runs past the slide counts as background.
        """
        return self._fraction(self.tissue, _level0(patch_size, downsample))

    def patch_labels(
        self, patch_size: int = 512, threshold: float = 0.5, *, downsample: float = 1.0
    ) -> np.ndarray:
        """bool per patch: tissue when its tissue fraction is >= ``threshold`` (default 0.5)."""
        return self.tissue_fraction(patch_size, downsample=downsample) >= threshold

    def patch_focus(self, patch_size: int = 512, *, downsample: float = 1.0) -> np.ndarray:
        """uint8 focus code per patch: the commonest code over its tissue, 255 without tissue."""
        size = _level0(patch_size, downsample)
        shares = np.stack([self._fraction(self.focus == code, size) for code in FOCUS_CODES.values()])
        codes = np.argmax(shares, axis=0).astype(np.uint8)
        codes[shares.sum(axis=0) == 0] = NO_FOCUS
        return codes

    def patch_artefacts(
        self, patch_size: int = 512, min_fraction: float = 0.0, *, downsample: float = 1.0
    ) -> dict[str, np.ndarray]:
        """Artefact type -> bool per patch: True where the artefact covers > ``min_fraction`` of it."""
        size = _level0(patch_size, downsample)
        return {name: self._fraction(mask, size) > min_fraction for name, mask in self.artefacts.items()}

    def _fraction(self, mask: np.ndarray, patch_level0: int) -> np.ndarray:
        """Exact area fraction of ``mask`` in each patch of ``patch_level0`` level-0 px."""
        g = PatchGrid(slide_width=self.slide_width, slide_height=self.slide_height, patch_size=patch_level0)
        ay = _overlap(g.rows, mask.shape[0], patch_level0, self.mask_downsample)
        ax = _overlap(g.cols, mask.shape[1], patch_level0, self.mask_downsample)
        return np.clip(ay @ mask.astype(np.float64) @ ax.T, 0.0, 1.0)


def _level0(patch_size: int, downsample: float) -> int:
    if patch_size < 1 or downsample <= 0:
        raise ValueError(f"patch_size and downsample must be positive, got {patch_size}, {downsample}")
    return max(1, round(patch_size * downsample))


def _overlap(n_patches: int, n_pixels: int, patch: int, ds: int) -> np.ndarray:
    """(n_patches, n_pixels): share of each patch's length covered by each mask pixel."""
    p0 = np.arange(n_patches)[:, None] * patch
    m0 = np.arange(n_pixels)[None, :] * ds
    inter = np.clip(np.minimum(p0 + patch, m0 + ds) - np.maximum(p0, m0), 0, None)
    return inter / patch


def truth_folder(slide_path: str | Path) -> Path:
    """``NAME.truth`` beside ``NAME.tiff``; a path that already is a truth folder is returned as is."""
    p = Path(slide_path)
    return p if p.suffix == ".truth" else p.with_name(p.stem + ".truth")


def find_truth(slide_path: str | Path) -> Truth | None:
    """The slide's truth, or None when it has no truth folder (a real slide)."""
    folder = truth_folder(slide_path)
    return load_truth(slide_path) if (folder / "meta.json").is_file() else None


def load_truth(slide_path: str | Path) -> Truth:
    """Load the truth beside ``slide_path`` (or from a NAME.truth folder); raise if absent."""
    folder = truth_folder(slide_path)
    if not (folder / "meta.json").is_file():
        raise SlideError(
            slide_path,
            f"has no ground truth ({str(folder / 'meta.json')!r} is missing)",
            "Only synthetic slides carry truth: make some with `tissue-oracle synth OUT`, "
            "or call find_truth() where truth is optional.",
        )
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tissue = _png(folder / "tissue.png") > 0
        focus = _png(folder / "focus.png")
        artefacts = {n: _png(folder / f"artefact_{n}.png") > 0 for n in meta["artefact_types"]}
        truth = Truth(
            folder=folder, stain=meta["stain"], preset=meta["preset"], seed=int(meta["seed"]),
            slide_width=int(meta["slide_width"]), slide_height=int(meta["slide_height"]),
            mask_downsample=int(meta["mask_downsample"]), mpp=meta.get("mpp"), tissue=tissue,
            artefacts=artefacts, focus=focus, meta=meta,
        )  # fmt: skip
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptSlideError(
            folder, f"ground truth can't be read ({exc})", "Regenerate the slide."
        ) from exc
    _check_shapes(truth)
    return truth


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _check_shapes(t: Truth) -> None:
    want = (math.ceil(t.slide_height / t.mask_downsample), math.ceil(t.slide_width / t.mask_downsample))
    arrays = {"tissue": t.tissue, "focus": t.focus, **t.artefacts}
    bad = [name for name, a in arrays.items() if a.shape != want]
    if bad or t.meta.get("format") != _FORMAT:
        raise CorruptSlideError(
            t.folder,
            f"ground truth doesn't match its slide (masks {bad!r} not {want}, "
            f"format {t.meta.get('format')!r})",
            "Regenerate the slide with `tissue-oracle synth`.",
        )
