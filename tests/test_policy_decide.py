"""``decide`` from a table of cases: every branch of accept / refine / escalate."""

from __future__ import annotations

from typing import Literal

import pytest

from tissue_oracle.policies.decide import decide, refinement_helped
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
