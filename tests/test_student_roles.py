"""A student in the classifier role under the shipped policies: roles resolved once, at start-up."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.agent.oracle_setup import build_oracles, questions_asked
from tissue_oracle.bench.synth.generate import generate_set
from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.oracles.routing import RoutedOracle, resolve_routes, route_questions
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.distil import save_checkpoint
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import PatchRef, RerankRequest, StudentSpec

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student with random weights (the plumbing, not the accuracy, is under test)."""
    import torch

    torch.manual_seed(0)
    spec = StudentSpec(patch_px=32, patch_size=256)
    path = tmp_path_factory.mktemp("student") / "student.pt"
    save_checkpoint(path, spec, fit.build_model(spec).state_dict())
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic ``tiny`` slide (pyramidal TIFF) and a small-grid default policy beside it."""
    folder = tmp_path_factory.mktemp("slides")
    (path,) = generate_set(folder, preset="tiny", count=1, seed=3)
    policy = load_policy("default").with_updates({"classify.patch_size": 256, "review.crop_size": 512})
    (folder / "small.yaml").write_text(policy.to_yaml())
    return path


def test_the_shipped_policies_ask_the_classifier_to_rerank() -> None:
    for name in ("default", "paper"):
        asked = questions_asked(load_policy(name))
        assert asked["classifier"] == {"patch_labels", "rerank"} and "boxes" in asked["oracle"]
    off = load_policy("default").with_updates({"review.enabled": False})
    assert questions_asked(off) == {"oracle": {"boxes"}, "classifier": {"patch_labels"}, "reviewer": set()}


@pytest.mark.slow
def test_a_student_classifier_routes_rerank_to_the_oracle(checkpoint: Path) -> None:
    oracles = build_oracles(load_policy("default"), overrides={"classifier": f"student:{checkpoint}"})
    assert oracles.routes == {"classifier": {"rerank": "oracle"}}
    assert oracles.by_role["classifier"].backend == "student"
    asyncio.run(oracles.aclose())


@pytest.mark.parametrize(
    ("role", "question"), [("oracle", "boxes"), ("reviewer", "review")], ids=["oracle", "reviewer"]
)
def test_a_student_in_a_role_it_cannot_play_is_refused_at_build(
    checkpoint: Path, role: str, question: str
) -> None:
    with pytest.raises(ConfigError, match=rf"the {role} role \(student:.*'{question}'"):
        build_oracles(load_policy("default"), overrides={role: f"student:{checkpoint}"})  # type: ignore[dict-item]


def test_a_routed_question_is_answered_and_recorded_by_the_role_that_answers() -> None:
    class PatchOnly:
        backend, model, is_vlm = "patch-only", "p", False
        questions = frozenset({"patch_labels"})

    classical = ClassicalOracle()
    routes = resolve_routes({"classifier": PatchOnly(), "oracle": classical}, {"classifier": ["rerank"]})  # type: ignore[dict-item]
    assert routes == {"classifier": {"rerank": "oracle"}}
    routed = route_questions({"classifier": PatchOnly(), "oracle": classical}, routes)  # type: ignore[dict-item]
    assert isinstance(routed["classifier"], RoutedOracle) and routed["oracle"] is classical
    rng = np.random.default_rng(0)
    refs = [PatchRef(x=64 * i, y=0, size=64) for i in range(2)]
    req = RerankRequest(
        candidates=refs,
        candidate_labels=["tissue", "background"],
        images=[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in refs],
    )
    rec = MemoryRecorder()
    ctx = CallContext(run_id="r", slide_id="s", stage="rerank_exemplars", role="classifier", recorder=rec)
    answer = asyncio.run(routed["classifier"].rerank(req, ctx))
    assert {e.label for e in answer.exemplars} <= {"tissue", "background"}
    assert [(c.backend, c.role) for c in rec.calls] == [("classical", "oracle")]
    with pytest.raises(ConfigError, match="'review'"):
        resolve_routes({"reviewer": PatchOnly()}, {"reviewer": ["review"]})  # type: ignore[dict-item]


@pytest.mark.slow
@pytest.mark.parametrize("student_map", [True, False], ids=["student-map", "per-patch"])
def test_segment_with_a_student_classifier_works_on_a_synthetic_slide(
    checkpoint: Path, slide: Path, tmp_path: Path, student_map: bool
) -> None:
    out = tmp_path / "out"
    policy = load_policy(slide.parent / "small.yaml").with_updates({"classify.student_map": student_map})
    (tmp_path / "policy.yaml").write_text(policy.to_yaml())
    args = ["segment", str(slide), "--out", str(out), "--policy", str(tmp_path / "policy.yaml")]
    result = runner.invoke(app, [*args, "--classifier", f"student:{checkpoint}"])
    assert result.exit_code == 0, result.output
    with AuditStore.open(out / "audit.duckdb", read_only=True) as store:
        status = store.query(lambda c: c.execute("SELECT status, error FROM slides").fetchall())
        calls = store.query(
            lambda c: c.execute("SELECT stage, role, backend FROM calls ORDER BY 1, 2, 3").fetchall()
        )
    assert [s for s, _ in status] in (["done"], ["degraded"]), status
    assert ("classify_patches", "classifier", "student") in calls
    assert all(backend == "classical" for stage, _, backend in calls if stage != "classify_patches")
    assert all(role == "oracle" for stage, role, _ in calls if stage == "rerank_exemplars")
    stages = set(pq.read_table(out / slide.stem / "patches.parquet").column("stage").to_pylist())
    assert "student" in stages and not stages & {"zero_shot", "few_shot"}  # the student decided, and says so
    summary = json.loads((out / slide.stem / "summary.json").read_text())
    grid = summary["patches"]["rows"] * summary["patches"]["cols"]
    if student_map:  # every grid patch from the tiles, 64 a call row; nothing else asked
        assert summary["patches"]["sent_zero_shot"] == grid
        assert calls == [("classify_patches", "classifier", "student")] * math.ceil(grid / 64)
        assert "ground_boxes" not in summary["stages"] and "review_mask" not in summary["stages"]
    else:  # grounding, M1 and review as before
        assert {"ground_boxes", "cluster_colours"} <= set(summary["stages"])
        assert summary["patches"]["sent_zero_shot"] < grid


def test_segment_refuses_a_student_oracle_before_reading_any_slide(
    checkpoint: Path, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", str(slide), "--out", str(out), "--oracle", f"student:{checkpoint}"]
    )
    assert result.exit_code == 2
    assert "cannot answer 'boxes'" in result.output and "--classifier" in result.output
    assert not (out / slide.stem).exists()
