"""Faint tissue found by its membranes: clusters of small dark loops (tissue_map rule 8).

A silver (Jones) or PAS stain can leave the substrate of a piece barely above glass (median OD
0.05-0.08, under the map's seed level) while its basement membranes stay dark: the outlines of
glomerular capillaries and tubules, closed loops a few pixels across at the map's scale. Glass
holds no such loops; precipitate is dots and clumps, and a bubble rim, a pen stroke or a slide
border is ink. So where the map found nothing, three or more small dark loops close together mark a
piece of tissue, which is grown into the faint substrate around them. Not a VLM: pixel rules.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.map_params import MapParams

_EIGHT = np.ones((3, 3), dtype=bool)


def loop_tissue(
    od: np.ndarray, ink: np.ndarray, solid: np.ndarray, patch_px: int, params: MapParams
) -> np.ndarray:
    """Pixels outside ``solid`` that belong to pieces marked by clusters of membrane loops.

    ``od`` is the summed OD against the local glass, ``ink`` the ink mask, ``solid`` the map so far,
    all at ``patch_px`` pixels per patch side. The result never holds ink or ``solid`` pixels.
    """
    loops = membrane_loops(od, ink, solid, patch_px, params)
    if not loops.any():
        return np.zeros(od.shape, dtype=bool)
    reach = max(1, round(params.loop_reach * patch_px))
    near = ndi.binary_dilation(loops, iterations=reach)
    groups, count = ndi.label(near)
    loop_ids, _ = ndi.label(loops, structure=_EIGHT)
    group_of_loop = ndi.maximum(groups, loop_ids, np.arange(1, int(loop_ids.max()) + 1))
    per_group = np.bincount(np.asarray(group_of_loop, dtype=np.int64), minlength=count + 1)
    clustered = per_group >= params.loop_min_count
    clustered[0] = False
    if not clustered.any():
        return np.zeros(od.shape, dtype=bool)
    # The loops' hull: their dilated cluster closed and brought back halfway to the loops.
    hull = ndi.binary_closing(clustered[groups], iterations=reach)
    hull = np.asarray(ndi.binary_erosion(hull, iterations=max(1, reach // 2)))
    # Grown into the faint substrate (a wide mean of capped OD, never ink) within half a patch of the hull.
    window = max(3, patch_px // 4) | 1
    substrate = ndi.uniform_filter(np.minimum(od, params.loop_cap_od), window) > params.loop_substrate_od
    substrate &= ~ink
    within = ndi.distance_transform_edt(~hull) <= params.loop_grow_reach * patch_px
    piece = ndi.binary_propagation(hull & substrate, mask=substrate & within)
    return np.asarray(ndi.binary_fill_holes(piece)) & ~solid & ~ink  # a filled hole may be ink


def membrane_loops(
    od: np.ndarray, ink: np.ndarray, solid: np.ndarray, patch_px: int, params: MapParams
) -> np.ndarray:
    """Dark components outside ``solid`` and ink that enclose a hole (loops) and hold
    ``loop_min_area`` to ``loop_max_area`` of a patch."""
    patch_area = patch_px * patch_px
    dark = (od > params.loop_dark) & ~ink & ~solid
    parts, count = ndi.label(dark, structure=_EIGHT)
    if count == 0:
        return np.zeros(od.shape, dtype=bool)
    size = np.bincount(parts.ravel(), minlength=count + 1)
    sized = (size >= params.loop_min_area * patch_area) & (size <= params.loop_max_area * patch_area)
    sized[0] = False
    loop = np.zeros(count + 1, dtype=bool)
    boxes = ndi.find_objects(parts)
    for index in np.flatnonzero(sized):
        box = boxes[index - 1]
        part = parts[box] == index
        hole = int(np.asarray(ndi.binary_fill_holes(part)).sum()) - int(size[index])
        loop[index] = hole >= params.loop_hole * size[index]
    return np.asarray(loop[parts])
