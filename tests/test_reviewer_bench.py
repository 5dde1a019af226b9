"""The reviewer benchmark: corruption hits its target grades, and the classical reviewer is scored."""

from __future__ import annotations

import numpy as np
import pytest

from tissue_oracle.bench.evaluation.reviewer_bench import (
    GRADE_TARGETS,
    ReviewSource,
    achieved,
    build_items,
    corrupt_mask,
    run_reviewer,
    score_reviewer,
)
from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.schemas import Grades


def _source(stain: str, seed: int) -> ReviewSource:
    """A drawn 'thumbnail': two stained sections with nuclei, and an ink blot on the glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:240, :320]
    tissue = (((xx - 100) / 50.0) ** 2 + ((yy - 120) / 80.0) ** 2 <= 1) | (
        ((xx - 240) / 40.0) ** 2 + ((yy - 120) / 40.0) ** 2 <= 1
    )
    img = np.full((240, 320, 3), 236, dtype=np.uint8)
    img[tissue] = (200, 120, 170)
    img[tissue & (rng.random(tissue.shape) < 0.08)] = (110, 50, 130)
    ink = np.zeros_like(tissue)
    ink[10:40, 150:200] = True
    img[ink] = (40, 40, 120)
    return ReviewSource(
        slide_id=f"{stain}-{seed}", stain=stain, image=img, tissue=tissue, downsample=32, artefact=ink
    )


@pytest.mark.parametrize(("precision", "recall"), [(97.5, 97.5), (87.5, 35.0), (35.0, 97.5), (65.0, 65.0)])
def test_corruption_hits_targets(precision: float, recall: float) -> None:
    tissue = _source("HE", 0).tissue
    mask = corrupt_mask(tissue, precision_pct=precision, recall_pct=recall, rng=np.random.default_rng(3))
    got_p, got_r = achieved(mask, tissue)
    assert got_p == pytest.approx(precision, abs=0.2)
    assert got_r == pytest.approx(recall, abs=0.2)


def test_false_positives_go_to_artefacts_first() -> None:
    src = _source("HE", 0)
    assert src.artefact is not None
    mask = corrupt_mask(
        src.tissue, precision_pct=87.5, recall_pct=97.5, rng=np.random.default_rng(0), artefact=src.artefact
    )
    assert (mask & src.artefact).sum() == src.artefact.sum()


def test_grid_covers_every_grade_cell_per_stain() -> None:
    items = build_items([_source(s, i) for i, s in enumerate(["HE", "Jones", "EVG", "PAS"])], seed=1)
    assert len(items) == 48  # 4x4 grid x 3 stains (the first three, sorted)
    cells = {(it.stain, it.target_precision, it.target_recall) for it in items}
    assert len(cells) == 48
    hits = [it.precision_grade == it.target_precision and it.recall_grade == it.target_recall for it in items]
    assert all(hits)
    assert {it.precision_grade for it in items} == set(GRADE_TARGETS)


def test_classical_reviewer_is_scored_and_audited() -> None:
    items = build_items([_source("HE", 0)], seed=2)
    recorder = MemoryRecorder()
    grades = run_reviewer(ClassicalOracle(), items, recorder)
    assert len(recorder.calls) == len(items) == 16
    assert {c.backend for c in recorder.calls} == {"classical"}
    scores = score_reviewer(items, grades)
    assert 0.0 <= scores["joint_acc"] <= scores["precision_acc"] <= 1.0
    assert scores["recall_acc"] > 0.5 and scores["recall_qwk"] > 0.5


def test_scoring_by_hand() -> None:
    items = build_items([_source("HE", 0)], seed=2)[:2]  # targets (1,1) and (1,2)
    perfect = [
        Grades(precision=1, recall=1, precision_pct=97.5, recall_pct=97.5),
        Grades(precision=1, recall=2),
    ]
    s = score_reviewer(items, perfect)
    assert s["joint_acc"] == 1.0 and s["precision_mae"] == pytest.approx(0.0, abs=0.2)
    wrong = [Grades(precision=2, recall=1), Grades(precision=1, recall=4)]
    s = score_reviewer(items, wrong)
    assert s["precision_acc"] == 0.5 and s["recall_acc"] == 0.5 and s["joint_acc"] == 0.0
