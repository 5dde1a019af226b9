"""The planner over the real OpenAI chat-completions wire, against a loopback tool-calling server.

The server (``bench.fakes.tool_server``, no LLM) answers with real ``tool_calls`` responses: the
scripted policy imitator, a plain-text answer with no tool call, or a call to a tool that
doesn't exist. The planner reaches it through pydantic-ai's ``OpenAIChatModel`` and ``--base-url``
routing, as it would reach vLLM.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from stage_support import make_deps, open_core_slide
from test_planner_guard import fast_policy

from tissue_oracle.agent.planner import PlanOutcome, build_planner_model, run_planner
from tissue_oracle.bench.fakes.tool_server import FakeToolCallingServer
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Policy
from tissue_oracle.store.memory import MemoryRecorder


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


def plan_over_wire(
    slide: Any, server: FakeToolCallingServer, policy: Policy
) -> tuple[PlanOutcome, MemoryRecorder]:
    deps, _ = make_deps(slide)
    audit = MemoryRecorder()
    planner = build_planner_model("openai:qwen3-planner", base_urls={"*": server.base_url})

    async def main() -> PlanOutcome:
        try:
            return await run_planner(
                planner,
                policy=policy,
                deps=deps,
                ledger=BudgetLedger(policy.budgets.slide),
                recorder=audit,
                run_id="run-1",
                slide_id="two-cores",
            )
        finally:
            await planner.aclose()

    return asyncio.run(main()), audit


def test_a_whole_slide_is_planned_over_the_wire_with_tool_calls(slide: Any):
    policy = fast_policy(**{"review.threshold": 1})
    with FakeToolCallingServer(policy=policy) as server:
        outcome, audit = plan_over_wire(slide, server, policy)
    assert outcome.finished_by == "planner" and outcome.verdict is not None
    assert server.requests == len(outcome.turns) == len(audit.calls)
    assert server.offered_tools(0) == [*policy.planner.allowed_tools, "finish_slide"]
    # Tool results go back as role "tool" messages answering the call ids the server chose.
    second = server.bodies[1]["messages"]
    call_id = second[-2]["tool_calls"][0]["id"]
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == call_id
    assert json.loads(second[-1]["content"])["boxes"]
    # Tokens are the server's usage fields, as the rows and the outcome report them.
    assert outcome.input_tokens == sum(r.input_tokens for r in audit.calls) > 1000
    assert {(r.backend, r.model) for r in audit.calls} == {("openai", "qwen3-planner")}


def test_a_plain_text_answer_with_no_tool_call_goes_to_the_policy(slide: Any):
    policy = fast_policy()
    with FakeToolCallingServer(
        script=[{"text": "The tissue is clearly visible; no tools needed."}]
    ) as server:
        outcome, audit = plan_over_wire(slide, server, policy)
    assert outcome.override is not None and (outcome.override.kind, outcome.override.turn) == ("text_only", 1)
    assert "clearly visible" in outcome.override.detail and server.requests == 1
    assert json.loads(audit.calls[0].parsed_json)["text"].startswith("The tissue")


def test_a_call_to_an_unknown_tool_goes_to_the_policy_before_anything_runs(slide: Any):
    policy = fast_policy()
    script = [{"tool": "ground_boxes", "args": {}}, {"tool": "segment_everything", "args": {"fast": True}}]
    with FakeToolCallingServer(script=script) as server:
        outcome, audit = plan_over_wire(slide, server, policy)
    assert outcome.override is not None and (outcome.override.kind, outcome.override.turn) == (
        "unknown_tool",
        2,
    )
    assert outcome.progress.done == ["ground_boxes"] and server.requests == 2
    assert audit.calls[-1].error == "guard: unknown_tool: no tool named 'segment_everything'"


def test_a_server_that_refuses_the_key_is_a_model_error(slide: Any):
    policy = fast_policy()
    with FakeToolCallingServer(script=[{"tool": "ground_boxes", "args": {}}]) as server:
        server.inject("unauthorized")
        outcome, _ = plan_over_wire(slide, server, policy)
    assert outcome.override is not None and outcome.override.kind == "model_error"
    assert "401" in outcome.override.detail
