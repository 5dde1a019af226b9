"""The ``student:PATH`` backend and the student-first cascade."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tissue_oracle.oracles import cascade
from tissue_oracle.oracles.registry import build_oracle
from tissue_oracle.oracles.student import StudentOracle, build
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.distil import save_checkpoint
from tissue_oracle.tools.errors import BudgetExceededError, ConfigError, OracleError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    BoxesRequest,
    PatchLabel,
    PatchLabelsRequest,
    PatchRef,
    Role,
    StudentSpec,
)

SPEC = StudentSpec(patch_px=32, patch_size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student with random weights: enough to test the backend's plumbing."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "student.pt"
    save_checkpoint(path, SPEC, fit.build_model(SPEC).state_dict())
    return path


def request(n: int, px: int = 64) -> PatchLabelsRequest:
    rng = np.random.default_rng(n)
    return PatchLabelsRequest(
        patches=[PatchRef(x=64 * i, y=0, size=64) for i in range(n)],
        images=[rng.integers(0, 255, (px, px, 3), dtype=np.uint8) for _ in range(n)],
    )


def ctx(recorder: MemoryRecorder, role: Role = "classifier") -> CallContext:
    return CallContext(run_id="r", slide_id="s", stage="classify_patches", role=role, recorder=recorder)


@pytest.mark.slow
def test_student_answers_patch_labels_in_batches_and_records_each(checkpoint: Path) -> None:
    oracle = build(str(checkpoint), device="cpu", batch_size=4)
    rec = MemoryRecorder()
    answer = asyncio.run(oracle.patch_labels(request(10), ctx(rec)))
    assert [a.ref for a in answer.labels] == request(10).patches
    assert all(
        a.source == "student" and 0.5 <= a.confidence <= 1.0 and a.focus is None for a in answer.labels
    )
    assert len(rec.calls) == 3 and answer.usage.calls == 3  # batches of 4, 4, 2
    assert all(c.backend == "student" and c.ok and c.cost_usd == 0 and c.input_tokens == 0 for c in rec.calls)
    assert [len(c.image_hashes) for c in rec.calls] == [4, 4, 2]
    assert rec.calls[0].image_coords[1] == [64, 0, 64, 64]
    again = asyncio.run(oracle.patch_labels(request(10), ctx(rec)))  # same request: served from the cache
    assert [c.cache_hit for c in rec.calls[3:]] == [True] * 3
    assert again.labels == answer.labels


@pytest.mark.slow
def test_student_resizes_any_patch_size_and_is_deterministic(checkpoint: Path) -> None:
    oracle = build(str(checkpoint), device="cpu")
    big = request(3, px=128)
    a = oracle.classify(big)
    b = oracle.classify(big)
    assert a.labels == b.labels and len(a.labels) == 3


@pytest.mark.slow
def test_registry_builds_the_student_and_it_refuses_other_questions(checkpoint: Path) -> None:
    oracle = build_oracle(f"student:{checkpoint}", device="cpu")
    assert isinstance(oracle, StudentOracle)
    assert oracle.questions == frozenset({"patch_labels"}) and oracle.is_vlm is False
    assert oracle.model.startswith("mobilenetv3_large_100@")
    req = BoxesRequest(
        thumbnail=np.zeros((8, 8, 3), np.uint8), downsample=64, slide_width=512, slide_height=512
    )
    with pytest.raises(ConfigError, match="patch_labels"):
        asyncio.run(oracle.boxes(req, ctx(MemoryRecorder())))


def test_bad_checkpoints_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load"):
        build(str(junk))
    with pytest.raises(ConfigError, match="device"):
        build(str(junk), device="tpu")


# --------------------------------------------------------------------------- cascade


@pytest.mark.parametrize(
    ("confidences", "threshold", "keep", "ask"),
    [
        ([0.99, 0.5, 0.9, 0.89], 0.9, [0, 2], [1, 3]),  # at the threshold is kept
        ([0.6, 0.7], 0.0, [0, 1], []),  # threshold 0 keeps everything
        ([1.0, 0.95], 1.01, [], [0, 1]),  # above 1 sends everything
        ([float("nan"), 0.95], 0.9, [1], [0]),  # NaN is unsure
        ([], 0.9, [], []),
    ],
)
def test_route_table(confidences: list[float], threshold: float, keep: list[int], ask: list[int]) -> None:
    plan = cascade.route(confidences, threshold)
    assert (plan.keep, plan.ask) == (keep, ask)


def test_merge_puts_oracle_answers_back_in_request_order() -> None:
    refs = [PatchRef(x=i, y=0) for i in range(4)]
    student = [
        PatchLabel(ref=r, label="tissue", confidence=c, source="student")
        for r, c in zip(refs, [1, 0.5, 1, 0.6], strict=True)
    ]
    oracle = [PatchLabel(ref=refs[i], label="background", source="zero_shot") for i in (1, 3)]
    merged = cascade.merge(student, oracle, cascade.route([s.confidence for s in student], 0.9))
    assert [m.ref for m in merged] == refs
    assert [(m.label, m.source) for m in merged] == [
        ("tissue", "cascade"),
        ("background", "zero_shot"),
        ("tissue", "cascade"),
        ("background", "zero_shot"),
    ]
    with pytest.raises(ValueError, match="asked"):
        cascade.merge(student, oracle[:1], cascade.route([s.confidence for s in student], 0.9))


@pytest.mark.slow
def test_cascade_asks_the_oracle_only_about_unsure_patches(checkpoint: Path) -> None:
    student = build(str(checkpoint), device="cpu")
    oracle = build_oracle("classical")
    req = request(8)
    confidences = [lab.confidence for lab in student.classify(req).labels]
    threshold = float(np.median(confidences))
    rec = MemoryRecorder()
    answer, stats = asyncio.run(
        cascade.cascade_patch_labels(
            req,
            student=student,
            oracle=oracle,
            threshold=threshold,
            student_ctx=ctx(rec, "classifier"),
            oracle_ctx=ctx(rec, "oracle"),
        )
    )
    unsure = [i for i, c in enumerate(confidences) if c < threshold]
    assert stats.sent_to_oracle == len(unsure) > 0 and stats.kept_by_student == 8 - len(unsure)
    oracle_rows = [c for c in rec.calls if c.backend == "classical"]
    assert len(oracle_rows) == stats.oracle_calls == 1 and len(oracle_rows[0].image_hashes) == len(unsure)
    assert [a.source == "zero_shot" for a in answer.labels] == [i in unsure for i in range(8)]
    everything, stats_all = asyncio.run(
        cascade.cascade_patch_labels(
            req,
            student=student,
            oracle=oracle,
            threshold=0.0,
            student_ctx=ctx(rec, "classifier"),
            oracle_ctx=ctx(rec, "oracle"),
        )
    )
    assert stats_all.oracle_calls == 0 and all(a.source == "cascade" for a in everything.labels)


@pytest.mark.slow
def test_with_cascade_wraps_the_classifier_and_the_stage_keeps_cascade_sources(checkpoint: Path) -> None:
    from tissue_oracle.tools.classify_patches import ClassifyPatchesInput, classify_patches
    from tissue_oracle.tools.slides import open_slide
    from tissue_oracle.tools.stage_deps import StageDeps

    student = build(str(checkpoint), device="cpu")
    plain = build_oracle("classical")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    refs = [PatchRef(x=x, y=y, size=64) for y in range(0, 256, 64) for x in range(0, 256, 64)]
    images = [open_slide(image).read_patch(ref, 64) for ref in refs]
    confidences = [
        lab.confidence for lab in student.classify(PatchLabelsRequest(patches=refs, images=images)).labels
    ]
    roles = cascade.with_cascade({"oracle": plain}, student=student, threshold=float(np.median(confidences)))
    wrapped = roles["classifier"]
    assert isinstance(wrapped, cascade.CascadeOracle) and roles["oracle"] is plain
    rec = MemoryRecorder()
    deps = StageDeps(
        slide=open_slide(image),
        oracles=roles,
        context=lambda stage, role: CallContext(
            run_id="r", slide_id="s", stage=stage, role=role, recorder=rec
        ),
    )
    inp = ClassifyPatchesInput(
        patch_size=64, send_size=64, batch_size=4, coarse_mask=np.ones((4, 4), bool), mask_downsample=64
    )
    out = asyncio.run(classify_patches(inp, deps))
    stats = wrapped.stats
    assert stats.kept_by_student > 0 and stats.sent_to_oracle > 0
    assert stats.patches == 16 and stats.kept_by_student + stats.sent_to_oracle == 16
    sources = [label.source for label in out.labels]
    assert sources.count("cascade") == stats.kept_by_student
    assert sources.count("zero_shot") == stats.sent_to_oracle
    assert sum(c.backend == "classical" for c in rec.calls) == stats.oracle_calls
    with pytest.raises(ConfigError, match="roles set"):
        cascade.with_cascade({}, student=student, threshold=0.9)


@pytest.mark.slow
def test_policy_cascade_puts_the_student_before_the_budgeted_classifier(checkpoint: Path) -> None:
    from tissue_oracle.agent.budget_guard import BudgetedOracle
    from tissue_oracle.agent.controller import budgeted
    from tissue_oracle.agent.oracle_setup import build_oracles
    from tissue_oracle.policies.ledger import BudgetLedger
    from tissue_oracle.policies.policy import load_policy

    policy = load_policy("default").with_updates(
        {"cascade.enabled": True, "cascade.student": f"student:{checkpoint}", "cascade.confidence": 0.8}
    )
    oracles = build_oracles(policy)
    assert oracles.cascade_student is not None and oracles.cascade_threshold == 0.8
    assert oracles.identities()["cascade_student"]["backend"] == "student"
    roles = budgeted(oracles, BudgetLedger(), policy)
    classifier = roles["classifier"]
    assert isinstance(classifier, cascade.CascadeOracle) and classifier.threshold == 0.8
    assert classifier.oracle_batch == policy.classify.batch_size
    assert classifier.request_batch == policy.cascade.request_batch == 256
    # Both sides are budgeted: each oracle question the cascade asks reserves its own budget.
    assert isinstance(classifier.student, BudgetedOracle) and isinstance(classifier.oracle, BudgetedOracle)
    assert classifier.oracle.inner is oracles.by_role["classifier"]
    plain = load_policy("default")
    assert not isinstance(
        budgeted(build_oracles(plain), BudgetLedger(), plain)["classifier"], cascade.CascadeOracle
    )
    asyncio.run(oracles.aclose())


def test_the_cascade_batches_unsure_patches_for_the_oracle(checkpoint: Path) -> None:
    student = build(str(checkpoint), device="cpu")
    plain = build_oracle("classical")
    req = request(40)
    wrapped = cascade.CascadeOracle(student=student, oracle=plain, threshold=1.01, oracle_batch=8)
    rec = MemoryRecorder()
    answer = asyncio.run(wrapped.patch_labels(req, ctx(rec)))
    assert [a.ref for a in answer.labels] == req.patches and wrapped.stats.sent_to_oracle == 40
    assert sum(c.backend == "classical" for c in rec.calls) == 5 == wrapped.stats.oracle_calls  # 40 / 8


class FailingOnce:
    """The classical oracle, except that its ``fail_on``-th patch question raises ``error``."""

    def __init__(self, error: Exception, fail_on: int = 2) -> None:
        self.inner = build_oracle("classical")
        self.backend, self.model, self.is_vlm = "classical", "classical-v1", False
        self.questions = self.inner.questions
        self.error, self.fail_on, self.asked = error, fail_on, 0

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext):  # type: ignore[no-untyped-def]
        self.asked += 1
        if self.asked == self.fail_on:
            raise self.error
        return await self.inner.patch_labels(req, ctx)


@pytest.mark.parametrize(
    ("error", "budget"),
    [(OracleError("upstream 503 after retries"), False), (BudgetExceededError("calls cap 3 reached"), True)],
)
def test_a_failed_oracle_question_loses_only_its_own_patches(
    checkpoint: Path, error: Exception, budget: bool
) -> None:
    """40 unsure patches, 5 oracle questions of 8; the second fails: the other 32 answers are kept."""
    from tissue_oracle.tools.classify_patches import ClassifyPatchesInput, classify_patches
    from tissue_oracle.tools.slides import open_slide
    from tissue_oracle.tools.stage_deps import StageDeps

    student = build(str(checkpoint), device="cpu")
    failing = FailingOnce(error)
    wrapped = cascade.CascadeOracle(student=student, oracle=failing, threshold=1.01, oracle_batch=8)  # type: ignore[arg-type]
    rec = MemoryRecorder()
    with pytest.raises(cascade.PartialCascade) as caught:
        asyncio.run(wrapped.patch_labels(request(40), ctx(rec)))
    partial = caught.value
    assert sorted(partial.answered) == [*range(8), *range(16, 40)]  # the second question's 8 are missing
    assert all(label.source == "zero_shot" for label in partial.answered.values())
    assert partial.budget_exhausted is budget
    assert partial.usage.calls == 4 + 1  # the four answered oracle questions and the student's one
    assert wrapped.stats.oracle_failed == 8 and wrapped.stats.oracle_calls == 4

    # Through the stage: one 64-patch grid, one cascade question; 8 patches fall back to M1
    image = np.random.default_rng(3).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    slide = open_slide(image)
    failing.asked = 0
    roles = {
        "classifier": cascade.CascadeOracle(student=student, oracle=failing, threshold=1.01, oracle_batch=8)
    }
    deps = StageDeps(
        slide=slide,
        oracles=roles,  # type: ignore[arg-type]
        context=lambda stage, role: CallContext(
            run_id="r", slide_id="s", stage=stage, role=role, recorder=rec
        ),
    )
    inp = ClassifyPatchesInput(
        patch_size=64, send_size=64, batch_size=8, coarse_mask=np.ones((8, 8), bool), mask_downsample=64
    )
    out = asyncio.run(classify_patches(inp, deps))
    sources = [label.source for label in out.labels]
    assert out.answered == 56 and out.failed == 8 and sources.count("coarse") == 8
    assert sources.count("zero_shot") == 56 and out.budget_exhausted is budget
    assert out.errors and "8 of 64 patches unanswered" in out.errors[0]
