"""The VLM path against the fakes playing vLLM and Gemini as they really behave (issue 11).

Each behaviour is cited in ``bench/fakes/server.py``: thinking that eats the output cap, the 429
whose wait is in ``google.rpc.RetryInfo``, per-day quotas, Qwen2.5-VL's absolute pixels,
``finish_reason: "length"``, vLLM's images-per-prompt limit, a 404 on a wrong path, and a bare
``--base-url`` that must not capture Gemini's traffic.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import numpy as np
import pytest

from tissue_oracle.agent.oracle_setup import build_oracles, parse_base_urls
from tissue_oracle.bench.fakes import fixtures
from tissue_oracle.bench.fakes.server import FakeGeminiServer, FakeOpenAIServer
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import OracleError, OracleUnavailableError
from tissue_oracle.tools.oracle_protocol import CallContext


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)


def _ask(
    oracle: Any, question: str, request: Any, role: str = "oracle"
) -> tuple[Any, Exception | None, list]:
    recorder = MemoryRecorder()
    ctx = CallContext(run_id="r", slide_id="s", stage="review_mask", role=role, recorder=recorder)  # type: ignore[arg-type]

    async def main() -> tuple[Any, Exception | None]:
        try:
            return await getattr(oracle, question)(request, ctx), None
        except OracleError as exc:
            return None, exc
        finally:
            await oracle.aclose()

    answer, error = asyncio.run(main())
    return answer, error, list(recorder.calls)


def _reviewer(policy_updates: dict[str, Any], base_urls: list[str]) -> Any:
    policy = load_policy("default").with_updates(
        {"roles.reviewer": "gemini:gemini-2.5-pro", **policy_updates}
    )
    return build_oracles(policy, base_urls=parse_base_urls(base_urls)).by_role["reviewer"]


def test_thinking_gets_its_own_room_beside_the_answers_cap() -> None:
    with FakeGeminiServer(thought_tokens=3000) as gemini:
        reviewer = _reviewer({}, [f"gemini={gemini.base_url}"])
        answer, error, rows = _ask(reviewer, "review", fixtures.review_request(), "reviewer")
    assert error is None and answer.grades.precision >= 1
    assert [r.ok for r in rows] == [True]
    sent = gemini.log[0]
    assert sent["thinking"] == {"thinkingBudget": 8192}
    assert sent["max_output_tokens"] == reviewer.max_tokens + 8192
    assert rows[0].output_tokens > 3000  # thoughts are billed as output


def test_a_zero_budget_is_never_sent_to_a_model_that_cannot_stop_thinking() -> None:
    with FakeGeminiServer(thought_tokens=3000) as gemini:
        settings = {"models": {"gemini:*": {"thinking_budget": 0}}}
        reviewer = _reviewer(settings, [f"gemini={gemini.base_url}"])
        _, error, _ = _ask(reviewer, "review", fixtures.review_request(), "reviewer")
    assert error is None, error
    assert gemini.log[0]["thinking"] == {"thinkingBudget": 128}


def test_gemini_3_gets_a_level_and_temperature_one() -> None:
    with FakeGeminiServer(thought_tokens=500) as gemini:
        policy = load_policy("default").with_updates({"roles.reviewer": "gemini:gemini-3-pro-preview"})
        reviewer = build_oracles(policy, base_urls={"gemini": gemini.base_url}).by_role["reviewer"]
        _, error, _ = _ask(reviewer, "review", fixtures.review_request(), "reviewer")
    assert error is None, error
    assert gemini.log[0]["thinking"] == {"thinkingLevel": "HIGH"}
    assert gemini.log[0]["temperature"] == 1.0


@pytest.mark.parametrize("family", ["openai", "gemini"])
def test_an_answer_cut_by_the_output_cap_is_named_and_not_resent(family: str) -> None:
    with fixtures.start_server(family) as server:
        server.inject("length", "length", "length", "length")
        oracle = fixtures.oracle_for(family, server)
        _, error, rows = _ask(oracle, "boxes", fixtures.boxes_request())
    assert isinstance(error, OracleError)
    assert len(rows) == 1 == server.requests
    assert "output cap reached" in (rows[0].error or "")
    assert ("'length'" if family == "openai" else "'MAX_TOKENS'") in (rows[0].error or "")


def test_a_429_with_retryinfo_is_waited_out() -> None:
    with FakeGeminiServer(retry_delay_s=1.0) as gemini:
        gemini.inject("quota_window")
        oracle = fixtures.oracle_for("gemini", gemini)  # backoff 0.01-0.2 s: all inside the window
        started = time.perf_counter()
        _, error, rows = _ask(oracle, "boxes", fixtures.boxes_request())
        waited = time.perf_counter() - started
    assert error is None, error
    assert [r.ok for r in rows] == [False, True] and "429" in (rows[0].error or "")
    assert waited >= 1.0  # the server's window, not the client's backoff


def test_a_daily_quota_429_is_final() -> None:
    with FakeGeminiServer() as gemini:
        gemini.inject("daily_quota")
        oracle = fixtures.oracle_for("gemini", gemini)
        _, error, rows = _ask(oracle, "boxes", fixtures.boxes_request())
    assert isinstance(error, OracleUnavailableError)
    assert len(rows) == 1 == gemini.requests
    assert "PerDay" in str(error) and "daily quota" in str(error)


def _box_centres(answer: Any) -> list[tuple[float, float]]:
    return sorted(((b.x0 + b.x1) / 2 / 64, (b.y0 + b.y1) / 2 / 64) for b in answer.boxes)


@pytest.mark.parametrize(
    ("profile", "model"),
    [("qwen2.5-vl", "Qwen/Qwen2.5-VL-7B-Instruct"), ("qwen3-vl", "Qwen/Qwen3-VL-8B-Instruct")],
)
def test_qwen_boxes_land_on_the_tissue_in_either_convention(profile: str, model: str) -> None:
    with FakeOpenAIServer(profile=PROFILES[profile]) as vllm:  # type: ignore[arg-type]
        oracle = fixtures.oracle_for("openai", vllm, model=model)
        answer, error, _ = _ask(oracle, "boxes", fixtures.boxes_request())
    assert error is None, error
    centres = _box_centres(answer)  # thumbnail pixels; the discs sit at (50, 60) and (150, 60)
    assert len(centres) == 2
    for (x, y), (tx, ty) in zip(centres, [(50, 60), (150, 60)], strict=True):
        assert abs(x - tx) <= 4 and abs(y - ty) <= 4, centres


def test_qwen25_points_are_absolute_pixels_too() -> None:
    with FakeOpenAIServer(profile=PROFILES["qwen2.5-vl"]) as vllm:
        oracle = fixtures.oracle_for("openai", vllm, model="Qwen/Qwen2.5-VL-7B-Instruct")
        answer, error, _ = _ask(oracle, "points", fixtures.points_request())
    assert error is None, error
    region = fixtures.points_request().region  # a 128 px crop of 1024 level-0 px: 8 px per crop px
    centre = (region.x0 + 40 * 8, region.y0 + 64 * 8)  # the tissue disc: centre (40, 64), radius 30
    tissue = [p for p in answer.points if p.label == "tissue"]
    assert tissue and all(math.dist((p.x, p.y), centre) <= 32 * 8 for p in tissue), tissue


def test_too_many_images_for_vllm_says_how_to_raise_the_limit() -> None:
    with FakeOpenAIServer(max_images=1) as vllm:
        oracle = fixtures.oracle_for("openai", vllm)
        _, error, rows = _ask(oracle, "review", fixtures.review_request())  # crop + overlay
    assert isinstance(error, OracleUnavailableError)
    assert len(rows) == 1
    assert "at most 1 image(s)" in str(error) and "--limit-mm-per-prompt" in str(error)


@pytest.mark.parametrize("family", ["openai", "gemini"])
def test_a_404_on_a_wrong_path_is_a_clear_final_error(family: str) -> None:
    with fixtures.start_server(family) as server:
        oracle = fixtures.oracle_for(family, server)
        oracle.transport = type(oracle.transport)(base_url=server.root + "/wrong")
        _, error, rows = _ask(oracle, "boxes", fixtures.boxes_request())
    assert isinstance(error, OracleUnavailableError)
    assert len(rows) == 1 and "404" in (rows[0].error or "")
    assert "empty" not in (rows[0].error or "") and "base-url" in (rows[0].error or "").lower()


def test_a_bare_base_url_leaves_gemini_traffic_to_gemini(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAIServer() as vllm, FakeGeminiServer() as gemini:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.base_url)
        reviewer = _reviewer({"roles.oracle": "openai:Qwen/Qwen3-VL-8B-Instruct"}, [vllm.base_url])
        _, error, rows = _ask(reviewer, "review", fixtures.review_request(), "reviewer")
    assert error is None, error
    assert gemini.requests == 1 and vllm.requests == 0
    assert rows[0].cost_usd is not None and rows[0].cost_usd > 0  # Gemini 2.5 Pro is priced


def test_role_settings_set_the_temperature_sent() -> None:
    with FakeOpenAIServer() as vllm:
        policy = load_policy("default").with_updates(
            {
                "roles.oracle": "openai:Qwen/Qwen3-VL-8B-Instruct",
                "roles.reviewer": "openai:Qwen/Qwen3-VL-8B-Instruct",
                "models": {"openai:*": {"price": "self-hosted", "temperature": 0.2}},
                "role_settings": {"reviewer": {"temperature": 0.7}},
            }
        )
        oracles = build_oracles(policy, base_urls={"*": vllm.base_url})
        _ask(oracles.by_role["oracle"], "boxes", fixtures.boxes_request())
        _ask(oracles.by_role["reviewer"], "review", fixtures.review_request(), "reviewer")
    assert [e["temperature"] for e in vllm.log] == [0.2, 0.7]


def test_each_stage_sends_images_at_its_own_size() -> None:
    with FakeOpenAIServer() as vllm:
        policy = load_policy("default").with_updates(
            {
                "roles.oracle": "openai:Qwen/Qwen3-VL-8B-Instruct",
                "models": {"openai:*": {"price": "self-hosted"}},
            }
        )
        oracle = build_oracles(policy, base_urls={"*": vllm.base_url}).by_role["oracle"]
        big = fixtures.boxes_request()
        thumb = np.repeat(np.repeat(big.thumbnail, 8, axis=0), 8, axis=1)  # 1600 x 960
        request = big.model_copy(update={"thumbnail": thumb, "downsample": 8.0})
        _, error, rows = _ask(oracle, "boxes", request)
    assert error is None, error
    sent = json.loads(rows[0].request_json)["images"][0]
    assert max(sent["width"], sent["height"]) == policy.ground.send_size == 1024  # not classify's 512
