"""Pixel evidence for tissue and focus, from colour, optical density and texture (no model).

This is the image analysis behind the classical oracle (and the loopback fake VLM servers). It
works on RGB uint8 arrays in whatever frame the caller gives; nothing here knows about slides.

- A pixel is *stained* when its optical density (OD, ``-log10(I/255)`` per channel) is high
  enough, with colour or with darkness (Jones silver and EVG elastic fibres are dark grey/black).
- *Pen* is ink: saturated pure blue/green, or black, and smooth at pixel scale, where tissue is
  textured. Pen pixels never count as tissue.
- *Speckle* (stain precipitate, dust) is sparse dots on bright background: stained components too
  small to be tissue, far from any larger stained area, are dropped.
- *Sharpness* is the fine-band detail over the coarse-band detail, over tissue pixels: blur
  removes fine detail first, and the ratio does not depend on stain intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.base import as_rgb_uint8, downscale
from tissue_oracle.tools.schemas import Focus


@dataclass(kw_only=True, frozen=True)
class EvidenceParams:
    """Thresholds of the pixel rules. Defaults were calibrated on synthetic and real tiles."""

    od_coloured: float = 0.16
    """Summed OD (3 channels) above which a saturated pixel is stained."""
    min_saturation: float = 0.07
    """HSV saturation a pixel needs to count as coloured stain."""
    od_dark: float = 0.55
    """Summed OD above which a pixel is stained whatever its colour (silver, elastic fibres)."""
    pen_saturation: float = 0.45
    """Blue/green ink is at least this saturated (haematoxylin is less)."""
    pen_smoothness: float = 6.0
    """Local grey std (5x5) below which dark/inked pixels count as smooth ink, not tissue."""
    min_component_frac: float = 0.0015
    """Stained components smaller than this fraction of the image are speckle candidates."""
    speckle_reach: int = 6
    """Speckle within this many pixels of a large stained area is kept as tissue edge detail."""
    sharp_ratio: float = 0.47
    """Fine/coarse detail ratio at or above which tissue is ``sharp``. Calibrated on synthetic
    slides' sharp tissue blurred by the generator's sigmas (mild 2-3.5 px, out of focus 6-10 px)."""
    blur_ratio: float = 0.25
    """Fine/coarse detail ratio below which tissue is ``out_of_focus`` (between: ``mild_blur``)."""
    texture_od_std: float = 0.01
    """Local OD std (9x9) above which a pixel is structured (faint tissue is textured, glass is not)."""
    texture_od_margin: float = 0.015
    """Structured pixels must be this much denser (summed OD) than the palest 2% of the image."""
    thick_ink_radius: int = 4
    """Dark neutral regions surviving an opening of this many pixels are ink or rims, not stain."""


DEFAULT_PARAMS = EvidenceParams()


@dataclass(kw_only=True, frozen=True)
class PixelEvidence:
    """Per-pixel maps of one image (all boolean unless stated, shape (H, W))."""

    tissue: np.ndarray
    """Stained, not ink, not speckle."""
    pen: np.ndarray
    """Ink."""
    speckle: np.ndarray
    """Dropped small sparse stained components."""
    od: np.ndarray
    """Summed optical density (float32)."""


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed OD over the three channels, float32, 0 for pure white."""
    arr = as_rgb_uint8(rgb).astype(np.float32)
    return np.sum(-np.log10((arr + 1.0) / 256.0), axis=2)


def _saturation(arr: np.ndarray) -> np.ndarray:
    high = arr.max(axis=2)
    low = arr.min(axis=2)
    return (high - low) / np.maximum(high, 1.0)


def _local_std(grey: np.ndarray, size: int = 5) -> np.ndarray:
    mean = ndi.uniform_filter(grey, size)
    sq = ndi.uniform_filter(grey * grey, size)
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))


def pen_mask(rgb: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS) -> np.ndarray:
    """Ink pixels, dilated by one pixel over stroke edges.

    Saturated pure blue or green is always ink (no stain we meet is that colour). Saturated red
    and near-black are ink only where the connected region is mostly smooth at pixel scale:
    eosin, DAB, silver and elastic fibres are textured.
    """
    arr = as_rgb_uint8(rgb).astype(np.float32)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    sat = _saturation(arr)
    # Haematoxylin is purple (R above G); blue ink has R at or below G, and is more saturated.
    blue = (b > r + 50) & (g >= r - 10) & (sat > params.pen_saturation)
    green = (g > r + 15) & (g > b - 5) & (sat > params.pen_saturation * 0.6)
    red = (r > 140) & (sat > 0.7) & (g < 90)
    dark = arr.max(axis=2) < 100
    ink = blue | green
    maybe = (red | dark) & ~ink
    if maybe.any():
        smooth = _local_std(arr.mean(axis=2)) < params.pen_smoothness
        labels, count = ndi.label(maybe)
        smooth_share = ndi.mean(smooth.astype(np.float32), labels, index=np.arange(1, count + 1))
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.concatenate([[False], (np.asarray(smooth_share) > 0.6) & (sizes >= 50)])
        ink |= keep[labels]
    if not ink.any():
        return ink
    return ndi.binary_dilation(ink, iterations=1)


def stained_mask(rgb: np.ndarray, od: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS) -> np.ndarray:
    """Pixels with stain: coloured and dense enough, or dark whatever the colour."""
    sat = _saturation(as_rgb_uint8(rgb).astype(np.float32))
    return ((od > params.od_coloured) & (sat > params.min_saturation)) | (od > params.od_dark)


def drop_speckle(
    stained: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, speckle): small stained components away from large ones are speckle.

    Tissue is connected at this scale once its gaps are closed; precipitate dots are not.
    """
    closed = ndi.binary_closing(stained, iterations=2) | stained
    labels, count = ndi.label(closed)
    if count == 0:
        return stained, np.zeros_like(stained)
    sizes = np.bincount(labels.ravel())
    min_size = max(12, int(params.min_component_frac * stained.size))
    big = sizes >= min_size
    big[0] = False
    large = big[labels]
    near_large = ndi.binary_dilation(large, iterations=params.speckle_reach) if large.any() else large
    speckle = stained & ~large & ~near_large
    return stained & ~speckle, speckle


def thick_dark(rgb: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS) -> np.ndarray:
    """Wide dark-grey areas (black pen, bubble rims, slide borders): silver and elastic stain is thin."""
    arr = as_rgb_uint8(rgb).astype(np.float32)
    neutral_dark = (arr.max(axis=2) < 140) & (_saturation(arr) < 0.15)
    if not neutral_dark.any():
        return neutral_dark
    return ndi.binary_dilation(
        ndi.binary_opening(neutral_dark, iterations=params.thick_ink_radius), iterations=2
    )


def pixel_evidence(
    rgb: np.ndarray, params: EvidenceParams = DEFAULT_PARAMS, od_threshold: float | None = None
) -> PixelEvidence:
    """All pixel maps of one RGB image. ``od_threshold`` overrides ``od_coloured`` (few-shot).

    Tissue is stained or structured (faint tissue is barely denser than glass, but textured),
    minus ink and wide dark artefacts, minus isolated speckle.
    """
    if od_threshold is not None:
        params = EvidenceParams(**{**params.__dict__, "od_coloured": od_threshold})
    od = optical_density(rgb)
    ink = pen_mask(rgb, params) | thick_dark(rgb, params)
    # Structure counts only on pixels denser than the palest glass in view: the glass right
    # around a precipitate dot is "textured" too, but no denser than glass.
    above_glass = od > float(np.percentile(od, 2)) + params.texture_od_margin
    structured = (_local_std(od, 9) > params.texture_od_std) & above_glass
    candidate = (stained_mask(rgb, od, params) | structured) & ~ink
    tissue, speckle = drop_speckle(candidate, params)
    return PixelEvidence(tissue=tissue, pen=ink, speckle=speckle, od=od)


def fill_solid(tissue: np.ndarray) -> np.ndarray:
    """The tissue map closed over small gaps with holes filled (lumina and pale cytoplasm count)."""
    return np.asarray(ndi.binary_fill_holes(ndi.binary_closing(tissue, iterations=3) | tissue))


def sharpness(rgb: np.ndarray, where: np.ndarray | None = None, od: np.ndarray | None = None) -> float | None:
    """Fine-band / coarse-band detail ratio over ``where`` (default: all pixels); None when too few pixels.

    On the OD image, the fine band is ``|G1 - G3|`` and the coarse band ``|G3 - G9|`` (Gaussians
    of sigma 1, 3, 9 px): blur empties the fine band first, the ratio does not depend on stain
    intensity, and starting at sigma 1 keeps pixel noise (which survives blur) out of it.
    """
    od = optical_density(rgb) if od is None else od
    mask = np.ones(od.shape, dtype=bool) if where is None else where
    if mask.sum() < 64:
        return None
    g1, g3, g9 = (ndi.gaussian_filter(od, s) for s in (1.0, 3.0, 9.0))
    coarse = float(np.abs(g3 - g9)[mask].mean())
    if coarse < 1e-4:
        return None  # flat stain: no detail to judge focus by
    return float(np.abs(g1 - g3)[mask].mean()) / coarse


def focus_from_sharpness(ratio: float | None, params: EvidenceParams = DEFAULT_PARAMS) -> Focus | None:
    """The focus grade for a sharpness ratio; None when there is no tissue to judge."""
    if ratio is None:
        return None
    if ratio >= params.sharp_ratio:
        return "sharp"
    if ratio >= params.blur_ratio:
        return "mild_blur"
    return "out_of_focus"


@dataclass(kw_only=True, frozen=True)
class PatchEvidence:
    """Summary features of one patch image."""

    tissue_frac: float
    """Share of the patch covered by solid tissue (stain map closed and filled; 0-1)."""
    pen_frac: float
    """Share of pixels that are ink (0-1)."""
    speckle_frac: float
    """Share of pixels dropped as speckle (0-1)."""
    tissue_od: float
    """Mean summed OD over tissue pixels (0 when there are none)."""
    sharpness: float | None
    """Fine/coarse detail ratio over tissue pixels, None when there is too little tissue."""
    focus: Focus
    """Focus grade: from ``sharpness``, else from the whole patch, else ``sharp`` (plain glass)."""

    def features(self) -> np.ndarray:
        """A standardised feature vector for nearest-centroid few-shot (roughly unit scales)."""
        return np.array([self.tissue_frac / 0.25, self.tissue_od / 0.3, self.pen_frac / 0.25])


def patch_evidence(
    rgb: np.ndarray,
    params: EvidenceParams = DEFAULT_PARAMS,
    od_threshold: float | None = None,
    analysis_side: int = 256,
) -> PatchEvidence:
    """Features of one patch (any size; 512 px level-0 patches are the usual case).

    The tissue map is made at ``analysis_side`` px (cheaper, and the thresholds were calibrated
    there); sharpness is measured at full resolution, where blur shows.
    """
    small = downscale(rgb, analysis_side)
    ev = pixel_evidence(small, params, od_threshold)
    solid = fill_solid(ev.tissue)
    n_tissue = int(ev.tissue.sum())
    ratio = None
    if n_tissue >= 16:
        full = as_rgb_uint8(rgb)
        rows = np.arange(full.shape[0]) * small.shape[0] // full.shape[0]
        cols = np.arange(full.shape[1]) * small.shape[1] // full.shape[1]
        ratio = sharpness(full, ev.tissue[np.ix_(rows, cols)])
    # Focus is graded for every patch, as a VLM grades it: over tissue when there is enough,
    # else over whatever the patch shows; featureless glass has nothing blurred ("sharp").
    focus = focus_from_sharpness(ratio if ratio is not None else sharpness(rgb), params) or "sharp"
    return PatchEvidence(
        tissue_frac=float(solid.mean()),
        pen_frac=float(ev.pen.mean()),
        speckle_frac=float(ev.speckle.mean()),
        tissue_od=float(ev.od[ev.tissue].mean()) if n_tissue else 0.0,
        sharpness=ratio,
        focus=focus,
    )
