"""A flat strip along the image's edge is a tint or a shadow, not tissue (``edge_strips.flat_strips``).

Beyond a coverslip's edge, mounting medium can tint the glass as strongly as a pale stain, so the
weak-strip rule (unsaturated pixels only) leaves it. It lies along the edge and is even, where
tissue is textured by nuclei, fibres and glands. Found on a fresh synthetic Jones slide (leica-like
seed 6806) and on HistoQC's IHC coverslip-edge thumbnail (skipped when ../shared is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tissue_oracle.oracles.edge_strips import flat_strips
from tissue_oracle.oracles.map_params import MapParams
from tissue_oracle.oracles.tissue_map import tissue_map

WITHOUT_FLAT_RULE = MapParams(flat_strips=False)
PATCH = 32
TEXTURE = 0.06


def textured(rng: np.random.Generator, shape: tuple[int, int], base: float) -> np.ndarray:
    """OD with tissue's texture: a substrate and dark dots (nuclei) on a tenth of its pixels."""
    od = base * rng.uniform(0.8, 1.2, shape)
    od[rng.random(shape) < 0.1] += 3 * base
    return od.astype(np.float32)


def strip_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 12 x 12 patch map with a flat tint 0.5 patch deep along the bottom edge."""
    od = np.zeros((384, 384), np.float32)
    solid = np.zeros(od.shape, dtype=bool)
    solid[368:, :] = True
    od[368:, :] = 0.06 + rng.normal(0, 0.001, (16, 384))
    return solid, od


def test_a_flat_strip_along_the_edge_is_dropped() -> None:
    solid, od = strip_case(np.random.default_rng(0))
    assert np.array_equal(flat_strips(solid, od, PATCH, TEXTURE), solid)


def test_a_textured_strip_along_the_edge_is_tissue() -> None:
    rng = np.random.default_rng(1)
    solid, od = strip_case(rng)
    od[solid] = textured(rng, (16, 384), 0.06).ravel()
    assert not flat_strips(solid, od, PATCH, TEXTURE).any()


@pytest.mark.parametrize(
    "where",
    [
        (slice(180, 196), slice(0, 384)),  # as long and flat, but across the middle, not along an edge
        (slice(256, 384), slice(0, 160)),  # flat and at the edge, but a block, not a strip
        (slice(0, 384), slice(100, 116)),  # flat and reaching two edges, but across them, not along one
        (slice(360, 384), slice(0, 100)),  # along the edge, but under 4 patches long
    ],
)
def test_only_a_long_strip_lying_along_an_edge_is_tested(where: tuple[slice, slice]) -> None:
    rng = np.random.default_rng(2)
    od = np.zeros((384, 384), np.float32)
    solid = np.zeros(od.shape, dtype=bool)
    solid[where] = True
    od[where] = 0.06 + rng.normal(0, 0.001, od[where].shape)
    assert not flat_strips(solid, od, PATCH, TEXTURE).any()


def test_the_map_drops_a_tint_beyond_a_coverslip_and_keeps_the_tissue() -> None:
    """Map scale (12 x 12 patches of 32 px): a pale, textured Jones-like piece, and along the bottom,
    beyond a coverslip's dark edge line, glass tinted yellow (OD 0.02 / 0.04 / 0.08, as ``synth``
    draws it): more saturated than the pale piece, so the weak-strip rule leaves it."""
    rng = np.random.default_rng(3)
    h, w = 384, 384
    ys, xs = np.mgrid[:h, :w]
    piece = ((xs - 190) / 130) ** 2 + ((ys - 160) / 80) ** 2 <= 1
    od = np.zeros((h, w, 3), np.float32)
    od[piece] += np.array([0.12, 0.14, 0.10]) * textured(rng, (int(piece.sum()),), 1.0)[:, None]
    line = (ys >= 352) & (ys < 356)
    od[line] += 0.5
    beyond = ys >= 356
    od[beyond] += np.array([0.02, 0.04, 0.08])
    glass = np.array([238.0, 236.0, 240.0]) + rng.normal(0, 1.0, (h, w, 1))
    rgb = np.clip(glass * 10 ** (-od), 0, 255).astype(np.uint8)
    before = tissue_map(rgb, PATCH, WITHOUT_FLAT_RULE).solid
    assert before[beyond].mean() > 0.8  # the weak-strip rule alone keeps the tint
    solid = tissue_map(rgb, PATCH).solid
    assert solid[beyond].mean() < 0.05
    assert np.array_equal(solid & piece, before & piece)
    assert solid[piece].mean() > 0.95


def test_the_tint_beyond_a_real_coverslip_is_dropped(real_data: Path) -> None:
    """HistoQC's IHC coverslip-edge thumbnail: the band between the image's top and the coverslip's
    edge (rows 9-72, found by the rule; its pixels' OD residual is 0.038 of their median) goes; the
    sections below it stay as they were."""
    path = real_data / "pen" / "models__coverslip_edge_ihc__coverslip_edge.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    before = tissue_map(rgb, PATCH, WITHOUT_FLAT_RULE).solid
    solid = tissue_map(rgb, PATCH).solid
    assert before[:60].mean() > 0.4
    assert solid[:60].mean() < 0.03
    assert np.array_equal(solid[240:], before[240:])
