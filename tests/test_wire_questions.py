"""Both transports drive every oracle question over real HTTP to loopback fake servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tissue_oracle.bench.fakes import fixtures
from tissue_oracle.bench.fakes.server import FakeServer
from tissue_oracle.oracles.vlm import VLMOracle
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import ModelPrice, Stage

FAMILIES = ["openai", "gemini"]
SECRET = "sk-test-secret-never-recorded"


@pytest.fixture(params=FAMILIES)
def served(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, FakeServer]]:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    server = fixtures.start_server(request.param)
    yield request.param, server
    server.stop()


def ctx(rec: MemoryRecorder, stage: Stage) -> CallContext:
    return CallContext(run_id="run", slide_id="slide", stage=stage, role="oracle", recorder=rec)


def session(oracle: VLMOracle, body: Callable[[VLMOracle], Awaitable[Any]]) -> Any:
    """Run ``body`` in one event loop and close the oracle's HTTP client at the end."""

    async def main() -> Any:
        try:
            return await body(oracle)
        finally:
            await oracle.aclose()

    return asyncio.run(main())


def test_boxes_come_back_in_level0(served: tuple[str, FakeServer]) -> None:
    family, server = served
    rec = MemoryRecorder()
    oracle = fixtures.oracle_for(family, server, price=ModelPrice(input_per_mtok=1.0, output_per_mtok=4.0))
    answer = session(oracle, lambda o: o.boxes(fixtures.boxes_request(), ctx(rec, "ground_boxes")))
    centres = sorted(((b.x0 + b.x1) / 128, (b.y0 + b.y1) / 128) for b in answer.boxes)
    assert len(centres) == 2
    assert centres[0] == pytest.approx((50, 60), abs=3) and centres[1] == pytest.approx((150, 60), abs=3)
    (row,) = rec.calls
    assert row.ok and row.backend == family and row.template == "ground_boxes" and row.template_hash
    assert row.input_tokens > 0 and row.cost_usd > 0 and answer.usage.usd == pytest.approx(row.cost_usd)
    assert SECRET not in row.model_dump_json()


def test_patch_labels_one_call_per_patch(served: tuple[str, FakeServer]) -> None:
    family, server = served
    rec = MemoryRecorder()
    req = fixtures.patch_request(4)
    answer = session(
        fixtures.oracle_for(family, server), lambda o: o.patch_labels(req, ctx(rec, "classify_patches"))
    )
    assert [lab.label for lab in answer.labels] == ["tissue", "background", "tissue", "background"]
    assert [lab.ref for lab in answer.labels] == req.patches
    assert answer.labels[0].focus == "sharp"
    assert len(rec.calls) == 4 and server.requests == 4 and answer.usage.calls == 4


def test_few_shot_sends_exemplars_first(served: tuple[str, FakeServer]) -> None:
    family, server = served
    rec = MemoryRecorder()

    async def body(oracle: VLMOracle) -> Any:
        picked = await oracle.rerank(fixtures.rerank_request(), ctx(rec, "rerank_exemplars"))
        req = fixtures.patch_request(2).model_copy(update={"exemplars": picked.exemplars})
        return picked, await oracle.patch_labels(req, ctx(rec, "classify_patches"))

    picked, answer = session(fixtures.oracle_for(family, server), body)
    assert {ex.label: ex.ref.x for ex in picked.exemplars} == {"tissue": 512, "background": 1536}
    assert [lab.label for lab in answer.labels] == ["tissue", "background"]
    assert all(lab.source == "few_shot" for lab in answer.labels)
    assert [entry["n_images"] for entry in server.log[-2:]] == [3, 3]
    assert rec.calls[-1].template == "classify_patch_fewshot" and len(rec.calls[-1].image_hashes) == 3


def test_points_inside_the_region(served: tuple[str, FakeServer]) -> None:
    family, server = served
    rec = MemoryRecorder()
    req = fixtures.points_request()
    answer = session(fixtures.oracle_for(family, server), lambda o: o.points(req, ctx(rec, "point_ground")))
    assert sorted(p.label for p in answer.points) == ["background", "background", "tissue", "tissue"]
    for p in answer.points:
        assert req.region.x0 <= p.x < req.region.x1 and req.region.y0 <= p.y < req.region.y1
        crop_x, crop_y = (p.x - req.region.x0) // 8, (p.y - req.region.y0) // 8
        in_disc = (crop_x - 40) ** 2 + (crop_y - 64) ** 2 <= 30**2
        assert in_disc == (p.label == "tissue")


def test_review_grades(served: tuple[str, FakeServer]) -> None:
    family, server = served
    rec = MemoryRecorder()
    req = fixtures.review_request()
    answer = session(fixtures.oracle_for(family, server), lambda o: o.review(req, ctx(rec, "review_mask")))
    assert (answer.grades.precision, answer.grades.recall) == (1, 1)
    assert answer.grades.precision_pct is not None and answer.grades.precision_pct >= 95


def test_repeat_request_is_served_from_the_cache(served: tuple[str, FakeServer]) -> None:
    family, server = served
    rec = MemoryRecorder()

    async def body(oracle: VLMOracle) -> Any:
        first = await oracle.boxes(fixtures.boxes_request(), ctx(rec, "ground_boxes"))
        return first, await oracle.boxes(fixtures.boxes_request(), ctx(rec, "ground_boxes"))

    first, second = session(fixtures.oracle_for(family, server), body)
    assert second.boxes == first.boxes and second.usage.cache_hit and server.requests == 1
    assert [c.cache_hit for c in rec.calls] == [False, True]
