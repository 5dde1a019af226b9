"""Stage 5a, point_ground: tissue and background points on one region's crop (Auto-context).

The region is read at a downsample that makes its long side about ``crop_size`` pixels (never
upsampled), and the oracle answers points in the level-0 frame. Points outside the region are
clamped onto its edge, because the rest of Auto-context reads patches around them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tissue_oracle.tools.errors import BudgetExceededError, OracleError
from tissue_oracle.tools.schemas import Box, Point, PointsRequest, Role, Usage
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import PointGroundSettings


class PointGroundParams(PointGroundSettings):
    """Settings of point_ground."""

    crop_size: int = Field(default=1024, ge=64, le=8192)
    """Long side in pixels of the crop the oracle sees (the policy's ``review.crop_size``)."""
    role: Role = "oracle"
    """The role that answers."""


class PointGroundInput(PointGroundParams):
    """Settings and the region."""

    region: Box
    """The region to point in, level-0 frame."""


class PointGroundOutput(BaseModel):
    """Points in the level-0 frame, inside the region."""

    region: Box
    points: list[Point] = Field(default_factory=list)
    """Level-0 points, each inside ``region``."""
    crop_downsample: float = 1.0
    """Level-0 pixels per crop pixel."""
    failed: bool = False
    """True when the oracle could not answer (``points`` is then empty)."""
    budget_exhausted: bool = False
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)

    def count(self, label: str) -> int:
        return sum(1 for p in self.points if p.label == label)


def crop_downsample(region: Box, crop_size: int) -> float:
    """Level-0 pixels per crop pixel so the region's long side is ``crop_size`` (at least 1)."""
    return max(1.0, max(region.width, region.height) / crop_size)


def clamp_point(point: Point, region: Box) -> Point:
    """``point`` moved onto the nearest pixel of ``region`` (level 0)."""
    x = min(max(point.x, region.x0), region.x1 - 1)
    y = min(max(point.y, region.y0), region.y1 - 1)
    return point if (x, y) == (point.x, point.y) else Point(x=x, y=y, label=point.label)


async def point_ground(inp: PointGroundInput, deps: StageDeps) -> PointGroundOutput:
    """Ask for tissue and background points on the region's crop; failures leave no points."""
    ds = crop_downsample(inp.region, inp.crop_size)
    out = PointGroundOutput(region=inp.region, crop_downsample=ds)
    crop = await deps.in_thread(deps.slide.read_box, inp.region, ds)
    request = PointsRequest(crop=crop, region=inp.region, max_points_per_class=inp.points_per_class)
    try:
        async with deps.slots:
            answer = await deps.oracle(inp.role).points(request, deps.context("point_ground", inp.role))
    except BudgetExceededError as exc:
        out.failed, out.budget_exhausted, out.error = True, True, f"budget: {exc}"
        return out
    except OracleError as exc:
        out.failed, out.error = True, f"{type(exc).__name__}: {exc}"
        return out
    out.points = [clamp_point(p, inp.region) for p in answer.points]
    out.usage = answer.usage
    return out
