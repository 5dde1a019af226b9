"""The SIMULATED oracle: labelled as simulation, follows its declared error model, audited."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from tissue_oracle.bench.evaluation.simulated_oracle import ErrorModel, SimulatedOracle, region_truth
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import (
    Box,
    BoxesRequest,
    Exemplar,
    PatchGrid,
    PatchLabelsRequest,
    PointsRequest,
    ReviewRequest,
)

SIZE, DS = 8192, 16  # level-0 px, and level-0 px per truth pixel


@dataclass
class _Truth:
    """A truth in the ``bench.truth.Truth`` layout: left half tissue, a pen stripe on the glass."""

    slide_width: int = SIZE
    slide_height: int = SIZE
    tissue: np.ndarray = field(default_factory=lambda: np.zeros((SIZE // DS, SIZE // DS), bool))
    artefacts: dict[str, np.ndarray] = field(default_factory=dict)
    focus: np.ndarray = field(default_factory=lambda: np.full((SIZE // DS, SIZE // DS), 255, np.uint8))

    def __post_init__(self) -> None:
        n = SIZE // DS
        self.tissue[:, : n // 2] = True
        self.focus[:, : n // 4] = 0
        self.focus[:, n // 4 : n // 2] = 2
        pen = np.zeros((n, n), bool)
        pen[:, 3 * n // 4 :] = True
        self.artefacts = {"pen": pen, "seams": np.ones((n, n), bool)}


def _ctx(recorder: MemoryRecorder, stage: str = "classify_patches") -> CallContext:
    return CallContext(run_id="r", slide_id="s", stage=stage, role="oracle", recorder=recorder)  # type: ignore[arg-type]


def _label_all(oracle: SimulatedOracle, exemplars: list[Exemplar]) -> tuple[np.ndarray, list]:
    grid = PatchGrid(slide_width=SIZE, slide_height=SIZE, patch_size=128)
    refs = [grid.ref(r, c) for r, c in grid.cells()]
    blank = np.zeros((4, 4, 3), np.uint8)
    req = PatchLabelsRequest(patches=refs, images=[blank] * len(refs), exemplars=exemplars)
    answer = asyncio.run(oracle.patch_labels(req, _ctx(MemoryRecorder())))
    tissue = np.array([lab.label == "tissue" for lab in answer.labels]).reshape(grid.shape)
    return tissue, answer.labels


def _exemplar() -> Exemplar:
    return Exemplar(
        ref=PatchGrid(slide_width=SIZE, slide_height=SIZE).ref(0, 0),
        label="tissue",
        image=np.zeros((4, 4, 3), np.uint8),
    )


def test_labelled_as_simulation_and_satisfies_protocol() -> None:
    oracle = SimulatedOracle(truths={"s": _Truth()})
    assert isinstance(oracle, Oracle)
    assert oracle.backend == "simulated" and oracle.is_vlm is False
    recorder = MemoryRecorder()
    req = ReviewRequest(
        crop=np.zeros((64, 64, 3), np.uint8),
        overlay=np.zeros((64, 64, 3), np.uint8),
        mask=np.ones((64, 64), bool),
        region=Box(x0=0, y0=0, x1=SIZE, y1=SIZE),
    )
    grades = asyncio.run(oracle.review(req, _ctx(recorder, "review_mask"))).grades
    assert grades.notes.startswith("SIMULATED")
    assert len(recorder.calls) == 1 and recorder.calls[0].backend == "simulated"


def test_error_rates_follow_the_declared_model() -> None:
    errors = ErrorModel(tissue_miss=0.1, speckle_fp=0.05, artefact_fp_zero_shot=0.6, artefact_fp_few_shot=0.1)
    oracle = SimulatedOracle(truths={"s": _Truth()}, errors=errors, seed=1)
    zero, _ = _label_all(oracle, [])
    few, _ = _label_all(oracle, [_exemplar()])
    n = zero.shape[1]
    tissue, glass, pen = zero[:, : n // 2], zero[:, n // 2 : 3 * n // 4], zero[:, 3 * n // 4 :]
    assert 1 - tissue.mean() == pytest.approx(0.1, abs=0.03)
    assert glass.mean() == pytest.approx(0.05, abs=0.03)  # 'seams' span the slide and don't count
    assert pen.mean() == pytest.approx(0.6, abs=0.05)
    assert few[:, 3 * n // 4 :].mean() == pytest.approx(0.1, abs=0.04)  # exemplars fix most artefact errors


def test_answers_are_reproducible_and_focus_follows_truth() -> None:
    oracle = SimulatedOracle(truths={"s": _Truth()}, errors=ErrorModel(focus_slip=0.0, tissue_miss=0.0))
    first, labels = _label_all(oracle, [])
    again, _ = _label_all(oracle, [])
    np.testing.assert_array_equal(first, again)
    sharp = [lab.focus for lab in labels if lab.ref.x < SIZE // 4]
    blurred = [lab.focus for lab in labels if SIZE // 4 <= lab.ref.x < SIZE // 2 - 128]
    assert set(sharp) == {"sharp"} and set(blurred) == {"out_of_focus"}


def test_boxes_points_and_review_come_from_truth() -> None:
    oracle = SimulatedOracle(truths={"s": _Truth()}, errors=ErrorModel(review_sigma_pct=0.0))
    rec = MemoryRecorder()
    thumb = np.zeros((SIZE // 64, SIZE // 64, 3), np.uint8)
    boxes = asyncio.run(
        oracle.boxes(
            BoxesRequest(thumbnail=thumb, downsample=64, slide_width=SIZE, slide_height=SIZE), _ctx(rec)
        )
    ).boxes
    assert len(boxes) == 1 and boxes[0].x0 == 0 and boxes[0].x1 <= SIZE // 2 + SIZE // 16
    region = Box(x0=0, y0=0, x1=SIZE, y1=SIZE)
    points = asyncio.run(
        oracle.points(PointsRequest(crop=np.zeros((64, 64, 3), np.uint8), region=region), _ctx(rec))
    ).points
    assert all((p.x < SIZE // 2) == (p.label == "tissue") for p in points)
    truth_mask = region_truth(_Truth(), region, (64, 64))
    half = truth_mask.copy()
    half[32:] = False  # half the tissue, nothing else: precision 100, recall 50
    req = ReviewRequest(
        crop=np.zeros((64, 64, 3), np.uint8),
        overlay=np.zeros((64, 64, 3), np.uint8),
        mask=half,
        region=region,
    )
    grades = asyncio.run(oracle.review(req, _ctx(rec))).grades
    assert (grades.precision, grades.recall) == (1, 3)
    assert grades.recall_pct == pytest.approx(50.0)


def test_unknown_slide_is_an_oracle_error() -> None:
    from tissue_oracle.tools.errors import OracleError

    oracle = SimulatedOracle(truths={"other": _Truth()})
    with pytest.raises(OracleError, match="known"):
        _label_all(oracle, [])
