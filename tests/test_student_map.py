"""The dense student path: a student classifier labels every grid patch from the slide's tiles.

A colour-rule stand-in plays the student here (backend ``student``, no torch), so the stage and
controller plumbing is tested fast; tests/test_student_roles.py runs a real checkpoint through the CLI.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stage_support import FaultyOracle, core_slide_pixels, dice, make_deps, open_core_slide, segment_two_cores
from test_classify_dense import patch_truth

from tissue_oracle.policies.decide import dense_path, map_accepted
from tissue_oracle.policies.policy import ClassifyParams, load_policy
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.classify_patches import ClassifyPatchesParams, classify_grid
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import PatchLabel, PatchLabelsAnswer, PatchLabelsRequest, Usage

PATCH = 256
PX = 16


class ColourStudent:
    """Tissue where a patch's mean brightness is below glass; says it is a student, answers 64 a question."""

    backend, model, is_vlm = "student", "colour-rule", False
    questions = frozenset({"patch_labels"})
    image_px, request_batch = PX, 64

    def __init__(self) -> None:
        self.requests: list[PatchLabelsRequest] = []

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        self.requests.append(req)
        labels = [
            PatchLabel(
                ref=ref,
                label="tissue" if image.mean() < 225 else "background",
                confidence=0.9,
                source="student",
            )
            for ref, image in zip(req.patches, req.images, strict=True)
        ]
        return PatchLabelsAnswer(labels=labels, usage=Usage(calls=1))

    async def aclose(self) -> None:
        return None


def _rule(image: np.ndarray) -> str:
    return "tissue" if image.mean() < 225 else "background"


def stage_params(**updates: Any) -> ClassifyPatchesParams:
    return ClassifyPatchesParams(patch_size=PATCH, send_size=512, batch_size=8, **updates)


def test_classify_grid_labels_every_patch_from_the_tiles() -> None:
    _, truth = core_slide_pixels()
    student = ColourStudent()
    with open_core_slide() as slide:
        deps, _ = make_deps(slide, student)
        out = asyncio.run(classify_grid(stage_params(), deps))
        grid = out.grid
        first = student.requests[0]
        expected = [slide.read_patch(ref, out_size=PX) for ref in first.patches]
    n = grid.rows * grid.cols
    assert out.scope.all() and out.sent == out.answered == n and out.failed == 0 and out.gated_out == 0
    assert [len(r.patches) for r in student.requests] == [64, 64, n - 128]  # request_batch a question
    assert all(im.shape == (PX, PX, 3) for r in student.requests for im in r.images)
    assert all(
        np.array_equal(a, b) for a, b in zip(first.images, expected, strict=True)
    )  # read_patch's pixels
    assert [(lab.ref.y, lab.ref.x) for lab in out.labels] == [(r * PATCH, c * PATCH) for r, c in grid.cells()]
    assert {lab.source for lab in out.labels} == {"student"}
    assert dice(out.tissue, patch_truth(truth)) >= 0.9
    assert np.allclose(out.confidence, 0.9)


def test_a_failed_question_leaves_its_patches_background_and_counted() -> None:
    faulty = FaultyOracle(inner=ColourStudent(), fail={"patch_labels": {1}})  # type: ignore[arg-type]
    faulty.image_px, faulty.request_batch = PX, 64  # type: ignore[attr-defined]
    with open_core_slide() as slide:
        deps, _ = make_deps(slide, faulty)  # type: ignore[arg-type]
        out = asyncio.run(classify_grid(stage_params(), deps))
    assert out.failed == 64 and out.answered == out.sent - 64
    assert "injected failure" in out.errors[0]
    coarse = [lab for lab in out.labels if lab.source == "coarse"]
    assert len(coarse) == 64 and all(lab.label == "background" for lab in coarse)


@pytest.mark.parametrize(
    ("updates", "classifier", "reviewer", "path"),
    [
        ({}, "student", "classical", "student"),
        ({}, "student", "openai", "student"),  # the student map is not reviewed, whoever would review
        ({"student_map": False}, "student", "classical", None),
        ({}, "classical", "classical", "classical"),
        ({}, "classical", None, "classical"),  # review off
        ({}, "classical", "gemini", None),  # a VLM reviews the classical labels: coarse-to-fine
        ({"classical_map": False}, "classical", "classical", None),
        ({}, "openai", "classical", None),
    ],
)
def test_dense_path_table(
    updates: dict[str, bool], classifier: str, reviewer: str | None, path: str | None
) -> None:
    assert dense_path(ClassifyParams(**updates), classifier, reviewer) == path


def test_the_accept_reasons_name_the_pass() -> None:
    assert "student map" in map_accepted("student").reason and map_accepted("student").action == "accept"
    assert "classical map" in map_accepted("classical").reason


def run_segment(tmp_path: Path, student: ColourStudent, **updates: Any) -> tuple[Any, MemoryRecorder]:
    small = {"classify.patch_size": PATCH, "review.crop_size": 512}
    policy = load_policy("default").with_updates(small | updates)
    return segment_two_cores(policy, student, tmp_path, "student:fake")  # type: ignore[no-any-return]


def test_a_student_classifier_labels_the_slide_in_one_pass_unreviewed(tmp_path: Path) -> None:
    _, truth = core_slide_pixels()
    summary, recorder = run_segment(tmp_path, ColourStudent())
    p = summary.patches
    assert p.sent_zero_shot == p.in_scope == p.rows * p.cols and p.gated_out == 0
    # no grounding, M1, review, nor patch clean-up (the teacher's labels weren't patch-cleaned)
    assert set(summary.stages) == {"thumbnail", "classify_patches"}
    assert len(summary.boxes) == 2 and not summary.boxes_fallback  # the pieces of its labels
    assert summary.regions and all(
        r.final_action == "accept" and "student map" in (r.reason or "") for r in summary.regions
    )
    assert not recorder.calls or all(c.stage == "classify_patches" for c in recorder.calls)
    assert {lab.source for lab in recorder.patches} == {"student"}
    mask = np.load(tmp_path / "two-cores" / "mask.npy")
    assert dice(mask, patch_truth(truth)) >= 0.9
    assert (tmp_path / "two-cores" / "tissue.geojson").is_file()


def test_student_map_off_keeps_the_per_patch_flow(tmp_path: Path) -> None:
    student = ColourStudent()
    summary, _ = run_segment(tmp_path, student, **{"classify.student_map": False})
    assert {"ground_boxes", "cluster_colours", "review_mask"} <= set(summary.stages)
    assert summary.patches.gated_out + summary.patches.sent_zero_shot == summary.patches.in_scope
    assert summary.patches.in_scope < summary.patches.rows * summary.patches.cols  # M1 scoped it
    assert not any("student map" in (r.reason or "") for r in summary.regions)
