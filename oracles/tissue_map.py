"""The classical tissue map of a whole slide in one vectorised pass over a low-resolution image.

The classical oracle's answers are pixel rules, so asking them patch by patch (reading every
level-0 patch) only costs time. This module answers for the whole slide at once, on an image
with about ``PATCH_PX`` pixels per grid patch (a low pyramid level or the thumbnail). Sizes of
every filter are in units of that patch side, so the rules do not depend on the slide's size.

The rules, in order (``tissue_map``):

1. Scope: a dark background means fluorescence; the image is inverted so that the same rules
   find the bright, stained objects (``SlideScope``).
2. Glass reference per block of one patch: the bright, neutral level of each block, borrowed
   from the nearest block that shows glass where a block is all tissue. Optical density (OD) is
   measured against it, so tile seams, vignetting and a grey cast read as glass.
3. Tissue has a *coloured substrate*: seeds are areas whose local-minimum OD and local colour
   are both clearly above glass. Stain precipitate and dust are dots on clear glass (their local
   minimum is glass); pen, slide borders, coverslip edges and bubble rims are neutral or pure
   blue/green, which no stain is, or near-black with a tint (``oracles.ink_marks``).
4. Tissue grows from the seeds into weaker, still coloured or dense, evidence (edges, faint and
   blurred parts, folds, dark fibres), then small gaps are closed, holes filled and crumbs
   dropped. Growth reads 3x3 means, which spread it one pixel into glass: an edge pixel stays
   only when its own OD is at least half the substrate's beside it (the half-inside edge).
5. Stain precipitate (``oracles.precipitate``): a piece of the map is dropped when it is dotted
   with isolated dark spikes (granules of one or two pixels), its 90th-percentile OD is far
   above its median, and that median is a faint haze's: dark grains on a haze. Pieces are tested
   apart beyond and within strong stain (CLAM's saturation Otsu over the image): a precipitate
   haze can be more saturated than pale tissue beside it. Faint tissue is pale throughout (its
   nuclei too), nucleated tissue is denser than a haze, and the dark parts of silver and PAS
   stains are joined lines, not dots: a piece of two patches or more whose dark pixels lie
   mostly in joined components no larger than a patch (membranes and fibres; precipitate's
   granules are dots and small clusters, and a coverslip edge merged into a haze is one long
   line) is kept as tissue, and so is a weak piece of two patches or more that continues a
   stained piece and whose dots are sparse (loose stroma and fat: nuclei on a pale substrate).
   Weak pixels within a patch of the image's edge that run along it (4
   patches long, 4x their depth) are the slide's border, a label shadow or a tinted strip beyond
   the coverslip (reaching the edge directly or through the slide's dark border), and are
   dropped too.
6. Tissue under a pen stroke is still tissue: ink that the map closes around within half a patch
   (a stroke drawn across a piece) is given back to it, and so is ink whose OD colour shows stain
   beyond the pen's own ink (a piece wholly under a wide stroke: ``oracles.under_ink``).
7. The blurred rim: growth and closing still leave the map up to two pixels past the truth's
   half-inside edge (2-5% of the area, all outward). Twice, edge pixels whose OD is under 0.4x
   the mean OD of the tissue behind them (dark nuclei and fibres counted at a substrate's 0.35)
   are peeled; faint tissue (which grows no rim) and edges that face ink are left alone.
8. Faint tissue found by its membranes (``oracles.membrane_loops``): where the map found nothing,
   a cluster of three or more small dark loops (Jones or PAS basement membranes over a substrate
   too faint to seed) marks a piece, grown into the faint substrate around it; a pen stroke
   across it is given back as in rule 6. Glass, precipitate, pen and bubble rims hold no such
   clusters.
9. Flat strips (``oracles.edge_strips.flat_strips``): a piece lying along the image's edge (4
   patches long and 4x its depth) with no texture (its OD barely departs from a 5x5 median) is a
   tint beyond the coverslip or a shadow, however saturated: tissue has nuclei, fibres, glands.
   Tested on the final pieces: before rule 5 takes the coverslip's unsaturated dark line off the
   tint, the two are one piece, and a textured one.
10. Holes: a hole larger than the small holes filled in rule 4 is filled when its median OD (ink
   aside) shows stain (a fat lobule or pale stroma enclosed by a section; a lumen shows glass).

Not a VLM: every output that uses it is labelled classical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.edge_strips import flat_strips
from tissue_oracle.oracles.ink_marks import channel_sum, ink_mask, saturation
from tissue_oracle.oracles.map_params import DEFAULT_MAP_PARAMS, MapParams
from tissue_oracle.oracles.membrane_loops import loop_tissue
from tissue_oracle.oracles.precipitate import precipitate_pieces
from tissue_oracle.oracles.under_ink import tissue_under_ink
from tissue_oracle.tools.clean import enclosed_holes, fill_small_holes, remove_small_components
from tissue_oracle.tools.stage_settings import MIN_PATCH_SIZE

PATCH_PX = 32
"""Pixels per grid patch side the rules were calibrated at (512 px level-0 patches at 16x)."""

ScopeKind = Literal[
    "brightfield", "fluorescence", "all_glass", "nearly_all_tissue", "no_tissue_kept", "image_too_small"
]


@dataclass(kw_only=True, frozen=True)
class SlideScope:
    """What kind of slide the map was made for, and what to tell the user when it is out of scope."""

    kind: ScopeKind
    message: str | None = None
    """None for ordinary bright-field slides; otherwise a sentence for summary.json and the CLI."""

    @property
    def flag(self) -> str | None:
        """The summary flag (``out_of_scope_<kind>``), None in scope."""
        return None if self.kind == "brightfield" else f"out_of_scope_{self.kind}"


@dataclass(kw_only=True, frozen=True)
class TissueMap:
    """Boolean maps of one image (H, W), in the frame of the image given to ``tissue_map``."""

    solid: np.ndarray
    """Tissue, gaps closed and holes filled: what a patch's tissue share is measured on."""
    evidence: np.ndarray
    """Tissue pixels before closing and filling."""
    ink: np.ndarray
    """Pure blue/green ink and wide neutral-dark areas (pen, borders, rims, coverslip edges)."""
    od: np.ndarray
    """Summed OD against the local glass (float32)."""
    stain_share: float
    """Share of the image showing coloured stain (not ink), crumbs included: "not clean glass"."""
    scope: SlideScope


def is_fluorescence(rgb: np.ndarray, params: MapParams = DEFAULT_MAP_PARAMS) -> bool:
    """A dark background: most of the image is near black (DAPI, FITC...)."""
    lum = channel_sum(rgb.astype(np.float32)) / 3
    return float(np.median(lum)) < params.fluorescence_luminance


def glass_reference(rgb: np.ndarray, block: int) -> np.ndarray:
    """Per-pixel glass colour (float32 H, W, 3): each block's bright level, tissue-filled blocks borrowed.

    A block's glass is its per-channel 90th percentile. A block whose level is much darker or
    more coloured than the slide's brightest glass holds no glass, and takes the nearest valid
    block's. Upsampled by repetition then softened over one block.
    """
    h, w, _ = rgb.shape
    bh, bw = -(-h // block), -(-w // block)
    padded = np.pad(rgb.astype(np.float32), ((0, bh * block - h), (0, bw * block - w), (0, 0)), mode="edge")
    blocks = padded.reshape(bh, block, bw, block, 3).transpose(0, 2, 1, 3, 4).reshape(bh, bw, -1, 3)
    level = np.percentile(blocks, 90, axis=2).astype(np.float32)  # (bh, bw, 3)
    lum = channel_sum(level) / 3
    sat = saturation(level)
    brightest = float(np.percentile(lum, 95))
    # Glass is the brightest and the most neutral level among its neighbours; a pale stain is
    # only slightly darker than glass but measurably more coloured.
    near_lum = ndi.maximum_filter(lum, size=5, mode="nearest")
    near_sat = ndi.minimum_filter(sat, size=5, mode="nearest")
    valid = (lum >= 0.88 * brightest) & (sat < 0.12) & (lum >= 0.96 * near_lum) & (sat <= near_sat + 0.015)
    if not valid.any():
        valid = lum >= np.percentile(lum, 50)
    if not valid.all():
        _, (iy, ix) = ndi.distance_transform_edt(~valid, return_indices=True)
        level = level[iy, ix]
    full = np.repeat(np.repeat(level, block, axis=0), block, axis=1)[:h, :w]
    return np.asarray(ndi.uniform_filter(full, size=(block, block, 1), mode="nearest"), dtype=np.float32)


def tissue_map(
    rgb: np.ndarray, patch_px: float = PATCH_PX, params: MapParams = DEFAULT_MAP_PARAMS
) -> TissueMap:
    """The tissue map of an RGB uint8 image of a whole slide with ``patch_px`` pixels per patch side."""
    arr = np.asarray(rgb)[..., :3]
    fluorescent = is_fluorescence(arr, params)
    if fluorescent:
        arr = 255 - arr
    p = max(4, round(patch_px))
    patch_area = p * p
    img = arr.astype(np.float32)
    glass = glass_reference(arr, p)
    od_rgb = np.log10((glass + 1.0) / (img + 1.0)).clip(0.0)
    od = channel_sum(od_rgb).astype(np.float32)
    img_sat = saturation(img)
    chroma = np.clip(img_sat - saturation(glass), 0.0, None)
    k = max(3, p // 8) | 1
    od_mean = ndi.uniform_filter(od, k)
    chroma_mean = ndi.uniform_filter(chroma, k)
    od_floor = ndi.minimum_filter(ndi.uniform_filter(od, 3), 3)
    ink = ink_mask(arr, p)

    seeds = (od_floor > params.seed_od_min) & (chroma_mean > params.seed_chroma) & ~ink
    seeds = _drop_small(seeds, params.seed_min_area * patch_area)
    # Growth reads a 3x3 mean: the seeds' wider mean would smear tissue a few pixels into glass.
    od_near, chroma_near = ndi.uniform_filter(od, 3), ndi.uniform_filter(chroma, 3)
    weak = ((od_near > params.grow_od) & (chroma_near > params.grow_chroma)) | (od_near > params.dense_od)
    weak &= ~ink
    evidence = ndi.binary_propagation(seeds, mask=weak | seeds) if seeds.any() else seeds
    closed = ndi.binary_closing(evidence, iterations=max(1, p // 16), border_value=0) | evidence
    solid = fill_small_holes(closed, math.floor(params.max_hole_area * patch_area) + 1)[0]
    # The 3x3 means growth reads spread tissue one pixel into glass: take back the edge pixels
    # whose own OD is weak (a blurred rim), as the truth's "half inside" edge would.
    inner = np.asarray(ndi.binary_erosion(solid, border_value=1))
    substrate = ndi.maximum_filter(np.where(inner, od_floor, 0.0), size=3)
    solid = inner | (solid & (od > params.edge_od * substrate))
    solid = _drop_small(solid & ~ink, params.min_piece_area * patch_area)
    solid &= ~precipitate_pieces(solid, img_sat, od, ink, params, params.min_piece_area * patch_area)
    solid = _drop_small(solid, params.min_piece_area * patch_area)
    solid |= _under_ink(solid, ink, params.under_ink_reach * p)
    if params.stain_under_ink:
        solid |= tissue_under_ink(od_rgb, ink, p)
    solid = _drop_small(_peel_halo(solid, od, ink, params), params.min_piece_area * patch_area)
    if params.membrane_loops:
        loops = _drop_small(loop_tissue(od, ink, solid, p, params), params.min_piece_area * patch_area)
        solid |= loops | _under_ink(loops, ink, params.under_ink_reach * p)
    if params.flat_strips:
        solid &= ~flat_strips(solid, od, p, params.flat_strip_texture)
    solid |= _stained_holes(solid, od, ink, params.max_hole_area * patch_area, params.stained_hole_od)
    stained = (od_mean > 0.15) & (chroma_mean > params.seed_chroma) & ~ink
    return TissueMap(
        solid=solid,
        evidence=evidence,
        ink=ink,
        od=od,
        stain_share=float(stained.mean()),
        scope=slide_scope(solid, stained, fluorescent, glass, params),
    )


def slide_scope(
    solid: np.ndarray, stained: np.ndarray, fluorescent: bool, glass: np.ndarray, params: MapParams
) -> SlideScope:
    """Name what the map cannot vouch for: fluorescence, no tissue, or no glass to compare with.

    "No tissue" is judged on all coloured stain, not on the map: a fragment smaller than a
    patch is still tissue on the slide, though the map drops it as a crumb.
    """
    share = float(solid.mean()) if solid.size else 0.0
    if fluorescent:
        return SlideScope(
            kind="fluorescence",
            message=(
                "fluorescence slide (dark background): tissue was found on the inverted image, which "
                "shows stained nuclei rather than all tissue; the tool is made for bright-field slides, "
                f"check the mask ({100 * share:.1f}% tissue)"
            ),
        )
    if float(stained.mean() if stained.size else 0.0) < params.all_glass:
        return SlideScope(
            kind="all_glass",
            message="no tissue found: the slide looks like clean glass; check it is the right file",
        )
    if share > params.nearly_all_tissue or float(glass.mean()) < 180:
        return SlideScope(
            kind="nearly_all_tissue",
            message=(
                f"{100 * share:.0f}% of the slide is tissue and little glass is visible, so the glass "
                "level was guessed; pale areas may be mislabelled"
            ),
        )
    return SlideScope(kind="brightfield")


def empty_grid_scope(tmap: TissueMap) -> SlideScope:
    """The scope of a slide on which no grid patch reached the tissue share.

    Glass and fluorescence are already named. A bright-field slide with stain or ink on it and not
    one tissue patch is named too (never a silent 0%): its stain is tissue too small for a patch,
    or faint tissue, tissue under pen or precipitate the classical map took for one another.
    """
    if tmap.scope.kind != "brightfield":
        return tmap.scope
    stain, ink = percent(tmap.stain_share), percent(float(tmap.ink.mean()))
    return SlideScope(
        kind="no_tissue_kept",
        message=(
            f"no tissue patch kept, though the slide is not clean glass ({stain}% shows stain, "
            f"{ink}% ink or dark marks): tissue smaller than half a patch, faint tissue or tissue "
            "under pen that the classical map could not tell from precipitate or glass; check the "
            "overlay, or run this slide with a VLM oracle (--oracle)"
        ),
    )


def small_image_scope(width: int, height: int, patch_size: int, patch_px: int) -> SlideScope | None:
    """The scope of an image smaller than a patch on which no patch was kept, or None otherwise.

    The map is read at ``patch_size / patch_px`` downsample and drops pieces under a quarter of a
    patch, so an image smaller than a patch is a few map pixels (a 50 px tile at 512 px patches:
    3 x 3), too coarse to find tissue in or to see glass by. A smaller patch reads it finer.
    """
    if width >= patch_size and height >= patch_size:
        return None
    scale = patch_size / patch_px
    seen = f"{max(1, round(width / scale))} x {max(1, round(height / scale))} px"
    side = min(width, height)
    advice = (
        f"for tiles, run with --patch-size {side} or less (the image's shorter side; a policy's "
        "classify.patch_size)"
        if side >= MIN_PATCH_SIZE
        else f"an image under {MIN_PATCH_SIZE} px a side is below the smallest patch the tool reads"
    )
    return SlideScope(
        kind="image_too_small",
        message=(
            f"no tissue patch kept: the image is {width} x {height} px, smaller than one {patch_size} px "
            f"patch, and the map reads it at 1/{scale:.3g} scale ({seen}), too coarse to tell tissue "
            f"from glass; {advice}"
        ),
    )


def percent(share: float) -> str:
    """A share (0-1) as a percentage with three significant figures: '100', '2.3', '0.04'."""
    return f"{100 * share:.3g}"


def _peel_halo(solid: np.ndarray, od: np.ndarray, ink: np.ndarray, params: MapParams) -> np.ndarray:
    """The map less its glass-side halo: edge pixels much fainter than the tissue just behind them.

    Growth's 3x3 means and the closing carry the map up to two pixels past the truth's
    half-inside edge into the blurred rim (the map was ~1 px wide all round: 2-5% of the area).
    A pixel half in tissue reads about half the OD of the tissue behind it, a rim pixel outside
    it a quarter or less. Each pass drops the edge pixels whose OD is under ``halo_od`` of the
    mean OD (each pixel counted up to ``halo_cap_od``: the substrate, not its dark nuclei and
    fibres) of the interior pixels within 2 px. Tissue fainter than ``halo_min_od`` grows no
    halo (a quarter of its OD is below growth's threshold), so its edge is left as it is; so is
    an edge that faces ink (no glass edge: the stroke was given back to the tissue).
    """
    for _ in range(params.halo_passes):
        inner = np.asarray(ndi.binary_erosion(solid | ink, border_value=1)) & solid
        share = ndi.uniform_filter(inner.astype(np.float32), 5)
        substrate = np.where(inner, np.minimum(od, params.halo_cap_od), 0.0).astype(np.float32)
        behind = ndi.uniform_filter(substrate, 5) / np.maximum(share, 1e-6)
        solid = inner | (solid & ((od > params.halo_od * behind) | (behind < params.halo_min_od)))
    return solid


def _stained_holes(
    solid: np.ndarray, od: np.ndarray, ink: np.ndarray, min_area: float, min_od: float
) -> np.ndarray:
    """Holes of the map larger than ``min_area`` px whose median pixel (ink aside) is stained: OD
    above ``min_od``.

    Smaller holes were filled whatever they held. A larger one that a lumen, a tear or a gap between
    pieces leaves shows glass, but a fat lobule or pale stroma enclosed by a section shows its
    membranes and substrate (HistoQC's coverslip-edge H&E thumbnail: a lobule of 7 patches, median
    OD 0.066, where glass holes read 0.01 or less). A hole mostly of ink is left to the ink rules.
    """
    labels, sizes = enclosed_holes(solid)
    large = sizes > min_area
    if not large.any():
        return np.zeros(solid.shape, dtype=bool)
    index = np.flatnonzero(large)
    median = np.asarray(ndi.median(od, np.where(ink, 0, labels), index), dtype=np.float64)
    ink_share = np.asarray(ndi.mean(ink, labels, index), dtype=np.float64)
    keep = np.zeros(len(sizes), dtype=bool)
    keep[index] = (np.nan_to_num(median) > min_od) & (ink_share < 0.5)
    return np.asarray(keep[labels])


def _under_ink(solid: np.ndarray, ink: np.ndarray, reach: float) -> np.ndarray:
    """Ink pixels that tissue closes around within ``reach`` px: a stroke drawn across tissue."""
    if reach <= 0 or not (solid.any() and ink.any()):
        return np.zeros(solid.shape, dtype=bool)
    grown = ndi.distance_transform_edt(~solid) <= reach
    closed = ndi.distance_transform_edt(grown) > reach
    return np.asarray(closed & ink)


def _drop_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    """``mask`` without its components smaller than ``min_area`` pixels."""
    return remove_small_components(mask, math.ceil(min_area))[0]
