"""The student bench's cascade replay: calls and Dice lost computed from labels, on constructed slides."""

from __future__ import annotations

import numpy as np
import pytest

from tissue_oracle.bench.perf.student_bench import cascade_curve, direct


def slide(teacher: list[bool], student: list[tuple[bool, float]], rest: int = 0) -> dict:
    return {
        "teacher": np.array(teacher, bool),
        "student": np.array(student, dtype=np.float64),
        "truth": np.array(teacher, bool),
        "rest": rest,
    }


def test_unsure_patches_go_to_the_teacher_and_wrong_sure_ones_cost_dice() -> None:
    # 16 asked patches: the student is right and sure on 12, wrong but sure (0.95) on 1, unsure on 3
    teacher = [True] * 8 + [False] * 8
    student = [(t, 0.99) for t in teacher]
    student[0] = (False, 0.95)  # wrong, sure: kept below a 0.96 threshold
    for i in (1, 9, 10):
        student[i] = (not teacher[i], 0.6)  # wrong and unsure: the oracle fixes them
    rows = {
        r["threshold"]: r
        for r in cascade_curve({"a": slide(teacher, student, rest=2)}, (0.5, 0.9, 0.96, 1.1), 8)
    }
    assert {r["plain_calls"] for r in rows.values()} == {2}
    # 0.5 keeps all: 4 wrong; teacher tissue 8 + 2 rest, student 6 of those 8 + 2 rest + 2 on glass
    assert rows[0.5]["oracle_calls"] == 0 and rows[0.5]["calls_saved"] == 1.0
    inter, t_sum, s_sum = 6 + 2, 8 + 2, 6 + 2 + 2
    assert rows[0.5]["mean_dice_lost_vs_teacher"] == pytest.approx(round(1 - 2 * inter / (t_sum + s_sum), 4))
    # 0.9 asks the 3 unsure ones (one question): only the sure mistake is left
    assert rows[0.9]["oracle_calls"] == 1 and rows[0.9]["calls_saved"] == 0.5
    assert rows[0.9]["mean_dice_lost_vs_teacher"] == pytest.approx(round(1 - 2 * 9 / (10 + 9), 4))
    # 0.96 asks 4 (the sure mistake too): nothing lost
    assert rows[0.96]["oracle_calls"] == 1 and rows[0.96]["mean_dice_lost_vs_teacher"] == 0.0
    assert rows[0.96]["worst_dice_lost_vs_truth"] == 0.0
    # above 1 everything is asked: no saving
    assert rows[1.1]["oracle_calls"] == 2 and rows[1.1]["calls_saved"] == 0.0


def test_calls_count_batches_within_64_patch_requests_and_worst_slide_is_reported() -> None:
    many = [False] * 70
    sure = slide(many, [(False, 0.99)] * 70)
    unsure = [(False, 0.99)] * 70
    unsure[0], unsure[64] = (True, 0.5), (True, 0.5)  # one unsure patch in each of two requests
    per = {"sure": sure, "unsure": slide(many, unsure)}
    (row,) = cascade_curve(per, (0.9,), 8)
    assert row["plain_calls"] == 2 * (8 + 1)  # 64 = 8 questions, then 6 patches = 1
    assert row["oracle_calls"] == 2  # the two unsure patches sit in different requests
    assert row["worst_slide_dice_lost_vs_teacher"] == 0.0  # no tissue anywhere: both empty masks agree
    (low,) = cascade_curve(per, (0.4,), 8)
    assert low["worst_slide_dice_lost_vs_teacher"] == 1.0 and low["mean_dice_lost_vs_teacher"] == 0.5


def test_direct_scores_the_student_on_every_teacher_patch() -> None:
    teacher = {(0, 0): (True, "zero_shot"), (512, 0): (False, "zero_shot"), (0, 512): (True, "zero_shot")}
    grid = {(0, 0): np.array([1.0, 0.9]), (512, 0): np.array([1.0, 0.8]), (0, 512): np.array([0.0, 0.7])}
    got = direct(teacher, grid)
    assert got["disagree"] == 2 and got["patches"] == 3 and "disagree_where" not in got
    assert got["f1"] == pytest.approx(0.5) and got["precision"] == 0.5 and got["recall"] == 0.5
    edge = np.array([[False, True], [True, False]])  # the two wrong patches sit at (0, 1) and (1, 0)
    pen = np.array([[True, False], [False, False]])  # the right one has the pen
    where = direct(teacher, grid, {"edge": edge, "pen": pen}, patch_size=512)["disagree_where"]
    assert where == {"edge": 2, "pen": 0}
