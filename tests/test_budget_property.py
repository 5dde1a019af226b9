"""No budget is ever exceeded: random policies, budgets and slides, checked against the audit rows.

The classical oracle counts calls (it has no tokens or price); the loopback OpenAI-compatible and
Gemini servers bill tokens at list prices, over the real wire protocols, so USD and token caps
are checked there. The check is always the same: sum the recorded (non-cache-hit) call rows per
slide and per run, and compare them with the caps.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stage_support import core_slide_pixels

from tissue_oracle.agent.oracle_setup import OracleSet, build_oracles
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.runs import RunResult, run_slides
from tissue_oracle.bench.fakes.fixtures import start_server
from tissue_oracle.oracles.profiles import profile_for_model
from tissue_oracle.policies.policy import Policy, load_policy
from tissue_oracle.store.memory import MemoryRecorder


def small_slides(tmp: Path, transforms: list[tuple[int, bool]]) -> list[Path]:
    """Half-size two-core slides, rotated/flipped, saved as PNG files (slides differ in layout)."""
    from PIL import Image

    image = core_slide_pixels()[0][::2, ::2]
    paths = []
    for i, (turns, flip) in enumerate(transforms):
        pixels = np.rot90(image[:, ::-1] if flip else image, turns)
        paths.append(tmp / f"s{i}.png")
        Image.fromarray(np.ascontiguousarray(pixels)).save(paths[-1])
    return paths


def base_policy(**updates: Any) -> Policy:
    fixed = {"classify.patch_size": 128, "classify.send_size": 64, "review.crop_size": 256}
    return load_policy("default").with_updates(fixed | updates)


def segment_all(
    paths: list[Path], policy: Policy, oracles: OracleSet, out: Path
) -> tuple[RunResult, MemoryRecorder]:
    store = MemoryRecorder()

    async def main() -> RunResult:
        try:
            settings = RunSettings(run_id="r", policy=policy, out_dir=out)
            return await run_slides(paths, settings, RunDeps.for_run(settings, oracles=oracles, store=store))
        finally:
            await oracles.aclose()

    return asyncio.run(main()), store


def assert_within_caps(result: RunResult, store: MemoryRecorder, policy: Policy) -> None:
    paid = [c for c in store.calls if not c.cache_hit]
    per_slide = Counter(c.slide_id for c in paid)
    caps = {"slide": policy.budgets.slide, "run": policy.budgets.run}
    for scope, cap in caps.items():
        groups = [paid] if scope == "run" else [[c for c in paid if c.slide_id == s] for s in per_slide]
        for calls in groups:
            assert cap.calls is None or len(calls) <= cap.calls, (scope, len(calls), cap)
            tokens = sum(c.input_tokens + c.output_tokens for c in calls)
            assert cap.tokens is None or tokens <= cap.tokens, (scope, tokens, cap)
            assert cap.usd is None or sum(c.cost_usd for c in calls) <= cap.usd + 1e-9, (scope, cap)
    assert result.ledger is not None and result.ledger.overruns == 0 and result.ledger.reserved.calls == 0
    for outcome in result.outcomes:
        assert outcome.summary is not None, outcome.error
        s = outcome.summary
        assert s.totals.calls == per_slide[outcome.slide_id]
        if "budget_exhausted" in s.flags:
            assert s.status == "degraded" and "needs_human_review" in s.flags


caps = st.one_of(st.none(), st.integers(min_value=0, max_value=30))


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    slide_calls=caps,
    run_calls=caps,
    batch=st.sampled_from([1, 4, 16]),
    threshold=st.integers(min_value=1, max_value=4),
    rounds=st.integers(min_value=0, max_value=2),
    revert=st.booleans(),
    transforms=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=2),
)
def test_call_caps_hold_for_random_policies_and_slides(
    tmp_path_factory: pytest.TempPathFactory,
    slide_calls: int | None,
    run_calls: int | None,
    batch: int,
    threshold: int,
    rounds: int,
    revert: bool,
    transforms: list[tuple[int, bool]],
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    policy = base_policy(
        **{
            "budgets.slide.calls": slide_calls,
            "budgets.run.calls": run_calls,
            "classify.batch_size": batch,
            "review.threshold": threshold,
            "review.max_rounds": rounds,
            "review.revert_if_worse": revert,
        }
    )
    result, store = segment_all(small_slides(tmp, transforms), policy, build_oracles(policy), tmp / "out")
    assert_within_caps(result, store, policy)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("slide_usd", "run_usd", "run_tokens"),
    [(0.004, 0.01, None), (None, None, 40_000)],
)
def test_usd_and_token_caps_hold_over_the_wire(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slide_usd: float | None,
    run_usd: float | None,
    run_tokens: int | None,
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "fake-key-for-loopback")
    policy = base_policy(
        **{
            "roles.oracle": "openai:gpt-4.1-nano",  # images: 32 px patches x 2.46
            "roles.reviewer": "gemini:gemini-2.5-flash",
            "budgets.slide.usd": slide_usd,
            "budgets.run.usd": run_usd,
            "budgets.run.tokens": run_tokens,
            "classify.batch_size": 4,
            "classify.timeout_s": 5,
            "review.threshold": 1,
        }
    )
    with (
        start_server("openai", profile=profile_for_model("gpt-4.1-nano")) as openai_server,
        start_server("gemini") as gemini_server,
    ):
        urls = {"openai": openai_server.base_url, "gemini": gemini_server.base_url}  # type: ignore[attr-defined]
        oracles = build_oracles(policy, base_urls=urls)
        assert oracles.any_vlm and oracles.prices["oracle"].input_per_mtok > 0
        result, store = segment_all(
            small_slides(tmp_path, [(0, False), (1, True)]), policy, oracles, tmp_path / "o"
        )
    assert sum(c.cost_usd for c in store.calls) > 0
    assert_within_caps(result, store, policy)
    assert any("budget_exhausted" in (o.summary.flags if o.summary else []) for o in result.outcomes)
