"""The planner inside ``segment``: it finishes slides, or the policy does where the guard says so.

Planners here are the scripted policy imitator (a ``FunctionModel``) and the loopback
tool-calling OpenAI server; no LLM runs. The two-core virtual slide, the classical oracle and a
real DuckDB store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from stage_support import core_slide_pixels
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.agent.planner import PlannerModel
from tissue_oracle.bench.evaluation.planner_bench import compare_slide, segment_once
from tissue_oracle.bench.fakes.tool_server import FakeToolCallingServer
from tissue_oracle.policies.policy import Policy, load_policy
from tissue_oracle.policies.prices import FREE
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.tools.slides import open_slide

runner = CliRunner()


def small_policy(**updates: Any) -> Policy:
    base = {
        "classify.classical_map": False,  # the per-patch flow the planner drives
        "classify.patch_size": 256,
        "classify.send_size": 128,
        "classify.batch_size": 16,
        "review.crop_size": 512,
    }
    return load_policy("default").with_updates(base | updates)


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("planner-slides")
    image, _ = core_slide_pixels()
    Image.fromarray(image).save(folder / "cores.png")
    (folder / "strict.yaml").write_text(small_policy(**{"review.threshold": 1}).to_yaml())
    return folder / "cores.png"


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [2, 1], ids=["accepts-at-once", "auto-context"])
def test_the_scripted_planner_gives_the_controllers_masks(tmp_path: Path, threshold: int):
    policy = small_policy(**{"review.threshold": threshold})
    image, _ = core_slide_pixels()
    with open_slide(image, name="two-cores") as slide:
        row = asyncio.run(compare_slide(slide, policy, tmp_path))
    assert row.finished_by == "planner" and row.masks_identical, row
    assert row.refinements_planner == row.refinements_controller == (0 if threshold == 2 else 2)
    assert row.planner_turns >= 6 and row.planner_input_tokens > 0


@pytest.mark.slow
def test_when_the_guard_takes_over_the_policy_finishes_with_the_same_mask(tmp_path: Path):
    policy = small_policy(**{"review.threshold": 1, "planner.max_turns": 5})  # out of turns mid-review
    image, _ = core_slide_pixels()
    from tissue_oracle.bench.fakes.scripted_planner import policy_imitator

    planner = PlannerModel(model=policy_imitator(policy), spec="function:policy-imitator", price=FREE)
    with open_slide(image, name="two-cores") as slide:
        fixed, fixed_mask = asyncio.run(segment_once(slide, policy, tmp_path / "c", None))
        planned, planned_mask = asyncio.run(segment_once(slide, policy, tmp_path / "p", planner))
    report = planned.planner
    assert report is not None and report.finished_by == "policy"
    assert report.override is not None and report.override["kind"] == "turn_budget"
    assert report.kept.startswith("boxes, coarse mask and zero-shot labels")
    assert np.array_equal(fixed_mask, planned_mask) and planned.refinements == fixed.refinements
    assert fixed.planner is None


def strict(slide_file: Path) -> str:
    return str(slide_file.parent / "strict.yaml")


def audit_plan(db: Path, slide: str) -> Any:
    return runner.invoke(app, ["audit", "plan", "--slide", slide, "--db", str(db)])


@pytest.mark.slow
def test_segment_with_a_planner_over_the_wire_and_its_audit_trace(slide_file: Path, tmp_path: Path):
    policy = load_policy(str(slide_file.parent / "strict.yaml"))
    out = tmp_path / "out"
    with FakeToolCallingServer(policy=policy) as server:
        result = runner.invoke(
            app,
            ["segment", str(slide_file), "--out", str(out), "--policy", strict(slide_file),
             "--planner", "openai:qwen3-planner", "--base-url", server.base_url],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "cores" / "summary.json").read_text())
    plan = summary["planner"]
    assert plan["finished_by"] == "planner" and plan["override"] is None and plan["turns"] == server.requests
    assert plan["decisions"][0] == "turn 1: ground_boxes()" and [v["region"] for v in plan["verdicts"]] == [
        0,
        1,
    ]
    assert all(r["reason"].startswith("planner:") for r in summary["regions"])
    assert summary["patches"]["sent_few_shot"] > 0  # region 1's two Auto-context rounds
    with AuditStore.open(out / "audit.duckdb", read_only=True) as store:
        planner_rows, policy_yaml = store.query(
            lambda c: (
                c.execute("SELECT count(*) FROM calls WHERE role = 'planner' AND stage = 'plan'").fetchone()[
                    0
                ],
                c.execute("SELECT policy_yaml FROM runs").fetchone()[0],
            )
        )
    assert planner_rows == plan["turns"] and "planner: openai:qwen3-planner" in policy_yaml
    trace = audit_plan(out / "audit.duckdb", "cores")
    assert trace.exit_code == 0, trace.output
    assert "ground_boxes()" in trace.output and "finish_slide: region 0 accept" in trace.output
    assert "finished by the planner (finish_slide)" in trace.output


@pytest.mark.slow
def test_segment_with_a_planner_that_answers_text_is_finished_by_the_policy(slide_file: Path, tmp_path: Path):
    out = tmp_path / "out"
    with FakeToolCallingServer(script=[{"text": "Looks like tissue to me."}]) as server:
        result = runner.invoke(
            app,
            ["segment", str(slide_file), "--out", str(out), "--policy", strict(slide_file),
             "--planner", "openai:qwen3-planner", "--base-url", server.base_url],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "cores" / "summary.json").read_text())["planner"]
    assert plan["finished_by"] == "policy" and plan["override"]["kind"] == "text_only"
    assert plan["kept"].startswith("nothing") and (out / "cores" / "mask.npy").is_file()
    trace = audit_plan(out / "audit.duckdb", "cores")
    assert "(text) Looks like" in trace.output and "qwen3-planner" in trace.output
    assert "finished by the policy (guard: text_only" in trace.output


def test_a_planner_spec_that_is_not_a_chat_model_is_a_usage_error(slide_file: Path, tmp_path: Path):
    result = runner.invoke(
        app, ["segment", str(slide_file), "--out", str(tmp_path / "o"), "--planner", "classical"]
    )
    assert result.exit_code == 2 and "tool-calling chat model" in result.output
