"""ground_boxes: the box geometry from tables, and the stage over the classical oracle with faults."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from stage_support import CORES, SLIDE_H, SLIDE_W, FaultyOracle, make_deps, open_core_slide

from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.tools.ground_boxes import (
    GroundBoxesInput,
    GroundBoxesParams,
    clip_box,
    ground_boxes,
    merge_boxes,
    overlap_of_smaller,
    pad_box,
    tidy_boxes,
)
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import ALL_QUESTIONS, Box, BoxesAnswer, BoxesRequest


def b(x0: int, y0: int, x1: int, y1: int) -> Box:
    return Box(x0=x0, y0=y0, x1=x1, y1=y1)


def corners(box: Box | None) -> tuple[int, int, int, int] | None:
    return None if box is None else (box.x0, box.y0, box.x1, box.y1)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (b(10, 10, 20, 20), (10, 10, 20, 20)),
        (b(-5, -5, 20, 20), (0, 0, 20, 20)),
        (b(90, 90, 150, 150), (90, 90, 100, 100)),
        (b(100, 0, 120, 10), None),
        (b(-20, -20, -1, -1), None),
    ],
)
def test_clip_box(box: Box, expected: tuple[int, int, int, int] | None):
    assert corners(clip_box(box, 100, 100)) == expected


@pytest.mark.parametrize(
    ("box", "fraction", "expected"),
    [
        (b(40, 40, 60, 60), 0.25, (37, 37, 63, 63)),  # 20 px grows by 5: ceil(2.5) per side
        (b(40, 40, 80, 60), 0.5, (30, 35, 90, 65)),  # width and height grow separately
        (b(0, 0, 40, 40), 0.5, (0, 0, 50, 50)),  # clipped at the slide edge
        (b(40, 40, 60, 60), 0.0, (40, 40, 60, 60)),
    ],
)
def test_pad_box(box: Box, fraction: float, expected: tuple[int, int, int, int]):
    assert corners(pad_box(box, fraction, 100, 100)) == expected


@pytest.mark.parametrize(
    ("a", "c", "expected"),
    [
        (b(0, 0, 10, 10), b(20, 20, 30, 30), 0.0),
        (b(0, 0, 10, 10), b(10, 0, 20, 10), 0.0),  # touching edges do not overlap
        (b(0, 0, 10, 10), b(5, 0, 15, 10), 0.5),
        (b(0, 0, 100, 100), b(10, 10, 20, 20), 1.0),  # contained: over the smaller box
        (b(0, 0, 10, 10), b(8, 0, 18, 10), 0.2),
    ],
)
def test_overlap_of_smaller(a: Box, c: Box, expected: float):
    assert overlap_of_smaller(a, c) == pytest.approx(expected)
    assert overlap_of_smaller(c, a) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("boxes", "threshold", "expected"),
    [
        ([b(0, 0, 10, 10), b(8, 0, 18, 10)], 0.2, [(0, 0, 18, 10)]),  # exactly at the threshold merges
        ([b(0, 0, 10, 10), b(9, 0, 19, 10)], 0.2, [(0, 0, 10, 10), (9, 0, 19, 10)]),
        # a chain: the third overlaps neither of the first two, only the box they merge into
        ([b(0, 0, 10, 10), b(5, 5, 15, 15), b(0, 11, 4, 21)], 0.2, [(0, 0, 15, 21)]),
        ([b(0, 0, 10, 10), b(50, 50, 60, 60)], 0.2, [(0, 0, 10, 10), (50, 50, 60, 60)]),
        ([], 0.2, []),
    ],
)
def test_merge_boxes(boxes: list[Box], threshold: float, expected: list[tuple[int, int, int, int]]):
    assert [corners(x) for x in merge_boxes(boxes, threshold)] == expected


@pytest.mark.parametrize(
    ("raw", "expected", "reason"),
    [
        ([], [], "no boxes"),
        ([b(200, 200, 300, 300)], [], "no boxes inside the slide"),
        ([b(0, 0, 90, 90)], [], "a single box covers more than 60% of the slide"),  # 81% of the slide
        ([b(-50, -50, 90, 80)], [], "a single box covers more than 60% of the slide"),  # judged once clipped
        ([b(0, 0, 70, 80)], [(0, 0, 79, 90)], ""),  # 56%: kept
        # a giant box among others is kept (it may hold tissue no other box does), and swallows them
        ([b(0, 0, 90, 90), b(10, 10, 20, 20)], [(0, 0, 100, 100)], ""),
        ([b(10, 10, 30, 30), b(26, 10, 46, 30)], [(7, 7, 49, 33)], ""),  # padding makes them overlap
    ],
)
def test_tidy_boxes(raw: list[Box], expected: list[tuple[int, int, int, int]], reason: str):
    boxes, why = tidy_boxes(raw, GroundBoxesParams(), 100, 100)
    assert [corners(x) for x in boxes] == expected
    assert why == reason


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


def test_classical_boxes_hold_each_core(slide: Any):
    deps, recorder = make_deps(slide)
    out = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16), deps))
    assert not out.fallback and out.attempts == 1 and out.failures == []
    assert len(out.boxes) == 2
    for cx, cy, r in CORES:
        holders = [
            x for x in out.boxes if x.x0 <= cx - r and x.x1 >= cx + r and x.y0 <= cy - r and x.y1 >= cy + r
        ]
        assert len(holders) == 1, (cx, cy, out.boxes)
    assert [c.stage for c in recorder.calls] == ["ground_boxes"]
    assert recorder.calls[0].role == "oracle"


def test_failed_answers_are_retried_then_accepted(slide: Any):
    oracle = FaultyOracle(inner=ClassicalOracle(), fail={"boxes": {1, 2}})
    deps, _ = make_deps(slide, oracle)
    out = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16), deps))
    assert out.attempts == 3 and not out.fallback and len(out.boxes) == 2
    assert len(out.failures) == 2 and all("injected failure" in f for f in out.failures)


def test_every_attempt_failing_falls_back_to_the_whole_slide(slide: Any):
    oracle = FaultyOracle(inner=ClassicalOracle(), fail={"boxes": {1, 2, 3}})
    deps, _ = make_deps(slide, oracle)
    out = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16, retries=2), deps))
    assert out.fallback and out.attempts == 3
    assert [corners(x) for x in out.boxes] == [(0, 0, SLIDE_W, SLIDE_H)]


def test_budget_refusal_falls_back_at_once(slide: Any):
    oracle = FaultyOracle(inner=ClassicalOracle(), budget_after=0)
    deps, recorder = make_deps(slide, oracle)
    out = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16), deps))
    assert out.fallback and out.budget_exhausted and out.attempts == 0
    assert recorder.calls == []


@dataclass(kw_only=True)
class WholeImageAnswers:
    """Stands in for a VLM that boxes the whole thumbnail (no real VLM runs here)."""

    backend: str = "test"
    model: str = "whole-image"
    questions: frozenset = ALL_QUESTIONS
    is_vlm: bool = False
    contexts: list[CallContext] | None = None

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        assert self.contexts is not None
        self.contexts.append(ctx)
        return BoxesAnswer(boxes=[Box(x0=0, y0=0, x1=req.slide_width, y1=req.slide_height)])


def test_oversized_answers_are_rejected_retried_uncached_then_fall_back(slide: Any):
    oracle = WholeImageAnswers(contexts=[])
    deps, _ = make_deps(slide, oracle)  # type: ignore[arg-type]
    out = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16, retries=3, stop_on_repeat=False), deps))
    assert out.fallback and out.attempts == 4
    assert out.failures == ["a single box covers more than 60% of the slide"] * 4
    assert oracle.contexts is not None
    assert [c.use_cache for c in oracle.contexts] == [True, False, False, False]


def test_a_repeated_rejected_answer_stops_the_retries(slide: Any):
    oracle = WholeImageAnswers(contexts=[])
    deps, _ = make_deps(slide, oracle)  # type: ignore[arg-type]
    out = asyncio.run(ground_boxes(GroundBoxesInput(downsample=16, retries=3), deps))
    assert out.fallback and out.attempts == 2
    assert out.failures[-1] == "attempt 2 repeated a rejected answer; not asking again"
