"""point_ground and rerank_exemplars: geometry from tables, then Auto-context over the classical oracle."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from stage_support import CORES, FaultyOracle, blurred_core_slide, core_boxes, make_deps, open_core_slide

from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.tools.point_ground import PointGroundInput, clamp_point, crop_downsample, point_ground
from tissue_oracle.tools.rerank_exemplars import (
    RerankExemplarsInput,
    candidates_from_points,
    patch_at,
    rerank_exemplars,
    select_exemplars,
)
from tissue_oracle.tools.schemas import Box, Exemplar, Focus, Label, PatchRef, Point


@pytest.mark.parametrize(
    ("region", "size", "expected"),
    [
        (Box(x0=0, y0=0, x1=4096, y1=1024), 1024, 4.0),
        (Box(x0=0, y0=0, x1=1000, y1=3000), 1000, 3.0),
        (Box(x0=0, y0=0, x1=300, y1=200), 1024, 1.0),  # never upsampled
    ],
)
def test_crop_downsample(region: Box, size: int, expected: float):
    assert crop_downsample(region, size) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [(50, 50, (50, 50)), (5, 50, (10, 50)), (200, 200, (99, 99)), (10, 99, (10, 99))],
)
def test_clamp_point(x: int, y: int, expected: tuple[int, int]):
    p = clamp_point(Point(x=x, y=y, label="tissue"), Box(x0=10, y0=20, x1=100, y1=100))
    assert (p.x, p.y) == expected and p.label == "tissue"


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (1000, 1000, (744, 744)),  # centred
        (10, 20, (0, 0)),  # pushed inside at the top-left
        (2040, 1530, (1536, 1024)),  # pushed inside at the bottom-right
    ],
)
def test_patch_at(x: int, y: int, expected: tuple[int, int]):
    ref = patch_at(Point(x=x, y=y, label="tissue"), 512, 2048, 1536)
    assert (ref.x, ref.y, ref.size) == (*expected, 512)


def test_patch_larger_than_slide_starts_at_the_origin():
    ref = patch_at(Point(x=100, y=100, label="background"), 512, 300, 200)
    assert (ref.x, ref.y) == (0, 0)


def test_candidates_deduplicate_per_label():
    points = [
        Point(x=10, y=10, label="tissue"),
        Point(x=12, y=11, label="tissue"),
        Point(x=12, y=11, label="background"),
    ]
    found = candidates_from_points(points, 512, 2048, 2048)
    assert [(r.x, r.y, lab) for r, lab in found] == [(0, 0, "tissue"), (0, 0, "background")]


def ex(label: Label, focus: Focus | None, x: int) -> Exemplar:
    return Exemplar(ref=PatchRef(x=x, y=0), label=label, focus=focus, image=np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize(
    ("picks", "top_k", "sharp", "kept_x", "dropped"),
    [
        ([ex("tissue", "sharp", 1), ex("tissue", "sharp", 2), ex("background", None, 3)], 1, True, [1, 3], 0),
        (
            [ex("tissue", "mild_blur", 1), ex("tissue", "sharp", 2), ex("background", None, 3)],
            1,
            True,
            [2, 3],
            1,
        ),
        ([ex("tissue", "out_of_focus", 1), ex("background", None, 3)], 1, True, [3], 1),
        ([ex("tissue", "out_of_focus", 1), ex("background", None, 3)], 1, False, [1, 3], 0),
        ([ex("tissue", None, 1), ex("tissue", "sharp", 2)], 2, True, [1, 2], 0),  # no grade is not blurred
        (
            [ex("background", None, 3), ex("background", None, 4), ex("tissue", "sharp", 1)],
            1,
            True,
            [1, 3],
            0,
        ),
    ],
)
def test_select_exemplars(picks: list[Exemplar], top_k: int, sharp: bool, kept_x: list[int], dropped: int):
    kept, n = select_exemplars(picks, top_k, sharp)
    assert [e.ref.x for e in kept] == kept_x and n == dropped


# --------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


def test_points_then_exemplars_on_a_core(slide: Any):
    deps, recorder = make_deps(slide)
    region = core_boxes()[0]
    points = asyncio.run(point_ground(PointGroundInput(region=region, crop_size=512), deps))
    assert not points.failed and points.crop_downsample == pytest.approx(1201 / 512)
    assert points.count("tissue") >= 1 and points.count("background") >= 1
    assert all(region.x0 <= p.x < region.x1 and region.y0 <= p.y < region.y1 for p in points.points)
    cx, cy, r = CORES[0]
    for p in points.points:
        inside = (p.x - cx) ** 2 + (p.y - cy) ** 2 <= r * r
        assert inside == (p.label == "tissue"), p
    picked = asyncio.run(rerank_exemplars(RerankExemplarsInput(points=points.points, send_size=128), deps))
    assert not picked.failed and picked.count("tissue") == 1 and picked.count("background") == 1
    assert all(e.image.shape == (128, 128, 3) for e in picked.exemplars)
    tissue = next(e for e in picked.exemplars if e.label == "tissue")
    assert tissue.focus == "sharp"
    assert [c.stage for c in recorder.calls] == ["point_ground", "rerank_exemplars"]
    assert [c.role for c in recorder.calls] == ["oracle", "classifier"]
    assert [i.ref for i in picked.info()] == [e.ref for e in picked.exemplars]


def test_blurred_tissue_is_never_an_exemplar():
    # Sent at full resolution: downscaled 4x, this blur looks sharp to the classical oracle.
    deps, _ = make_deps(blurred_core_slide())
    points = [Point(x=512 + d, y=512, label="tissue") for d in (-200, 0, 200)]
    points.append(Point(x=10, y=10, label="background"))  # the corner lies outside the core
    picked = asyncio.run(rerank_exemplars(RerankExemplarsInput(points=points, send_size=512, spare=2), deps))
    assert picked.count("tissue") == 0 and picked.dropped_not_sharp >= 1
    assert picked.count("background") == 1


def test_failures_and_budget_leave_no_points_or_exemplars(slide: Any):
    region = core_boxes()[0]
    oracle = FaultyOracle(inner=ClassicalOracle(), fail={"points": {1}, "rerank": {1}})
    deps, _ = make_deps(slide, oracle)
    points = asyncio.run(point_ground(PointGroundInput(region=region), deps))
    assert points.failed and points.points == [] and "injected" in (points.error or "")
    picked = asyncio.run(
        rerank_exemplars(RerankExemplarsInput(points=[Point(x=1100, y=1200, label="tissue")]), deps)
    )
    assert picked.failed and picked.exemplars == []
    broke = FaultyOracle(inner=ClassicalOracle(), budget_after=0)
    deps, _ = make_deps(slide, broke)
    points = asyncio.run(point_ground(PointGroundInput(region=region), deps))
    assert points.failed and points.budget_exhausted
    none = asyncio.run(rerank_exemplars(RerankExemplarsInput(points=[]), deps))
    assert none.exemplars == [] and not none.failed and none.candidates == 0
