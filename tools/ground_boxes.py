"""Stage 1, ground_boxes: one box per tissue core or section, from the oracle's look at a thumbnail.

The oracle answers in the level-0 frame (``oracles.profiles`` converts from norm1000). This
stage tidies the answer the way the authors' code does: boxes are clipped to the slide; an answer
that is a single box covering more than ``max_box_fraction`` of the slide is rejected (a model
that can't find the cores tends to box the whole image); boxes are padded by ``pad_fraction`` of
their size and merged while the intersection over the smaller box's area is at least
``merge_fraction``. A large box among others is kept: dropping it would lose whatever tissue it
alone holds. An
empty, rejected or failed answer is asked again up to ``retries`` times (sooner given up when a
deterministic backend repeats a rejected answer); after that the whole slide becomes one box. A
budget that runs out falls back at once.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.tools.errors import BudgetExceededError, OracleError
from tissue_oracle.tools.schemas import Box, BoxesRequest, Role, Usage
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import GroundBoxesSettings


class GroundBoxesParams(GroundBoxesSettings):
    """Settings of ground_boxes (defaults: the paper / the authors' code)."""

    downsample: float = Field(default=64.0, gt=1.0)
    """Thumbnail downsample from level 0 (the policy's ``thumbnail.downsample``)."""
    stop_on_repeat: bool = True
    """Stop retrying when an answer repeats an earlier rejected one exactly: the backend is
    deterministic (temperature 0, the classical oracle) and asking again only spends calls."""
    role: Role = "oracle"
    """The role that answers."""


class GroundBoxesInput(GroundBoxesParams):
    """Settings, plus the thumbnail when the caller already has it (else it is read from the slide)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    thumbnail: np.ndarray | None = Field(default=None, repr=False, exclude=True)
    """RGB uint8 thumbnail at ``downsample`` (thumb_xy frame); None reads it from ``deps.slide``."""


class GroundBoxesOutput(BaseModel):
    """The regions every later stage works inside, in the level-0 frame."""

    boxes: list[Box]
    """Padded, merged boxes (level-0 frame); one whole-slide box after a fallback."""
    raw_boxes: list[Box] = Field(default_factory=list)
    """The accepted answer's boxes as the oracle gave them (empty after a fallback)."""
    attempts: int = 0
    """Questions asked (cache hits included)."""
    fallback: bool = False
    """True when no answer was accepted and the whole slide became one box."""
    failures: list[str] = Field(default_factory=list)
    """Why each unaccepted attempt was not accepted, in order."""
    budget_exhausted: bool = False
    """True when a budget cap stopped the questions."""
    usage: Usage = Field(default_factory=Usage)
    """What the answers cost, summed."""


# --------------------------------------------------------------------------- pure geometry


def clip_box(box: Box, width: int, height: int) -> Box | None:
    """``box`` clipped to a ``width`` x ``height`` slide (level 0); None if nothing is left."""
    x0, y0 = max(0, box.x0), max(0, box.y0)
    x1, y1 = min(width, box.x1), min(height, box.y1)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0=x0, y0=y0, x1=x1, y1=y1, label=box.label)


def pad_box(box: Box, fraction: float, width: int, height: int) -> Box:
    """``box`` grown by ``fraction`` of its size (half per side), clipped to the slide."""
    dx = math.ceil(box.width * fraction / 2)
    dy = math.ceil(box.height * fraction / 2)
    grown = Box(x0=box.x0 - dx, y0=box.y0 - dy, x1=box.x1 + dx, y1=box.y1 + dy, label=box.label)
    clipped = clip_box(grown, width, height)
    return clipped if clipped is not None else box


def overlap_of_smaller(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area (0 when disjoint)."""
    iw = min(a.x1, b.x1) - max(a.x0, b.x0)
    ih = min(a.y1, b.y1) - max(a.y0, b.y0)
    if iw <= 0 or ih <= 0:
        return 0.0
    return (iw * ih) / min(a.area, b.area)


def bounding_box(a: Box, b: Box) -> Box:
    """The smallest box holding both (keeps ``a``'s label)."""
    return Box(x0=min(a.x0, b.x0), y0=min(a.y0, b.y0), x1=max(a.x1, b.x1), y1=max(a.y1, b.y1), label=a.label)


def merge_boxes(boxes: list[Box], min_overlap: float) -> list[Box]:
    """Replace overlapping pairs by their bounding box until no pair overlaps by ``min_overlap``.

    Order is kept: a merged box takes the place of the first of its pair.
    """
    merged = list(boxes)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i], merged[j]
                if overlap_of_smaller(a, b) >= min_overlap:
                    merged[i] = bounding_box(a, b)
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


def tidy_boxes(raw: list[Box], params: GroundBoxesParams, width: int, height: int) -> tuple[list[Box], str]:
    """Clip, reject a lone oversized box, pad and merge an answer's boxes (level 0).

    Returns the boxes and an empty string, or no boxes and the reason the answer was rejected.
    """
    clipped = [b for b in (clip_box(box, width, height) for box in raw) if b is not None]
    if not clipped:
        return [], "no boxes inside the slide" if raw else "no boxes"
    if len(clipped) == 1 and clipped[0].area > params.max_box_fraction * width * height:
        return [], f"a single box covers more than {params.max_box_fraction:.0%} of the slide"
    padded = [pad_box(b, params.pad_fraction, width, height) for b in clipped]
    return merge_boxes(padded, params.merge_fraction), ""


def whole_slide_box(width: int, height: int) -> Box:
    return Box(x0=0, y0=0, x1=width, y1=height, label="whole_slide")


# --------------------------------------------------------------------------- the stage


async def ground_boxes(inp: GroundBoxesInput, deps: StageDeps) -> GroundBoxesOutput:
    """Ask for boxes on the thumbnail, tidy them, retry, and fall back to the whole slide.

    Oracle failures and budget exhaustion never raise: they show in ``failures``,
    ``fallback`` and ``budget_exhausted``.
    """
    width, height = deps.slide.dimensions
    thumb = inp.thumbnail
    if thumb is None:
        thumb = await deps.in_thread(deps.slide.thumbnail, inp.downsample)
    request = BoxesRequest(thumbnail=thumb, downsample=inp.downsample, slide_width=width, slide_height=height)
    oracle = deps.oracle(inp.role)
    first_ctx = deps.context("ground_boxes", inp.role)
    out = GroundBoxesOutput(boxes=[])
    rejected: list[list[Box]] = []
    for attempt in range(inp.retries + 1):
        # A retry must reach the model: a cached answer would only repeat the rejected one. Replay
        # keeps the cache, since it answers from nothing else.
        fresh = attempt == 0 or first_ctx.replay_only
        ctx = first_ctx if fresh else dataclasses.replace(first_ctx, use_cache=False)
        try:
            answer = await oracle.boxes(request, ctx)
        except BudgetExceededError as exc:
            out.failures.append(f"budget: {exc}")
            out.budget_exhausted = True
            break
        except OracleError as exc:
            out.attempts += 1
            out.failures.append(f"oracle error: {exc}")
            continue
        out.attempts += 1
        out.usage = out.usage + answer.usage
        boxes, reason = tidy_boxes(answer.boxes, inp, width, height)
        if boxes:
            out.boxes, out.raw_boxes = boxes, list(answer.boxes)
            return out
        out.failures.append(reason)
        if inp.stop_on_repeat and answer.boxes in rejected:
            out.failures.append(f"attempt {out.attempts} repeated a rejected answer; not asking again")
            break
        rejected.append(list(answer.boxes))
    out.boxes, out.fallback = [whole_slide_box(width, height)], True
    return out
