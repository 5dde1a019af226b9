"""Replay: a wrapped oracle answers from a recorded audit store with zero new calls, or fails clearly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from store_support import call_record

from tissue_oracle.agent.replay_setup import build_replay_oracle, recorded_spec
from tissue_oracle.oracles.base import (
    BOXES_CODEC,
    REVIEW_CODEC,
    CallSpec,
    array_bytes,
    compute_locally,
    request_hash,
)
from tissue_oracle.oracles.replay import ReplayOracle
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.tools.errors import ConfigError, ReplayMissError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    BoxesRequest,
    CallRecorder,
    Grades,
    Question,
    ReviewAnswer,
    ReviewRequest,
)


class CountingOracle:
    """A local backend that goes through the shared cache helper, as every backend does.

    Its answers depend on the image, and ``computed`` counts the times it really worked."""

    backend = "fake"
    model = "counting-v1"
    questions: frozenset[Question] = frozenset({"boxes", "review"})
    is_vlm = False

    def __init__(self) -> None:
        self.computed = 0

    def _spec(self, question: Question, image: np.ndarray) -> CallSpec:
        digest = request_hash(self.backend, self.model, question, "", [array_bytes(image)], {})
        return CallSpec(backend=self.backend, model=self.model, question=question, request_hash=digest)

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        def work() -> BoxesAnswer:
            self.computed += 1
            ys, xs = np.nonzero(req.thumbnail[:, :, 0] < 128)
            scale = req.downsample
            box = {"x0": int(xs.min() * scale), "y0": int(ys.min() * scale)}
            box |= {"x1": int((xs.max() + 1) * scale), "y1": int((ys.max() + 1) * scale)}
            return BoxesAnswer.model_validate({"boxes": [box]})

        return await compute_locally(ctx, self._spec("boxes", req.thumbnail), BOXES_CODEC, work)

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        def work() -> ReviewAnswer:
            self.computed += 1
            covered = float(req.mask.mean())
            return ReviewAnswer(grades=Grades(precision=1, recall=1 if covered > 0.5 else 3))

        return await compute_locally(ctx, self._spec("review", req.crop), REVIEW_CODEC, work)

    async def aclose(self) -> None:
        return None


def _thumbnail(offset: int) -> BoxesRequest:
    image = np.full((64, 64, 3), 230, np.uint8)
    image[10 + offset : 40 + offset, 5:30] = 60
    return BoxesRequest(thumbnail=image, downsample=64.0, slide_width=4096, slide_height=4096)


def _review(fill: float) -> ReviewRequest:
    mask = np.zeros((32, 32), bool)
    mask[: int(32 * fill)] = True
    crop = np.full((32, 32, 3), int(fill * 200), np.uint8)
    return ReviewRequest.model_validate(
        {"crop": crop, "overlay": crop, "mask": mask, "region": {"x0": 0, "y0": 0, "x1": 512, "y1": 512}}
    )


def _ctx(recorder: CallRecorder, stage: str = "ground_boxes", **extra: object) -> CallContext:
    return CallContext(run_id="run-1", slide_id="s1", stage=stage, role="oracle", recorder=recorder, **extra)  # type: ignore[arg-type]


async def _ask_all(oracle: Oracle, recorder: CallRecorder, **extra: object) -> list[object]:
    answers: list[object] = []
    for offset in (0, 7, 13):
        answers.append(await oracle.boxes(_thumbnail(offset), _ctx(recorder, **extra)))
    for fill in (0.25, 0.75):
        answers.append(await oracle.review(_review(fill), _ctx(recorder, "review_mask", **extra)))
    return answers


def _paid_calls(path: Path) -> int:
    with AuditStore.open(path, read_only=True) as store:
        return store.query(
            lambda c: c.execute("SELECT count(*) FROM calls WHERE NOT cache_hit").fetchall()[0][0]
        )


def test_replay_gives_identical_answers_with_zero_new_calls(tmp_path: Path) -> None:
    recorded, replayed = tmp_path / "first.duckdb", tmp_path / "second.duckdb"
    live = CountingOracle()
    with AuditStore.open(recorded) as store:
        originals = asyncio.run(_ask_all(live, store.recorder, use_cache=False))
    assert live.computed == 5

    inner = CountingOracle()
    with AuditStore.open(recorded, read_only=True) as source, AuditStore.open(replayed) as sink:
        oracle = ReplayOracle(inner, source.recorder)
        assert isinstance(oracle, Oracle)
        again = asyncio.run(_ask_all(oracle, sink.recorder, use_cache=False))  # replay ignores --no-cache
    assert [a.model_dump(exclude={"usage"}) for a in again] == [  # type: ignore[attr-defined]
        a.model_dump(exclude={"usage"})
        for a in originals  # type: ignore[attr-defined]
    ]
    assert inner.computed == 0 and oracle.new_calls == 0
    assert _paid_calls(replayed) == 0
    with AuditStore.open(replayed, read_only=True) as store:
        hits = store.query(lambda c: c.execute("SELECT count(*) FROM calls WHERE cache_hit").fetchall()[0][0])
    assert hits == 5


def test_replay_miss_names_stage_and_hash_and_what_to_do(tmp_path: Path) -> None:
    recorded = tmp_path / "first.duckdb"
    with AuditStore.open(recorded) as store:
        asyncio.run(CountingOracle().boxes(_thumbnail(0), _ctx(store.recorder)))
    inner = CountingOracle()
    with AuditStore.open(recorded, read_only=True) as source, AuditStore.open(tmp_path / "b.duckdb") as sink:
        oracle = ReplayOracle(inner, source.recorder)
        with pytest.raises(ReplayMissError, match=r"stage 'ground_boxes'.*request hash [0-9a-f]{64}") as err:
            asyncio.run(oracle.boxes(_thumbnail(20), _ctx(sink.recorder)))
    assert "Re-run without replay, or with the original backend" in str(err.value)
    assert inner.computed == 0


def test_build_replay_oracle_picks_the_recorded_backend(tmp_path: Path) -> None:
    recorded = tmp_path / "first.duckdb"
    with AuditStore.open(recorded) as store:
        asyncio.run(_ask_all(CountingOracle(), store.recorder))
    specs: list[str] = []

    def build(spec: str) -> Oracle:
        specs.append(spec)
        return CountingOracle()

    oracle = build_replay_oracle(recorded, "oracle", build)
    with AuditStore.open(tmp_path / "b.duckdb") as sink:
        answer = asyncio.run(oracle.boxes(_thumbnail(7), _ctx(sink.recorder)))
    asyncio.run(oracle.aclose())
    assert specs == ["fake:counting-v1"]
    assert answer.boxes[0].x0 == 5 * 64
    AuditStore.open(recorded).close()  # the read-only replay source was released by aclose


def test_recorded_classical_replays_as_the_bare_spec(tmp_path: Path) -> None:
    recorded = tmp_path / "first.duckdb"
    with AuditStore.open(recorded) as store:
        store.record_call(
            call_record("h1", role="reviewer").model_copy(
                update={"backend": "classical", "model": "classical-v1"}
            )
        )
        assert recorded_spec(store, "reviewer") == "classical"
        with pytest.raises(ConfigError, match="no successful 'planner' calls"):
            recorded_spec(store, "planner")
