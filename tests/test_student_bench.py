"""The student bench's cascade replay and real-cascade scoring: calls and Dice lost computed from labels
and stores, on constructed slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tissue_oracle.bench.perf import student_bench
from tissue_oracle.bench.perf.student_bench import cascade_curve, direct
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.tools.schemas import CallRecord, RunRecord


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
    (row,) = cascade_curve(per, (0.9,), 8, request=64)
    assert row["plain_calls"] == 2 * (8 + 1)  # 64 = 8 questions, then 6 patches = 1
    assert row["oracle_calls"] == 2  # the two unsure patches sit in different requests
    assert row["worst_slide_dice_lost_vs_teacher"] == 0.0  # no tissue anywhere: both empty masks agree
    (packed,) = cascade_curve(per, (0.9,), 8)  # the default request, 256 patches, holds both
    assert packed["plain_calls"] == 2 * 9 and packed["oracle_calls"] == 1
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


def _fake_run(folder: Path, run_id: str, calls: int, masks: dict[str, np.ndarray]) -> None:
    """What one ``segment`` run leaves behind: its calls in the folder's store (appended to any
    earlier run's, as the CLI does) and each slide's patch mask."""
    with AuditStore.open(folder / "audit.duckdb") as store:
        store.begin_run(
            RunRecord(
                run_id=run_id,
                policy_name="p",
                policy_yaml="",
                policy_hash="h",
                tool_version="t",
                command_line="test",
            )
        )
        for k in range(calls):
            store.record_call(
                CallRecord(
                    run_id=run_id,
                    slide_id="a",
                    stage="classify_patches",
                    role="oracle",
                    backend="classical",
                    model="classical-map",
                    request_hash=f"{run_id}-{k}",
                    ok=True,
                )
            )
    for stem, mask in masks.items():
        (folder / stem).mkdir(parents=True, exist_ok=True)
        np.save(folder / stem / "mask.npy", mask)


def test_a_repeated_real_cascade_counts_only_its_own_calls_and_is_scored_against_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = np.array([[1, 1, 0], [1, 0, 0]], bool)
    plain = np.array([[1, 1, 1], [1, 0, 0]], bool)  # the fallback oracle: one false patch
    cascade = truth.copy()  # the student got that patch right
    baseline = tmp_path / "teacher_pp"
    _fake_run(baseline, "plain", 10, {"a": plain})
    runs = iter(range(10))

    def fake_segment(slides: list[Path], out: Path, policy: Path, extra: list[str]) -> float:
        _fake_run(out, f"cascade-{next(runs)}", 2, {"a": cascade})
        return 1.0

    monkeypatch.setattr(student_bench, "segment", fake_segment)
    monkeypatch.setattr(student_bench, "_truth_grid", lambda slide, size: truth)
    slides = [tmp_path / "a.tiff"]
    for _ in range(2):  # the second run lands in the first one's folder
        row = student_bench.real_cascade(slides, tmp_path, tmp_path / "s.pt", 0.98, baseline, 512)
        assert (row["plain_oracle_calls"], row["cascade_oracle_calls"]) == (10, 2)
        assert row["calls_saved"] == 0.8
    assert row["mask_dice_vs_teacher_pp"] == {"a": round(2 * 3 / (4 + 3), 4)}
    assert row["mean_dice_lost"] == round(1 - 2 * 3 / 7, 4)
    assert row["dice_vs_truth"] == {"cascade": {"a": 1.0}, "plain": {"a": round(2 * 3 / 7, 4)}}
