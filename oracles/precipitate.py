"""Stain precipitate and weak edge strips: the pieces the classical map drops (tissue_map rule 5).

Precipitate is granules (one or two pixels at the map's scale) much darker than a faint haze under
them. Faint tissue is pale throughout, nucleated tissue is denser than a haze, and the dark parts of
silver and PAS stains are joined lines (membranes, fibres), not dots. Not a VLM: pixel rules.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.edge_strips import border_strips
from tissue_oracle.oracles.map_params import MapParams
from tissue_oracle.oracles.piece_rings import padded_box, ring_shares


def precipitate_pieces(
    solid: np.ndarray,
    saturation: np.ndarray,
    od: np.ndarray,
    ink: np.ndarray,
    params: MapParams,
    min_area: float,
) -> np.ndarray:
    """Pieces of the map that are stain precipitate (isolated dark dots on a faint haze), and weak
    strips along the image's edge.

    What the map holds beyond strong stain (CLAM's saturation Otsu over the image) is faint tissue
    (a continuous pale substrate whose nuclei and fibres are as pale, or joined into lines) or
    precipitate (granules much darker than the haze under them, one or two pixels each at this
    scale). Within strong stain, a saturated precipitate haze beside pale tissue looks the same.
    Pieces of each are tested apart (``_speckled``), so that tissue touching a haze keeps its piece.
    A weak piece the test drops is given back when it continues kept stained tissue and its dots
    are sparse (``_attached``: loose stroma and fat).
    """
    sat = np.round(saturation * 255.0).astype(np.uint8)
    # CLAM blurs with a 7x7 median; a 1x7 then 7x1 median smooths speckle alike, at a quarter the cost
    sat = ndi.median_filter(ndi.median_filter(sat, size=(1, 7), mode="nearest"), size=(7, 1), mode="nearest")
    strong = sat > _otsu_level(sat)
    weak = solid & ~strong
    patch_area = min_area / params.min_piece_area
    strips = border_strips(weak, ink, np.sqrt(patch_area))
    spike = (od - ndi.grey_opening(od, size=3)) > params.speckle_spike
    spikes, n_spikes = ndi.label(spike, structure=np.ones((3, 3), dtype=bool))
    spike_size = np.bincount(spikes.ravel(), minlength=n_spikes + 1)
    isolated = spike & (spike_size[spikes] <= 2)
    hazes = _speckled(weak & ~strips, isolated, od, params, patch_area)
    dropped_strong = (
        _speckled(solid & strong, isolated, od, params, patch_area)
        if params.speckle_strong
        else np.zeros(solid.shape, dtype=bool)
    )
    hazes &= ~_attached(hazes, solid & strong & ~dropped_strong, isolated, params, patch_area)
    return strips | hazes | dropped_strong


def _attached(
    hazes: np.ndarray, stained: np.ndarray, isolated: np.ndarray, params: MapParams, patch_area: float
) -> np.ndarray:
    """The pieces of ``hazes`` (weak pieces the speckle test took for precipitate) that are the pale
    part of a stained piece: at least ``attached_min_area`` patches, with at least ``attached_share``
    of the ring just outside them on ``stained`` tissue the map keeps, and granules only a little
    above the speckle test's floor (an isolated-dot share under ``attached_iso``).

    Loose stroma and fat hold sparse nuclei on a pale substrate, dots on a haze as precipitate does,
    and they continue a stained piece: HistoQC's coverslip-edge H&E thumbnail has 49 patches of fat
    beside a tumour, 0.60 of their ring on it, with 0.027 of their pixels isolated dots. Precipitate
    can lie against tissue too, but its granules are denser: on the 160 synthetic slides that no
    held-out set uses, every dropped haze of 2 patches or more with at least 0.2 of its ring on
    tissue had 0.034 or more, and the one tissue piece the test dropped there had 0.027.
    """
    pieces, count = ndi.label(hazes)
    if count == 0 or not stained.any():
        return np.zeros(hazes.shape, dtype=bool)
    index = np.arange(1, count + 1)
    area = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    large = area >= params.attached_min_area * patch_area
    if not large.any():
        return np.zeros(hazes.shape, dtype=bool)
    iso_share = ndi.sum_labels(isolated, pieces, index) / np.maximum(area, 1)
    reach = max(1, round(np.sqrt(patch_area) / 16))
    window = padded_box(np.isin(pieces, index[large]), 2 * reach)
    on_stained = ring_shares(pieces[window], count, stained[window], reach)
    keep = large & (on_stained >= params.attached_share) & (iso_share < params.attached_iso)
    return np.asarray(np.concatenate([[False], keep])[pieces])


def _speckled(
    mask: np.ndarray, isolated: np.ndarray, od: np.ndarray, params: MapParams, patch_area: float
) -> np.ndarray:
    """The pieces of ``mask`` dotted with isolated dark spikes, whose dark tail is far above their
    median and whose median is a faint haze, unless their dark parts are joined lines."""
    pieces, count = ndi.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    index = np.arange(1, count + 1)
    area = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    iso_share = ndi.sum_labels(isolated, pieces, index) / np.maximum(area, 1)
    median, p90 = _label_quantiles(od, pieces, count, (0.5, 0.9))
    contrast = p90 / np.maximum(median, 1e-3)
    haze = median < params.speckle_haze_od
    drop = (area >= params.min_piece_area * patch_area) & (iso_share > params.speckle_iso)
    drop &= (contrast > params.speckle_contrast) & haze
    # Only a piece the test drops can be spared as joined lines: measure those alone (most slides have none).
    large = drop & (area >= params.line_piece_area * patch_area)
    if large.any():
        candidates = np.where(np.concatenate([[False], large])[pieces], pieces, 0)
        share = _line_share(candidates, count, od, median, params, patch_area)
        drop &= ~(large & (share >= params.line_share))
    return np.asarray(np.concatenate([[False], drop])[pieces])


def _line_share(
    pieces: np.ndarray, count: int, od: np.ndarray, median: np.ndarray, params: MapParams, patch_area: float
) -> np.ndarray:
    """Per piece 1..count, the share of its dark pixels (``line_dark`` x its median OD) that lie in
    components of ``line_min_area`` to ``line_max_area`` patches: membranes and fibres, where
    precipitate's granules are dots and small clusters, and a coverslip edge is one long line."""
    index = np.arange(1, count + 1)
    piece_median = np.concatenate([[np.inf], median])[pieces]
    dark = (pieces > 0) & (od > params.line_dark * piece_median)
    parts, n_parts = ndi.label(dark, structure=np.ones((3, 3), dtype=bool))
    part_size = np.bincount(parts.ravel(), minlength=n_parts + 1)
    part_size[0] = 0
    size = part_size[parts]
    joined = dark & (size >= params.line_min_area * patch_area) & (size <= params.line_max_area * patch_area)
    return ndi.sum_labels(joined, pieces, index) / np.maximum(ndi.sum_labels(dark, pieces, index), 1)


def _otsu_level(values: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: the level that best splits its histogram in two (255 when flat)."""
    counts = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    below = np.cumsum(counts)
    above = below[-1] - below
    mean_below = np.cumsum(counts * levels) / np.maximum(below, 1)
    mean_above = (np.sum(counts * levels) - np.cumsum(counts * levels)) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return int(np.argmax(between)) if between.max() > 0 else 255


def _label_quantiles(
    values: np.ndarray, labels: np.ndarray, count: int, quantiles: tuple[float, ...]
) -> list[np.ndarray]:
    """Per label 1..count, the values' quantiles (nearest rank) from one sort of the labelled pixels."""
    inside = labels > 0
    lab, val = labels[inside], values[inside]
    order = np.lexsort((val, lab))
    sizes = np.bincount(lab, minlength=count + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ranked = val[order]
    last = np.maximum(sizes - 1, 0)
    return [
        np.where(
            sizes > 0, ranked[np.minimum(starts + np.round(q * last).astype(np.int64), len(ranked) - 1)], 0.0
        )
        for q in quantiles
    ]
