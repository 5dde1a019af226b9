"""The stage tools as a pydantic-ai ``FunctionToolset``, so an LLM planner can drive them.

One tool per stage, named after it. Each takes one JSON input model (the stage's settings plus,
where needed, region indices) and returns one JSON output model; the docstrings below are the
descriptions the planner reads. Masks and images can't travel through a planner's JSON, so the
tools keep them in ``deps.workspace`` and name regions by their index in the ``ground_boxes``
answer. A call that can't be honoured (a stage run too early, a region that doesn't exist)
raises ``ModelRetry`` naming what is valid. Tools run one at a time (``sequential``), because
each builds on the workspace the previous one left.

The fixed controller does not use this module: it calls the stage functions directly.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_ai import ModelRetry, RunContext
from pydantic_ai.toolsets import FunctionToolset

from tissue_oracle.tools import classify_patches as classify_stage
from tissue_oracle.tools import clean as clean_stage
from tissue_oracle.tools import cluster_colours as cluster_stage
from tissue_oracle.tools import ground_boxes as ground_stage
from tissue_oracle.tools import point_ground as point_stage
from tissue_oracle.tools import rerank_exemplars as rerank_stage
from tissue_oracle.tools import review_mask as review_stage
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.schemas import Box, Usage
from tissue_oracle.tools.stage_deps import StageDeps, Workspace

# --------------------------------------------------------------------------- tool arguments


class ClassifyPatchesArgs(classify_stage.ClassifyPatchesParams):
    """classify_patches settings, the region to (re)classify, and whether to use its exemplars."""

    region: int | None = None
    """Index of a ground_boxes region; None classifies every region at once."""
    few_shot: bool = False
    """Prepend the exemplars rerank_exemplars chose for ``region`` (needs a region)."""


class PointGroundArgs(point_stage.PointGroundParams):
    """point_ground settings and the region to point in."""

    region: int = Field(ge=0)
    """Index of a ground_boxes region."""


class RerankExemplarsArgs(rerank_stage.RerankExemplarsParams):
    """rerank_exemplars settings and the region whose points to use."""

    region: int = Field(ge=0)
    """Index of a region point_ground has answered for."""


class ReviewMaskArgs(review_stage.ReviewMaskParams):
    """review_mask settings and the regions to review."""

    regions: list[int] | None = None
    """Indices of ground_boxes regions; None reviews them all."""


# --------------------------------------------------------------------------- tool results


class RegionCoverage(BaseModel):
    index: int
    box: Box
    coverage: float
    """Fraction of the box the coarse mask calls tissue."""


class ClusterColoursSummary(BaseModel):
    """What cluster_colours found: the coarse mask's coverage, overall and per region."""

    coverage: float
    """Fraction of the thumbnail the coarse mask calls tissue."""
    regions: list[RegionCoverage]


class RerankExemplarsSummary(BaseModel):
    """The exemplars chosen for one region (images stay in the workspace)."""

    region: int
    exemplars: list[rerank_stage.ExemplarInfo]
    candidates: int
    dropped_not_sharp: int
    failed: bool
    budget_exhausted: bool
    error: str | None
    usage: Usage


class CleanSummary(BaseModel):
    """What clean changed on the patch grid."""

    removed_components: int
    removed_cells: int
    filled_holes: int
    filled_cells: int
    tissue_cells: int
    """Tissue patches after cleaning."""


# --------------------------------------------------------------------------- checks


def _workspace(ctx: RunContext[StageDeps]) -> Workspace:
    return ctx.deps.workspace


def _region(ws: Workspace, index: int) -> Box:
    if not ws.boxes:
        raise ModelRetry("no regions yet: call 'ground_boxes' first")
    if not 0 <= index < len(ws.boxes):
        raise ModelRetry(f"region {index!r} does not exist; valid regions: {list(range(len(ws.boxes)))}")
    return ws.boxes[index]


def _config(exc: ConfigError) -> ModelRetry:
    return ModelRetry(f"cannot run this stage as asked: {exc}")


# --------------------------------------------------------------------------- tools


async def ground_boxes(
    ctx: RunContext[StageDeps], args: ground_stage.GroundBoxesParams
) -> ground_stage.GroundBoxesOutput:
    """Find one box per tissue section on the slide thumbnail (level-0 pixel boxes).

    Boxes are padded and merged; oversized answers are retried; the whole slide is the fallback.
    Later tools name these regions by their index in ``boxes``. Calling it again replaces them.
    """
    try:
        out = await ground_stage.ground_boxes(ground_stage.GroundBoxesInput(**args.model_dump()), ctx.deps)
    except ConfigError as exc:
        raise _config(exc) from exc
    ctx.deps.workspace = Workspace(boxes=list(out.boxes))
    return out


async def cluster_colours(
    ctx: RunContext[StageDeps], args: cluster_stage.ClusterColoursParams
) -> ClusterColoursSummary:
    """Build the coarse tissue mask inside the regions by two-pass colour K-means (no oracle calls)."""
    ws = _workspace(ctx)
    if not ws.boxes:
        raise ModelRetry("no regions yet: call 'ground_boxes' first")
    inp = cluster_stage.ClusterColoursInput(**args.model_dump(), boxes=ws.boxes)
    ws.coarse = await ctx.deps.in_thread(cluster_stage.cluster_colours, inp, ctx.deps)
    regions = [
        RegionCoverage(index=i, box=bm.box, coverage=round(bm.coverage, 4))
        for i, bm in enumerate(ws.coarse.box_masks)
    ]
    return ClusterColoursSummary(coverage=round(ws.coarse.coverage, 4), regions=regions)


async def classify_patches(
    ctx: RunContext[StageDeps], args: ClassifyPatchesArgs
) -> classify_stage.ClassifyPatchesSummary:
    """Label grid patches tissue/background with focus, asking the oracle only where the coarse mask is.

    Without a region, every region is classified zero-shot. With a region and ``few_shot``, that
    region is classified again with its exemplars, and its labels replace the earlier ones.
    """
    ws = _workspace(ctx)
    if ws.coarse is None:
        raise ModelRetry("no coarse mask yet: call 'cluster_colours' first")
    region = None if args.region is None else _region(ws, args.region)
    exemplars = []
    if args.few_shot:
        chosen = ws.exemplars.get(args.region) if args.region is not None else None
        if chosen is None or not chosen.exemplars:
            ready = sorted(i for i, e in ws.exemplars.items() if e.exemplars)
            raise ModelRetry(
                f"few_shot needs exemplars for region {args.region!r}; regions with exemplars: {ready}"
            )
        exemplars = chosen.exemplars
    params = args.model_dump(exclude={"region", "few_shot"})
    inp = classify_stage.ClassifyPatchesInput(
        **params,
        coarse_mask=ws.coarse.mask,
        mask_downsample=ws.coarse.downsample,
        region=region,
        exemplars=exemplars,
    )
    try:
        out = await classify_stage.classify_patches(inp, ctx.deps)
    except ConfigError as exc:
        raise _config(exc) from exc
    same_grid = ws.labels is not None and ws.labels.grid == out.grid
    ws.labels = classify_stage.merge_labels(ws.labels, out) if ws.labels is not None and same_grid else out
    ws.cleaned = None
    return out.summary()


async def point_ground(ctx: RunContext[StageDeps], args: PointGroundArgs) -> point_stage.PointGroundOutput:
    """Ask the oracle for tissue and background points inside one region (level-0 pixels)."""
    region = _region(_workspace(ctx), args.region)
    inp = point_stage.PointGroundInput(**args.model_dump(exclude={"region"}), region=region)
    try:
        out = await point_stage.point_ground(inp, ctx.deps)
    except ConfigError as exc:
        raise _config(exc) from exc
    ctx.deps.workspace.points[args.region] = out
    return out


async def rerank_exemplars(ctx: RunContext[StageDeps], args: RerankExemplarsArgs) -> RerankExemplarsSummary:
    """Keep the best patch per class around a region's points as few-shot exemplars (tissue must be sharp)."""
    ws = _workspace(ctx)
    _region(ws, args.region)
    points = ws.points.get(args.region)
    if points is None:
        have = sorted(ws.points)
        raise ModelRetry(
            f"no points for region {args.region!r}: call 'point_ground' first; regions with points: {have}"
        )
    inp = rerank_stage.RerankExemplarsInput(**args.model_dump(exclude={"region"}), points=points.points)
    try:
        out = await rerank_stage.rerank_exemplars(inp, ctx.deps)
    except ConfigError as exc:
        raise _config(exc) from exc
    ws.exemplars[args.region] = out
    return RerankExemplarsSummary(
        region=args.region,
        exemplars=out.info(),
        candidates=out.candidates,
        dropped_not_sharp=out.dropped_not_sharp,
        failed=out.failed,
        budget_exhausted=out.budget_exhausted,
        error=out.error,
        usage=out.usage,
    )


async def review_mask(ctx: RunContext[StageDeps], args: ReviewMaskArgs) -> review_stage.ReviewMaskOutput:
    """Have the reviewer grade the current mask per region: precision and recall, 1 (>=95%) to 4 (<50%)."""
    ws = _workspace(ctx)
    if ws.labels is None:
        raise ModelRetry("no mask yet: call 'classify_patches' first")
    indices = list(range(len(ws.boxes))) if args.regions is None else args.regions
    regions = [_region(ws, i) for i in indices]
    tissue = ws.cleaned.tissue if ws.cleaned is not None else ws.labels.tissue
    inp = review_stage.ReviewMaskInput(
        **args.model_dump(exclude={"regions"}), regions=regions, grid=ws.labels.grid, tissue=tissue
    )
    try:
        out = await review_stage.review_mask(inp, ctx.deps)
    except ConfigError as exc:
        raise _config(exc) from exc
    # Report reviews under the planner's region indices, not positions in this call.
    out.reviews = [r.model_copy(update={"index": i}) for i, r in zip(indices, out.reviews, strict=True)]
    ws.review = out
    return out


async def clean(ctx: RunContext[StageDeps], args: clean_stage.CleanParams) -> CleanSummary:
    """Tidy the patch mask: drop small tissue specks and fill small holes (4-connectivity by default)."""
    ws = _workspace(ctx)
    if ws.labels is None:
        raise ModelRetry("no mask yet: call 'classify_patches' first")
    out = clean_stage.clean(clean_stage.CleanInput(**args.model_dump(), tissue=ws.labels.tissue))
    ws.cleaned = out
    return CleanSummary(
        removed_components=out.removed_components,
        removed_cells=out.removed_cells,
        filled_holes=out.filled_holes,
        filled_cells=out.filled_cells,
        tissue_cells=int(out.tissue.sum()),
    )


STAGE_TOOLS = (
    ground_boxes,
    cluster_colours,
    classify_patches,
    point_ground,
    rerank_exemplars,
    review_mask,
    clean,
)
"""The tool functions, in pipeline order."""


def stage_toolset(*, max_retries: int = 2) -> FunctionToolset[StageDeps]:
    """A fresh toolset of the seven stage tools over ``StageDeps``, run one call at a time."""
    return FunctionToolset[StageDeps](list(STAGE_TOOLS), max_retries=max_retries, sequential=True)
