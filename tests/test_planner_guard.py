"""The planner under the policy's guard: every path where the guard hands the slide back, and the one
where the planner finishes it. Planners are pydantic-ai ``FunctionModel``/``TestModel`` (no LLM) over
the real stage tools, a virtual two-core slide and the classical oracle."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from stage_support import make_deps, open_core_slide

from tissue_oracle.agent.planner import PlannerModel, PlanOutcome, build_planner_model, run_planner
from tissue_oracle.agent.planner_guard import check_planner_policy
from tissue_oracle.bench.fakes.scripted_planner import policy_imitator
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Budget, Policy, load_policy
from tissue_oracle.policies.prices import FREE
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import ConfigError

#: The default policy, scaled so a slide plans in a second or two on the 4096 x 3072 test slide,
#: with the per-patch coarse-to-fine flow (no classical whole-slide map), which the planner drives.
FAST = {
    "classify.classical_map": False,
    "thumbnail.downsample": 16,
    "classify.patch_size": 256,
    "classify.send_size": 128,
    "review.crop_size": 512,
}


def fast_policy(**updates: Any) -> Policy:
    return load_policy("default").with_updates({**FAST, **updates})


@pytest.fixture(scope="module")
def slide() -> Any:
    return open_core_slide()


def plan(
    slide: Any, model: Any, policy: Policy, *, ledger: BudgetLedger | None = None
) -> tuple[PlanOutcome, MemoryRecorder, Any]:
    deps, _ = make_deps(slide)
    audit = MemoryRecorder()
    outcome = asyncio.run(
        run_planner(
            PlannerModel(model=model, spec="function:test", price=FREE),
            policy=policy,
            deps=deps,
            ledger=ledger or BudgetLedger(policy.budgets.slide),
            recorder=audit,
            run_id="run-1",
            slide_id="two-cores",
        )
    )
    return outcome, audit, deps


def scripted(*steps: tuple[str, dict[str, Any]] | str) -> FunctionModel:
    """One step per turn: ``(tool, args)`` is a tool call, a bare string a text answer."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(isinstance(m, ModelResponse) for m in messages)
        step = steps[min(turn, len(steps) - 1)]
        if isinstance(step, str):
            return ModelResponse(parts=[TextPart(content=step)])
        return ModelResponse(parts=[ToolCallPart(tool_name=step[0], args=json.dumps(step[1]))])

    return FunctionModel(answer)


def test_a_planner_imitating_the_policy_finishes_the_slide_and_every_turn_is_audited(slide: Any):
    policy = fast_policy(**{"review.threshold": 1})  # region 1 grades 2: Auto-context runs
    outcome, audit, _ = plan(slide, policy_imitator(policy), policy)
    assert outcome.override is None and outcome.finished_by == "planner"
    assert outcome.verdict is not None and [v.region for v in outcome.verdict.regions] == [0, 1]
    chosen = [name for t in outcome.turns for name, _ in t.calls]
    assert chosen[:5] == ["ground_boxes", "cluster_colours", "classify_patches", "clean", "review_mask"]
    assert "point_ground" in chosen and chosen[-1] == "finish_slide"
    assert outcome.progress.refinements == {1: 2}  # max_rounds 2 in the default policy
    rows = audit.calls
    assert [r.attempt for r in rows] == [t.turn for t in outcome.turns] == list(range(1, len(rows) + 1))
    assert {(r.role, r.stage) for r in rows} == {("planner", "plan")} and all(r.ok for r in rows)
    first = json.loads(rows[0].request_json)[0]
    assert "Regions: none yet" in first["instructions"]  # the slide's state reaches the planner
    later = json.loads(rows[5].request_json)[0]
    assert "Region 1:" in later["instructions"] and "reviews (oldest first) P" in later["instructions"]
    assert json.loads(rows[0].parsed_json)["tool_calls"] == [{"tool": "ground_boxes", "args": {}}]
    assert sum(r.input_tokens for r in rows) == outcome.input_tokens > 0


def test_stage_settings_are_pinned_to_the_policy_whatever_the_planner_asks(slide: Any):
    policy = fast_policy()
    model = scripted(
        ("ground_boxes", {"downsample": 2.0}),
        ("cluster_colours", {"k_global": 8}),
        ("classify_patches", {"patch_size": 64, "gate_fraction": 1.0}),
        "stop",
    )
    outcome, _, deps = plan(slide, model, policy)
    ws = deps.workspace
    assert ws.coarse is not None and ws.coarse.downsample == policy.thumbnail.downsample
    assert ws.labels is not None and ws.labels.grid.patch_size == policy.classify.patch_size
    assert outcome.override is not None and outcome.override.kind == "text_only"


def test_the_planner_sees_only_the_allowed_tools_and_only_its_choices(slide: Any):
    policy = fast_policy(**{"planner.allowed_tools": ["ground_boxes", "cluster_colours", "classify_patches",
                                                      "review_mask", "clean"]})  # fmt: skip
    seen: dict[str, Any] = {}

    def look(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.update({t.name: t.parameters_json_schema for t in info.function_tools})
        seen["output"] = [t.name for t in info.output_tools]
        return ModelResponse(parts=[TextPart(content="ok")])

    plan(slide, FunctionModel(look), policy)
    assert sorted(k for k in seen if k != "output") == sorted(policy.planner.allowed_tools)
    assert seen["output"] == ["finish_slide"]
    assert set(seen["classify_patches"]["properties"]) == {"region", "few_shot"}
    assert seen["ground_boxes"]["properties"] == {} and set(seen["review_mask"]["properties"]) == {"regions"}


GUARD_CASES = [
    ("text_only", {}, ["I would accept this slide."], 1),
    ("stopped_early", {}, [("ground_boxes", {}), ("finish_slide", {"regions": []})], 2),
    ("unknown_tool", {}, [("ground_boxes", {}), ("delete_slide", {"slide": "two-cores"})], 2),
    (
        "forbidden_tool",
        {
            "planner.allowed_tools": [
                "ground_boxes",
                "cluster_colours",
                "classify_patches",
                "review_mask",
                "clean",
            ]
        },
        [("ground_boxes", {}), ("point_ground", {"region": 0})],
        2,
    ),
    ("loop", {}, [("ground_boxes", {})], 3),
    (
        "turn_budget",
        {"planner.max_turns": 2},
        [("ground_boxes", {}), ("cluster_colours", {}), ("clean", {})],
        3,
    ),
]


@pytest.mark.parametrize(("kind", "updates", "steps", "turn"), GUARD_CASES, ids=[c[0] for c in GUARD_CASES])
def test_each_guard_path_hands_the_slide_to_the_policy_and_is_audited(
    slide: Any, kind: str, updates: dict[str, Any], steps: list[Any], turn: int
):
    outcome, audit, _ = plan(slide, scripted(*steps), fast_policy(**updates))
    assert outcome.override is not None, outcome.turns
    assert (outcome.override.kind, outcome.override.turn) == (kind, turn)
    assert outcome.finished_by == "policy" and outcome.verdict is None
    last = audit.calls[-1]
    assert not last.ok and last.error is not None and last.error.startswith(f"guard: {kind}")
    assert all(r.ok for r in audit.calls[:-1])


def test_a_forbidden_tool_never_runs(slide: Any):
    policy = fast_policy(**{"planner.allowed_tools": ["ground_boxes", "cluster_colours", "classify_patches",
                                                      "review_mask", "clean"]})  # fmt: skip
    outcome, _, deps = plan(slide, scripted(("ground_boxes", {}), ("point_ground", {"region": 0})), policy)
    assert outcome.override is not None and outcome.override.kind == "forbidden_tool"
    assert deps.workspace.points == {} and outcome.progress.done == ["ground_boxes"]


def test_the_token_budget_stops_the_planner(slide: Any):
    policy = fast_policy(**{"planner.max_tokens": 300})
    outcome, _, _ = plan(slide, policy_imitator(policy), policy)
    assert outcome.override is not None and outcome.override.kind == "token_budget"
    assert outcome.input_tokens + outcome.output_tokens > 300
    assert outcome.progress.done  # it got some way before the cap


def test_the_slide_budget_ledger_pays_for_planner_turns_and_stops_them(slide: Any):
    policy = fast_policy()
    ledger = BudgetLedger(Budget(calls=3))
    outcome, audit, _ = plan(
        slide, scripted(("ground_boxes", {}), ("cluster_colours", {})), policy, ledger=ledger
    )
    # These deps' oracle is not behind the ledger, so only planner turns charge it: three fit.
    assert outcome.override is not None and outcome.override.kind == "slide_budget"
    assert outcome.override.turn == 4 and ledger.committed.calls == 3 and ledger.reserved.calls == 0
    assert [r.attempt for r in audit.calls] == [1, 2, 3, 4] and audit.calls[-1].input_tokens == 0


def test_a_failing_model_is_a_model_error_not_a_crash(slide: Any):
    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise RuntimeError("connection reset by peer")

    outcome, audit, _ = plan(slide, FunctionModel(broken), fast_policy())
    assert outcome.override is not None and outcome.override.kind == "model_error"
    assert "connection reset" in outcome.override.detail and not audit.calls[-1].ok


def test_test_model_calling_every_tool_loops_on_an_incomplete_verdict(slide: Any):
    # TestModel calls each tool once from its schema, then finish_slide with one region of two:
    # the verdict is refused (every region needs one) and it sends the same verdict again.
    outcome, _, _ = plan(slide, TestModel(), fast_policy())
    assert outcome.override is not None and outcome.override.kind == "loop"
    assert outcome.turns[0].calls[0][0] == "ground_boxes" and outcome.turns[-1].calls[0][0] == "finish_slide"


def test_test_model_that_finishes_at_once_stopped_early(slide: Any):
    outcome, _, deps = plan(slide, TestModel(call_tools=[]), fast_policy())
    assert outcome.override is not None and outcome.override.kind == "stopped_early"
    assert "ground_boxes" in outcome.override.detail and deps.workspace.boxes == []


def test_test_model_runs_out_of_turns(slide: Any):
    outcome, _, _ = plan(
        slide, TestModel(call_tools=["ground_boxes"]), fast_policy(**{"planner.max_turns": 1})
    )
    assert outcome.override is not None and (outcome.override.kind, outcome.override.turn) == (
        "turn_budget",
        2,
    )


def test_a_policy_that_forbids_a_mandatory_stage_is_a_config_error():
    policy = fast_policy(**{"planner.allowed_tools": ["ground_boxes", "cluster_colours", "classify_patches"]})
    with pytest.raises(ConfigError, match=r"mandatory stage\(s\) \['review_mask', 'clean'\]"):
        check_planner_policy(policy)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("classical", "tool-calling chat model"),
        ("openai:", "tool-calling chat model"),
        ("gemini:gemini-2.5-flash", "GEMINI_API_KEY"),
    ],
)
def test_planner_specs_are_checked(spec: str, expected: str, monkeypatch: pytest.MonkeyPatch):
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match=expected):
        build_planner_model(spec)


def test_openai_planner_spec_takes_the_base_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="--base-url"):
        build_planner_model("openai:Qwen/Qwen3-8B")
    built = build_planner_model("openai:Qwen/Qwen3-8B", base_urls={"*": "http://127.0.0.1:9/v1"})
    assert built.model.model_name == "Qwen/Qwen3-8B" and built.model.base_url == "http://127.0.0.1:9/v1/"
    assert not built.price.known  # a self-hosted model with no price in the table or the policy


def test_a_bare_base_url_is_for_openai_specs_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-used")
    bare = build_planner_model("gemini:gemini-2.5-flash", base_urls={"*": "http://127.0.0.1:9/v1"})
    assert bare.model.base_url.startswith("https://generativelanguage.googleapis.com")
    assert bare.price.known and bare.price.output_per_mtok > 0  # the price table knows Gemini
    own = build_planner_model("gemini:gemini-2.5-flash", base_urls={"gemini": "http://127.0.0.1:9"})
    assert own.model.base_url == "http://127.0.0.1:9"
