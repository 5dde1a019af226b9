"""What the planner decided, as data: its verdicts per region and the report ``summary.json`` carries.

Kept apart from ``agent.planner`` so the summary and the controller can name these types without
importing pydantic-ai.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class RegionVerdict(BaseModel):
    """The planner's last word on one region."""

    region: int = Field(ge=0)
    """Index of a ground_boxes region."""
    action: Literal["accept", "escalate"]
    """accept the region's mask, or escalate it to a human."""
    reason: str = ""
    """Why, in a few words (grades, rounds run, budget)."""


class SlideVerdict(BaseModel):
    """Finish the slide: a verdict for every region."""

    regions: list[RegionVerdict]


class PlannerReport(BaseModel):
    """``summary.json``'s ``planner``: what the planner decided and where the guard overrode it."""

    spec: str
    finished_by: Literal["planner", "policy"]
    """Who finished the slide: the planner (``finish_slide``) or the deterministic policy."""
    turns: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    decisions: list[str]
    """Per turn, the tool calls the planner chose (or its text), in order."""
    verdicts: list[RegionVerdict] = Field(default_factory=list)
    """The planner's verdicts (empty when the guard took over first)."""
    override: dict[str, Any] | None = None
    """``kind``, ``turn`` and ``detail`` of the guard's override, or None."""
    kept: str = ""
    """What of the planner's work the slide kept."""
