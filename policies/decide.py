"""Pure decision functions: what to do with a region after its mask was reviewed, and how a
finished slide is flagged.

This is the one place where reviewer grades become an action (``decide_review``, ``decide``),
where a failed refinement escalates (``refinement_failed``), and where a slide is called
degraded or in need of human review (``judge_slide``), so tables of cases test every branch.
Each reads nothing but its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tissue_oracle.policies.policy import ClassifyParams, ReviewParams
from tissue_oracle.tools.schemas import Action, Grades


class Decision(BaseModel):
    """An action for one region and the human-readable reason stored beside it."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reason: str
    drop_last_round: bool = False
    """The region's last Auto-context round was judged worse: its labels are not kept."""

    @property
    def needs_human_review(self) -> bool:
        """An escalated region goes to a person."""
        return self.action == "escalate"


def review_disabled() -> Decision:
    """A region the policy does not review is accepted as it is."""
    return Decision(action="accept", reason="review disabled by the policy")


DensePath = Literal["classical", "student"]
"""How one pass labels every grid patch: the classical tissue map, or a student over the slide's tiles."""


def dense_path(classify: ClassifyParams, classifier: str | None, reviewer: str | None) -> DensePath | None:
    """Whether one whole-slide pass labels the slide instead of the coarse-to-fine flow, and which.

    ``classifier`` and ``reviewer`` are the backends (``Oracle.backend``) playing those roles
    (``reviewer`` None when the policy does not review). The classical map needs the classical
    oracle to classify and review (``classify.classical_map``); the student pass needs a student
    classifier (``classify.student_map``), whoever reviews, since its regions are not reviewed.
    """
    if classify.student_map and classifier == "student":
        return "student"
    if classify.classical_map and classifier == "classical" and reviewer in (None, "classical"):
        return "classical"
    return None


_MAP_ACCEPTED: dict[DensePath, str] = {
    "classical": "classical map: not reviewed (a classical review grades it against itself)",
    "student": (
        "student map: not reviewed (classify.student_map; Auto-context can't change a student's labels)"
    ),
}


def map_accepted(path: DensePath) -> Decision:
    """A region whose labels came from a whole-slide pass (``dense_path``): accepted unreviewed.

    A classical review would grade the classical map against the same pixel rules; a student
    ignores exemplars, so a refinement round would give it the same patches and the same labels.
    """
    return Decision(action="accept", reason=_MAP_ACCEPTED[path])


def decide_review(
    grades: Grades | None, before: Grades | None, round: int, *, rules: ReviewParams, budget_ok: bool
) -> Decision:
    """What to do with a region after review number ``round`` (0: the zero-shot mask).

    With ``rules.revert_if_worse``, a refinement the reviewer judged worse than the mask before
    it (``before``: that mask's grades) is dropped and the region escalated; otherwise
    ``decide`` applies.
    """
    if round and rules.revert_if_worse and not refinement_helped(before, grades):
        why = f"Auto-context round {round} was graded worse than the mask before it; labels dropped"
        return Decision(action="escalate", reason=why, drop_last_round=True)
    return decide(
        grades,
        round,
        threshold=rules.threshold,
        max_rounds=rules.max_rounds,
        budget_ok=budget_ok,
        on_review_failure=rules.on_review_failure,
    )


def refinement_failed(round: int, why: str) -> Decision:
    """Auto-context round ``round + 1`` produced no labels (no points, no exemplars): escalate."""
    return Decision(action="escalate", reason=f"Auto-context round {round + 1} failed: {why}")


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


class SlideVerdict(BaseModel):
    """How a finished slide is reported: its status, short flags, and the reasons in words."""

    model_config = ConfigDict(frozen=True)

    status: Literal["done", "degraded"]
    flags: list[str]
    """``budget_exhausted``, ``oracle_errors``, ``boxes_fallback``, ``out_of_scope_<kind>``,
    ``needs_human_review``."""
    reasons: list[str]
    """Why the slide needs a human, or why it degraded."""


def judge_slide(
    *,
    exhausted_reason: str | None,
    stage_refused: bool,
    failed_patches: int,
    boxes_fallback: bool,
    escalated: Sequence[tuple[int, str]],
    out_of_scope: tuple[str, str] | None = None,
    grid_note: str | None = None,
) -> SlideVerdict:
    """Flag a finished slide.

    ``exhausted_reason`` is the slide ledger's (None: not exhausted); ``stage_refused`` that a
    stage was refused for budget; ``failed_patches`` kept the coarse label after oracle errors;
    ``escalated`` holds (region index, reason) of the regions escalated. A spent budget degrades
    the slide; it, oracle errors and escalated regions all ask for human review. ``out_of_scope``
    is (kind, message) for a slide the tool is not made for (fluorescence, all glass, nearly all
    tissue): flagged ``out_of_scope_<kind>`` with its message, for a human to check.
    ``grid_note`` (``coarse_grid_note``) flags ``coarse_grid`` and says why; it asks for no review.
    """
    flags: list[str] = []
    reasons: list[str] = []
    if exhausted_reason is not None or stage_refused:
        flags.append("budget_exhausted")
        reasons.append(f"budget exhausted: {exhausted_reason or 'a stage was refused'}")
    if failed_patches and "budget_exhausted" not in flags:
        flags.append("oracle_errors")
        reasons.append(f"{failed_patches} patch(es) kept the coarse label after oracle errors")
    if boxes_fallback:
        flags.append("boxes_fallback")
    reasons += [f"region {index}: {reason}" for index, reason in escalated]
    if out_of_scope is not None:
        flags.append(f"out_of_scope_{out_of_scope[0]}")
        reasons.append(out_of_scope[1])
    if grid_note is not None:
        flags.append("coarse_grid")
        reasons.append(grid_note)
    if escalated or out_of_scope or {"budget_exhausted", "oracle_errors"} & set(flags):
        flags.append("needs_human_review")
    status: Literal["done", "degraded"] = "degraded" if "budget_exhausted" in flags else "done"
    return SlideVerdict(status=status, flags=flags, reasons=reasons)


COARSE_GRID_CELLS = 16
"""A grid of fewer patches than this on an image without a pixel size may be a thumbnail's."""
THUMBNAIL_PATCH = 32
"""The patch side (pixels) suggested for a whole-slide thumbnail (the benches read them so)."""
SLIDE_PATCH_MIN = 256
"""Patch sides from this up are whole-slide patch sizes; a smaller one was chosen for the image."""


def coarse_grid_note(width: int, height: int, patch_size: int, mpp: float | None) -> str | None:
    """Advice for an image that records no pixel size and holds only a few patches, else None.

    Such an image may be a tile seen at its scan's resolution, where the grid is right, or a
    thumbnail of a whole slide (HistoQC's and histolab's examples are), where each patch is a
    large part of the slide and the map reads it too coarsely to find tissue. The tool cannot
    tell them apart, so it says both. Not said when the patch side was already made small, or when
    the image is smaller than one patch both ways (a tile: the map's ``image_too_small`` scope
    advises when it keeps nothing). An image shorter than a patch one way only is said to be
    coarse: HistoQC's IHC coverslip-edge thumbnail (1488 x 452 px) is a 1 x 3 grid.
    """
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    if mpp is not None or rows * cols >= COARSE_GRID_CELLS or patch_size < SLIDE_PATCH_MIN:
        return None
    if max(width, height) < patch_size:
        return None
    return (
        f"the grid is {rows} x {cols} patches of {patch_size} px and the image records no pixel size: "
        f"if it is a thumbnail of a whole slide, run with --patch-size {THUMBNAIL_PATCH} (a policy's "
        "classify.patch_size); if it is a tile at its scan's resolution, the grid is right"
    )
