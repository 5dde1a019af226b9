"""The policy's pure decisions from tables of cases: every branch of accept / refine / escalate,
the revert that escalates, a failed refinement, and how a finished slide is flagged."""

from __future__ import annotations

from typing import Literal

import pytest

from tissue_oracle.policies.decide import (
    coarse_grid_note,
    decide,
    decide_review,
    judge_slide,
    refinement_failed,
    refinement_helped,
    review_disabled,
)
from tissue_oracle.policies.policy import ReviewParams
from tissue_oracle.tools.schemas import Action, Grades, grade_from_percent


def g(precision: int, recall: int) -> Grades:
    return Grades(precision=precision, recall=recall)


CASES: list[tuple[Grades | None, int, int, int, bool, Literal["escalate", "accept"], Action, str]] = [
    # grades,  round, threshold, max_rounds, budget_ok, on_failure, action, reason contains
    (g(1, 1), 0, 2, 1, True, "escalate", "accept", "within threshold"),
    (g(2, 2), 0, 2, 1, True, "escalate", "accept", "within threshold"),
    (g(2, 1), 0, 1, 1, True, "escalate", "refine", "round 1"),
    (g(1, 3), 0, 2, 1, True, "escalate", "refine", "recall 3"),
    (g(4, 1), 0, 2, 2, True, "escalate", "refine", "precision 4"),
    (g(4, 1), 1, 2, 2, True, "escalate", "refine", "round 2"),
    (g(4, 1), 2, 2, 2, True, "escalate", "escalate", "after 2 of 2"),
    (g(3, 3), 0, 2, 0, True, "escalate", "escalate", "after 0 of 0"),
    (g(3, 3), 0, 2, 3, False, "escalate", "escalate", "budget exhausted"),
    (g(1, 1), 0, 2, 3, False, "escalate", "accept", "within threshold"),
    (g(4, 4), 5, 4, 1, False, "escalate", "accept", "within threshold"),
    (None, 0, 2, 1, True, "escalate", "escalate", "review failed"),
    (None, 0, 2, 1, True, "accept", "accept", "review failed"),
    (None, 1, 2, 1, False, "accept", "accept", "unreviewed"),
    (None, 0, 2, 1, False, "escalate", "escalate", "budget exhausted"),
]


@pytest.mark.parametrize(
    ("grades", "round_", "threshold", "max_rounds", "budget_ok", "on_failure", "action", "reason"), CASES
)
def test_decide_table(
    grades: Grades | None,
    round_: int,
    threshold: int,
    max_rounds: int,
    budget_ok: bool,
    on_failure: Literal["escalate", "accept"],
    action: Action,
    reason: str,
) -> None:
    decision = decide(
        grades,
        round_,
        threshold=threshold,
        max_rounds=max_rounds,
        budget_ok=budget_ok,
        on_review_failure=on_failure,
    )
    assert decision.action == action
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("before", "after", "kept"),
    [
        (g(3, 1), g(1, 1), True),
        (g(3, 1), g(1, 3), True),
        (g(3, 1), g(2, 3), False),
        (g(3, 1), g(1, 4), False),
        (g(2, 2), g(1, 2), True),
        (None, g(4, 4), True),
        (g(1, 1), None, True),
    ],
)
def test_refinement_kept_unless_graded_worse(before: Grades | None, after: Grades | None, kept: bool) -> None:
    assert refinement_helped(before, after) is kept


def pct(precision_pct: float, recall_pct: float) -> Grades:
    return Grades(
        precision=grade_from_percent(precision_pct),
        recall=grade_from_percent(recall_pct),
        precision_pct=precision_pct,
        recall_pct=recall_pct,
    )


@pytest.mark.parametrize(
    ("before", "after", "kept"),
    [
        # Recall 0% -> 34% is a gain although both are grade 4 and precision slipped a grade.
        (pct(100.0, 0.0), pct(87.6, 34.3), True),
        (pct(90.0, 90.0), pct(96.0, 60.0), False),
        (pct(60.0, 96.0), pct(85.0, 85.0), True),
        (pct(0.0, 0.0), pct(0.0, 0.0), True),
        # One side without estimates: the grades decide.
        (g(3, 1), pct(99.0, 40.0), False),
    ],
)
def test_refinement_judged_by_estimated_f1_when_percentages_exist(
    before: Grades, after: Grades, kept: bool
) -> None:
    assert refinement_helped(before, after) is kept


# --------------------------------------------------------------------------- after a review


def pct(precision: int, recall: int, p_pct: float, r_pct: float) -> Grades:
    return Grades(precision=precision, recall=recall, precision_pct=p_pct, recall_pct=r_pct)


REVIEW_CASES: list[tuple[Grades | None, Grades | None, int, bool, bool, Action, bool, str]] = [
    # grades, before, round, revert_if_worse, budget_ok, action, drops the round, reason contains
    (g(1, 1), None, 0, True, True, "accept", False, "within threshold"),
    (g(3, 1), None, 0, True, True, "refine", False, "round 1"),  # round 0 has nothing to revert
    (g(4, 1), g(3, 1), 1, True, True, "escalate", True, "graded worse"),
    (g(4, 1), g(3, 1), 1, False, True, "escalate", False, "after 1 of 1"),  # reverting switched off
    (g(3, 1), g(4, 1), 1, True, True, "escalate", False, "after 1 of 1"),  # better, but still above tau
    (g(1, 1), g(3, 1), 1, True, True, "accept", False, "within threshold"),
    (None, g(3, 1), 1, True, True, "escalate", False, "review failed"),  # no evidence against the round
    (g(3, 1), g(3, 1), 1, True, False, "escalate", False, "budget exhausted"),
    (pct(4, 4, 88.0, 34.0), pct(4, 4, 100.0, 0.0), 1, True, True, "escalate", False, "after 1 of 1"),
    (pct(4, 4, 50.0, 10.0), pct(4, 4, 100.0, 30.0), 1, True, True, "escalate", True, "graded worse"),
]


@pytest.mark.parametrize(
    ("grades", "before", "round_", "revert", "budget_ok", "action", "drops", "reason"), REVIEW_CASES
)
def test_decide_review_table(
    grades: Grades | None,
    before: Grades | None,
    round_: int,
    revert: bool,
    budget_ok: bool,
    action: Action,
    drops: bool,
    reason: str,
) -> None:
    rules = ReviewParams(threshold=2, max_rounds=1, revert_if_worse=revert)
    decision = decide_review(grades, before, round_, rules=rules, budget_ok=budget_ok)
    assert (decision.action, decision.drop_last_round) == (action, drops)
    assert reason in decision.reason
    assert decision.needs_human_review == (action == "escalate")


def test_a_failed_refinement_escalates_naming_the_round() -> None:
    decision = refinement_failed(1, "point_ground: no points found")
    assert decision.action == "escalate" and decision.needs_human_review and not decision.drop_last_round
    assert decision.reason == "Auto-context round 2 failed: point_ground: no points found"
    assert review_disabled().action == "accept" and not review_disabled().needs_human_review


# --------------------------------------------------------------------------- a finished slide

SLIDE_CASES: list[tuple[str | None, bool, int, bool, list[tuple[int, str]], str, list[str], list[str]]] = [
    # exhausted, refused, failed patches, boxes fallback, escalated, status, flags, reasons contain
    (None, False, 0, False, [], "done", [], []),
    (None, False, 0, True, [], "done", ["boxes_fallback"], []),
    ("slide calls cap 10", False, 0, False, [], "degraded", ["budget_exhausted", "needs_human_review"],
     ["budget exhausted: slide calls cap 10"]),
    (None, True, 0, False, [], "degraded", ["budget_exhausted", "needs_human_review"],
     ["budget exhausted: a stage was refused"]),
    (None, False, 8, False, [], "done", ["oracle_errors", "needs_human_review"],
     ["8 patch(es) kept the coarse label"]),
    ("cap", False, 8, False, [], "degraded", ["budget_exhausted", "needs_human_review"], ["cap"]),
    (None, False, 0, False, [(1, "worse")], "done", ["needs_human_review"], ["region 1: worse"]),
    (None, False, 2, True, [(0, "a"), (2, "b")], "done",
     ["oracle_errors", "boxes_fallback", "needs_human_review"],
     ["2 patch(es)", "region 0: a", "region 2: b"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exhausted", "refused", "failed", "fallback", "escalated", "status", "flags", "reasons"), SLIDE_CASES
)
def test_judge_slide_table(
    exhausted: str | None,
    refused: bool,
    failed: int,
    fallback: bool,
    escalated: list[tuple[int, str]],
    status: str,
    flags: list[str],
    reasons: list[str],
) -> None:
    verdict = judge_slide(
        exhausted_reason=exhausted,
        stage_refused=refused,
        failed_patches=failed,
        boxes_fallback=fallback,
        escalated=escalated,
    )
    assert verdict.status == status and verdict.flags == flags
    assert len(verdict.reasons) == len(reasons)
    assert all(want in got for want, got in zip(reasons, verdict.reasons, strict=True))


@pytest.mark.parametrize(
    ("width", "height", "patch", "mpp", "says"),
    [
        (1000, 853, 512, None, "2 x 2 patches of 512 px"),  # HistoQC's pen_green thumbnail
        (644, 2231, 512, None, "5 x 2 patches"),
        (1000, 853, 512, 0.25, None),  # a pixel size: the grid is what the scan says
        (4443, 3567, 512, None, None),  # the TCGA slide without a pixel size: 63 patches
        (1000, 853, 32, None, None),  # already read as a thumbnail
        (120, 120, 40, None, None),  # a tile read at a patch size chosen for it
        (1488, 452, 512, None, "1 x 3 patches"),  # HistoQC's IHC coverslip-edge thumbnail: one side short
        (300, 900, 512, None, "2 x 1 patches"),
        (300, 400, 512, None, None),  # smaller than a patch both ways: a tile (the map's image_too_small)
    ],
)
def test_a_coarse_grid_without_a_pixel_size_is_flagged_with_advice(
    width: int, height: int, patch: int, mpp: float | None, says: str | None
) -> None:
    note = coarse_grid_note(width, height, patch, mpp)
    if says is None:
        assert note is None
        return
    assert note is not None and says in note and "--patch-size 32" in note
    verdict = judge_slide(
        exhausted_reason=None,
        stage_refused=False,
        failed_patches=0,
        boxes_fallback=False,
        escalated=[],
        grid_note=note,
    )
    assert verdict.flags == ["coarse_grid"] and verdict.reasons == [note] and verdict.status == "done"
