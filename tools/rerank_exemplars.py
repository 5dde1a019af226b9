"""Stage 5b, rerank_exemplars: keep the best ``top_k`` exemplars per class (Auto-context).

Each point becomes the ``patch_size`` level-0 patch centred on it, shifted to lie inside the
slide; duplicates collapse. The oracle sees the candidates side by side and picks the best per
class. It is asked for ``top_k + spare`` per class, so that tissue picks graded anything but
``sharp`` can be dropped (tissue exemplars must be in focus) and ``top_k`` still remain.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.tools.errors import BudgetExceededError, OracleError, SlideError
from tissue_oracle.tools.schemas import Exemplar, Label, PatchRef, Point, RerankRequest, Role, Usage
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import RerankExemplarsSettings


class RerankExemplarsParams(RerankExemplarsSettings):
    """Settings of rerank_exemplars (defaults: the paper, K=1); patch and send sizes are the
    classification's (the policy's ``classify``)."""

    spare: int = Field(default=1, ge=0, le=16)
    """Extra picks asked for per class, to replace tissue picks dropped as not sharp."""
    patch_size: int = Field(default=512, ge=32, le=8192)
    """Candidate patch side, level-0 pixels (the classification patch size)."""
    send_size: int = Field(default=512, ge=32, le=4096)
    """Side in pixels of each candidate image, also sent few-shot (capped at ``patch_size``)."""
    require_sharp_tissue: bool = True
    """Drop tissue picks the oracle graded ``mild_blur`` or ``out_of_focus``."""
    role: Role = "classifier"
    """The role that answers."""


class RerankExemplarsInput(RerankExemplarsParams):
    """Settings and the points from point_ground."""

    points: list[Point]
    """Level-0 tissue and background points."""


class ExemplarInfo(BaseModel):
    """An exemplar without its image (what a planner sees)."""

    ref: PatchRef
    label: Label
    focus: str | None
    score: float | None


class RerankExemplarsOutput(BaseModel):
    """The exemplars for few-shot classification, best first within each class."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    exemplars: list[Exemplar] = Field(default_factory=list)
    """At most ``top_k`` per class; images are RGB uint8 at ``send_size``."""
    candidates: int = 0
    """Distinct candidate patches shown to the oracle."""
    dropped_not_sharp: int = 0
    """Tissue picks dropped for focus."""
    failed: bool = False
    budget_exhausted: bool = False
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)

    def count(self, label: Label) -> int:
        return sum(1 for e in self.exemplars if e.label == label)

    def info(self) -> list[ExemplarInfo]:
        return [ExemplarInfo(ref=e.ref, label=e.label, focus=e.focus, score=e.score) for e in self.exemplars]


# --------------------------------------------------------------------------- pure parts


def patch_at(point: Point, patch_size: int, slide_width: int, slide_height: int) -> PatchRef:
    """The level-0 patch centred on ``point``, shifted to lie inside the slide (top-left at 0 if larger)."""
    x = min(max(0, point.x - patch_size // 2), max(0, slide_width - patch_size))
    y = min(max(0, point.y - patch_size // 2), max(0, slide_height - patch_size))
    return PatchRef(x=x, y=y, size=patch_size)


def candidates_from_points(
    points: list[Point], patch_size: int, slide_width: int, slide_height: int
) -> list[tuple[PatchRef, Label]]:
    """Distinct (patch, label) candidates, in point order."""
    seen: dict[tuple[int, int, str], tuple[PatchRef, Label]] = {}
    for point in points:
        ref = patch_at(point, patch_size, slide_width, slide_height)
        seen.setdefault((ref.x, ref.y, point.label), (ref, point.label))
    return list(seen.values())


def select_exemplars(
    picks: list[Exemplar], top_k: int, require_sharp_tissue: bool
) -> tuple[list[Exemplar], int]:
    """The first ``top_k`` picks per class (in answer order) and how many tissue picks failed focus.

    A tissue pick with no focus grade is kept: the oracle did not say it is blurred.
    """
    kept: list[Exemplar] = []
    dropped = 0
    for label in ("tissue", "background"):
        taken = 0
        for ex in picks:
            if ex.label != label or taken >= top_k:
                continue
            if label == "tissue" and require_sharp_tissue and ex.focus not in (None, "sharp"):
                dropped += 1
                continue
            kept.append(ex)
            taken += 1
    return kept, dropped


# --------------------------------------------------------------------------- the stage


async def rerank_exemplars(inp: RerankExemplarsInput, deps: StageDeps) -> RerankExemplarsOutput:
    """Read candidates at the points, ask the oracle to pick, keep ``top_k`` per class."""
    width, height = deps.slide.dimensions
    found = candidates_from_points(inp.points, inp.patch_size, width, height)
    out = RerankExemplarsOutput(candidates=len(found))
    if not found:
        out.error = "no points to take candidates from"
        return out
    refs = [ref for ref, _ in found]
    try:
        images = await deps.in_thread(
            lambda: [deps.slide.read_patch(ref, min(inp.send_size, inp.patch_size)) for ref in refs]
        )
        request = RerankRequest(
            candidates=refs,
            candidate_labels=[label for _, label in found],
            images=images,
            top_k=inp.top_k + inp.spare,
        )
        async with deps.slots:
            answer = await deps.oracle(inp.role).rerank(request, deps.context("rerank_exemplars", inp.role))
    except BudgetExceededError as exc:
        out.failed, out.budget_exhausted, out.error = True, True, f"budget: {exc}"
        return out
    except (OracleError, SlideError) as exc:
        out.failed, out.error = True, f"{type(exc).__name__}: {exc}"
        return out
    out.exemplars, out.dropped_not_sharp = select_exemplars(
        answer.exemplars, inp.top_k, inp.require_sharp_tissue
    )
    out.usage = answer.usage
    return out
