"""The stage toolset driven by pydantic-ai agents over a real virtual slide and the classical oracle."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from stage_support import make_deps, open_core_slide

from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.toolset import STAGE_TOOLS, stage_toolset

#: Small settings so the flow runs in a second on the 4096 x 3072 test slide.
FAST = {"downsample": 16}
PATCH = {"patch_size": 256, "send_size": 128}


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


def scripted(calls: list[tuple[str, dict[str, Any]]]) -> tuple[FunctionModel, list[Any]]:
    """A planner that makes ``calls`` one per turn, records what each returned, then stops."""
    seen: list[Any] = []

    def plan(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        if isinstance(last, ModelRequest):
            for part in last.parts:
                if isinstance(part, ToolReturnPart | RetryPromptPart):
                    seen.append(part)
        step = sum(isinstance(m, ModelResponse) for m in messages)
        if step < len(calls):
            name, args = calls[step]
            return ModelResponse(parts=[ToolCallPart(tool_name=name, args=json.dumps(args))])
        return ModelResponse(parts=[TextPart(content="done")])

    return FunctionModel(plan), seen


def run_agent(model: Any, deps: StageDeps) -> str:
    agent = Agent(model, deps_type=StageDeps, toolsets=[stage_toolset()])
    # Not run_sync: it leaves a global event loop open, which pytest reports as an unclosed loop.
    result = asyncio.run(agent.run("Segment the tissue on this slide.", deps=deps))
    return result.output


def content(part: Any) -> dict[str, Any]:
    assert isinstance(part, ToolReturnPart) and part.outcome == "success", part
    return part.model_response_object()


def test_every_stage_is_a_tool_with_a_description_and_one_input_model():
    tools = stage_toolset().tools
    assert list(tools) == [
        "ground_boxes",
        "cluster_colours",
        "classify_patches",
        "point_ground",
        "rerank_exemplars",
        "review_mask",
        "clean",
    ]
    assert len(STAGE_TOOLS) == len(tools)
    for tool in tools.values():
        assert tool.tool_def.description, tool.name
        schema = tool.tool_def.parameters_json_schema
        assert schema["type"] == "object" and schema.get("additionalProperties") is False, tool.name
    gate = tools["classify_patches"].tool_def.parameters_json_schema["properties"]["gate_fraction"]
    assert "M1 covers at least" in gate["description"]  # field docstrings reach the planner


def test_a_scripted_planner_runs_the_whole_pipeline_with_auto_context(slide: Any):
    deps, recorder = make_deps(slide)
    model, seen = scripted(
        [
            ("ground_boxes", FAST),
            ("cluster_colours", FAST),
            ("classify_patches", PATCH),
            ("review_mask", {"crop_size": 512}),
            ("point_ground", {"region": 0, "crop_size": 512}),
            ("rerank_exemplars", {"region": 0, "send_size": 128}),
            ("classify_patches", {**PATCH, "region": 0, "few_shot": True}),
            ("clean", {}),
        ]
    )
    assert run_agent(model, deps) == "done"
    boxes, cluster, zero, review, points, picked, few, cleaned = (content(p) for p in seen)
    assert len(boxes["boxes"]) == 2 and not boxes["fallback"]
    assert [r["index"] for r in cluster["regions"]] == [0, 1] and cluster["coverage"] > 0.1
    assert zero["mode"] == "zero_shot" and zero["sent"] > 0 and zero["answered"] == zero["sent"]
    assert [r["index"] for r in review["reviews"]] == [0, 1]
    assert all(r["grades"] is not None for r in review["reviews"])
    assert {p["label"] for p in points["points"]} == {"tissue", "background"}
    assert picked["region"] == 0 and len(picked["exemplars"]) == 2
    assert few["mode"] == "few_shot" and few["region"] == boxes["boxes"][0] and few["sent"] < zero["sent"]
    assert cleaned["tissue_cells"] > 0
    ws = deps.workspace
    assert ws.labels is not None and ws.cleaned is not None and 0 in ws.exemplars
    assert sum(lab.source == "few_shot" for lab in ws.labels.labels) == few["answered"]
    stages = [c.stage for c in recorder.calls]
    assert stages[0] == "ground_boxes" and "point_ground" in stages and "rerank_exemplars" in stages


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([("cluster_colours", FAST)], "call 'ground_boxes' first"),
        ([("classify_patches", PATCH)], "call 'cluster_colours' first"),
        ([("ground_boxes", FAST), ("point_ground", {"region": 7})], "valid regions: [0, 1]"),
        ([("ground_boxes", FAST), ("rerank_exemplars", {"region": 1})], "regions with points: []"),
        (
            [
                ("ground_boxes", FAST),
                ("cluster_colours", FAST),
                ("classify_patches", {**PATCH, "few_shot": True}),
            ],
            "regions with exemplars: []",
        ),
        ([("review_mask", {})], "call 'classify_patches' first"),
        ([("ground_boxes", {**FAST, "role": "planner"})], "roles set: ['oracle', 'reviewer']"),
    ],
)
def test_bad_calls_ask_the_planner_to_retry_naming_valid_choices(
    slide: Any, calls: list[tuple[str, dict[str, Any]]], expected: str
):
    deps, _ = make_deps(slide)
    model, seen = scripted(calls)
    assert run_agent(model, deps) == "done"
    retry = seen[-1]
    assert getattr(retry, "outcome", "retried") == "retried", retry
    assert expected in str(retry.content)


def test_test_model_can_call_a_tool_from_its_schema_alone(slide: Any):
    deps, recorder = make_deps(slide)
    model = TestModel(call_tools=["ground_boxes"])
    run_agent(model, deps)
    assert len(deps.workspace.boxes) == 2  # defaults only: the paper's 64x thumbnail
    assert [c.stage for c in recorder.calls] == ["ground_boxes"]
