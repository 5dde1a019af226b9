"""Pure decision functions: what to do with a region after its mask was reviewed.

``decide`` is the one place where reviewer grades become an action, so a table of cases tests
every branch. It reads nothing but its arguments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tissue_oracle.tools.schemas import Action, Grades


class Decision(BaseModel):
    """An action for one region and the human-readable reason stored beside it."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reason: str


def decide(
    grades: Grades | None,
    round: int,
    *,
    threshold: int,
    max_rounds: int,
    budget_ok: bool,
    on_review_failure: Literal["escalate", "accept"] = "escalate",
) -> Decision:
    """Accept, refine (Auto-context) or escalate (human review) one region.

    ``round`` counts Auto-context rounds already run on the region (0 after zero-shot).
    A worst grade above ``threshold`` (grades are 1 best to 4 worst) asks for refinement while
    ``round < max_rounds`` and the budget allows; otherwise the region is escalated with the
    reason. ``grades=None`` means the review itself failed.
    """
    if grades is None:
        if not budget_ok and on_review_failure == "escalate":
            return Decision(action="escalate", reason="no review: budget exhausted")
        if on_review_failure == "accept":
            return Decision(action="accept", reason="review failed; policy accepts unreviewed regions")
        return Decision(action="escalate", reason="review failed; no grades to judge the mask by")
    seen = f"precision {grades.precision}, recall {grades.recall}"
    if grades.worst <= threshold:
        return Decision(action="accept", reason=f"{seen} within threshold {threshold}")
    if not budget_ok:
        return Decision(action="escalate", reason=f"{seen} worse than {threshold}; budget exhausted")
    if round >= max_rounds:
        return Decision(
            action="escalate",
            reason=f"{seen} worse than {threshold} after {round} of {max_rounds} Auto-context round(s)",
        )
    return Decision(action="refine", reason=f"{seen} worse than {threshold}; Auto-context round {round + 1}")


def refinement_helped(before: Grades | None, after: Grades | None) -> bool:
    """Keep an Auto-context round's labels unless the reviewer judged them worse than before.

    When both reviews carry percentage estimates, they decide: the round is kept unless its
    estimated F1 (harmonic mean of precision and recall %) fell. Grades are too coarse for this:
    recall rising from 0% to 34% stays grade 4, and a precision slip from 100% to 88% would then
    drop the round. Without percentages, worse means a worse worst grade, or the same worst grade
    with a worse sum. Without grades on either side there is no evidence against the refinement,
    so it is kept.
    """
    if before is None or after is None:
        return True
    before_f1, after_f1 = _estimated_f1(before), _estimated_f1(after)
    if before_f1 is not None and after_f1 is not None:
        return after_f1 >= before_f1
    return (after.worst, after.precision + after.recall) <= (before.worst, before.precision + before.recall)


def _estimated_f1(grades: Grades) -> float | None:
    """The reviewer's precision and recall estimates combined as F1 (0-100), when it gave both."""
    p, r = grades.precision_pct, grades.recall_pct
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)
