"""Faint tissue found by its membranes (``oracles.membrane_loops``, tissue_map rule 8).

Beer-Lambert images at the map's scale (32 px a patch): a silver-stained strand whose substrate is
too faint to seed, outlined glomerulus-like loops in it, and beside it what glass holds that must
stay glass: a precipitate haze, a lone loop, filled dark blobs and a bubble rim.
"""

from __future__ import annotations

import numpy as np
import pytest
from stage_support import dice, granule_haze_on_glass

from tissue_oracle.oracles.map_params import MapParams
from tissue_oracle.oracles.membrane_loops import membrane_loops
from tissue_oracle.oracles.tissue_map import tissue_map

SILVER = np.array([0.10, 0.12, 0.09])  # near-neutral dark membranes


def rings(xs: np.ndarray, ys: np.ndarray, centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    return np.any([np.abs(np.hypot(xs - cx, ys - cy) - radius) <= 0.8 for cx, cy in centres], axis=0)


def faint_strand_with_loops(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A 12 x 14 patch image: a faint lilac strand holding two rows of membrane loops, and on the
    glass beside it a granule haze, one lone loop, three filled dark blobs and a bubble rim."""
    rng = np.random.default_rng(seed)
    h, w = 384, 448
    ys, xs = np.mgrid[:h, :w]
    strand = (((xs - 150) / 120) ** 2 + ((ys - 110) / 38) ** 2) <= 1
    od = np.zeros((h, w, 3), np.float32)
    od[strand] += np.array([0.012, 0.02, 0.009]) * rng.uniform(0.7, 1.3, (int(strand.sum()), 1))
    centres = [(cx, cy) for cx in range(50, 260, 22) for cy in (98, 122)]
    loops = rings(xs, ys, centres, 7) & strand
    od[loops] += SILVER * 1.2
    lone = rings(xs, ys, [(380, 60)], 7)
    od[lone] += SILVER * 1.2
    blobs = np.any([np.hypot(xs - cx, ys - 40) <= 5 for cx in (300, 325, 350)], axis=0)
    od[blobs] += SILVER * 1.2
    bubble = np.abs(np.hypot(xs - 370, ys - 320) - 40) <= 2.5
    od[bubble] += np.array([0.35, 0.35, 0.35])
    zone = (((xs - 150) / 110) ** 2 + ((ys - 280) / 70) ** 2) <= 1
    rgb = granule_haze_on_glass(od, zone, (0.03, 0.09, 0.04), rng)
    return rgb, strand, {"haze": zone, "lone loop": lone, "blobs": blobs, "bubble rim": bubble}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_faint_strand_is_found_by_its_membrane_loops_and_glass_stays_glass(seed: int) -> None:
    rgb, strand, glass_marks = faint_strand_with_loops(seed)
    without = tissue_map(rgb, 32, MapParams(membrane_loops=False)).solid
    assert without[strand].mean() < 0.2  # too faint to seed: the map without the rule misses it
    solid = tissue_map(rgb, 32).solid
    assert dice(solid, strand) >= 0.85
    for name, mark in glass_marks.items():
        assert solid[mark].mean() < 0.05, name


def test_only_closed_outlines_of_loop_size_are_loops() -> None:
    ys, xs = np.mgrid[:128, :384]
    od = np.zeros((128, 384), np.float32)
    od[rings(xs, ys, [(40, 64)], 7)] = 0.3  # a loop: counts
    od[np.hypot(xs - 110, ys - 64) <= 8] = 0.3  # a filled blob: no hole
    arc = rings(xs, ys, [(180, 64)], 7) & (xs < 184)  # an open arc: no hole
    od[arc] = 0.3
    big = np.abs(np.hypot(xs - 300, ys - 64) - 40) <= 2.5
    od[big] = 0.3  # an outline of 1.2 patches (1257 px: a thick bubble rim's size)
    od[::6, ::6] = np.maximum(od[::6, ::6], 0.3)  # granules
    nothing = np.zeros(od.shape, dtype=bool)
    found = membrane_loops(od, nothing, nothing, 32, MapParams())
    assert found[:, :60].any()
    assert not found[:, 60:].any()
    larger = membrane_loops(od, nothing, nothing, 32, MapParams(loop_max_area=2.0))
    assert larger[big].all() and not larger[:, 60:240].any()  # with a larger bound the big outline counts
