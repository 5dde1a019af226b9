"""The policy's guard around an LLM planner: what it may see and call, and when it loses the slide.

The planner drives the stage tools (``tools.toolset``) through :class:`GuardedToolset`, which

- shows it only the tools the policy allows (``planner.allowed_tools``), each with only the
  choices that are the planner's to make (which region, whether few-shot): every stage setting
  is pinned to the policy's value, so a planner can't buy a bigger crop or a smaller gate;
- runs each call through the slide's ``StageDeps``, whose oracles sit behind the budget ledger;
- keeps :class:`PlanProgress`, what the stages have done so far.

:class:`PlanGuard` reads every model response before its tool calls run and every request
before it is sent, and returns a :class:`GuardOverride` when the planner must hand the slide
back to the deterministic policy:

    text_only       answered with text and no tool call
    stopped_early   called ``finish_slide`` before the mandatory stages ran
    forbidden_tool  called a stage tool the policy does not allow
    unknown_tool    called a tool that does not exist
    loop            made the same call (name and arguments) ``loop_repeats`` times in a row
    turn_budget     wanted more than ``max_turns`` model requests
    token_budget    used more than ``max_tokens`` tokens
    slide_budget    the slide's budget ledger has no call left for another planner request
    model_error     the model failed (transport, protocol) or broke the tool protocol
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic_ai import RunContext
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool

from tissue_oracle.policies.policy import Policy, stage_settings
from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.ground_boxes import GroundBoxesOutput
from tissue_oracle.tools.schemas import Grades
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.stage_settings import (
    ClassifyPatchesSettings,
    CleanSettings,
    ClusterColoursSettings,
    GroundBoxesSettings,
    PointGroundSettings,
    RerankExemplarsSettings,
    ReviewMaskSettings,
)
from tissue_oracle.tools.toolset import STAGE_TOOLS

OverrideKind = Literal[
    "text_only",
    "stopped_early",
    "forbidden_tool",
    "unknown_tool",
    "loop",
    "turn_budget",
    "token_budget",
    "slide_budget",
    "model_error",
]

#: The planner's output tool: it ends the plan with a verdict per region.
FINISH_TOOL = "finish_slide"
#: Every stage tool name, allowed or not.
STAGE_TOOL_NAMES: tuple[str, ...] = tuple(t.__name__ for t in STAGE_TOOLS)
#: Argument fields that are the planner's choice; every other field is pinned to the policy.
CHOICE_FIELDS: frozenset[str] = frozenset({"region", "regions", "few_shot"})


def mandatory_stages(policy: Policy) -> tuple[str, ...]:
    """Stages every slide gets, whoever plans it: boxes, coarse mask, zero-shot labels, review, clean."""
    stages = ["ground_boxes", "cluster_colours", "classify_patches", "clean"]
    if policy.review.enabled:
        stages.insert(3, "review_mask")
    return tuple(stages)


def check_planner_policy(policy: Policy) -> None:
    """A policy whose planner could never finish a slide is a configuration error, not a fallback."""
    missing = [s for s in mandatory_stages(policy) if s not in policy.planner.allowed_tools]
    if missing:
        raise ConfigError(
            f"planner.allowed_tools lacks the mandatory stage(s) {missing}; a planner could never finish "
            "a slide. Add them to planner.allowed_tools, or drop roles.planner."
        )


def pinned_settings(policy: Policy) -> dict[str, dict[str, Any]]:
    """Per tool, the stage settings the policy fixes (the same values the fixed controller uses):
    each tool's own settings model as its policy section holds it, plus what the policy supplies
    beside it (the thumbnail's downsample, the classification's patch sizes, the review crop)."""
    ds, crop = policy.thumbnail.downsample, policy.review.crop_size
    sizes = {"patch_size": policy.classify.patch_size, "send_size": policy.classify.send_size}
    return {
        "ground_boxes": {"downsample": ds, **stage_settings(policy.ground, GroundBoxesSettings)},
        "cluster_colours": {"downsample": ds, **stage_settings(policy.cluster, ClusterColoursSettings)},
        "classify_patches": stage_settings(policy.classify, ClassifyPatchesSettings),
        "point_ground": {"crop_size": crop, **stage_settings(policy.autocontext, PointGroundSettings)},
        "rerank_exemplars": {**stage_settings(policy.autocontext, RerankExemplarsSettings), **sizes},
        "review_mask": stage_settings(policy.review, ReviewMaskSettings),
        "clean": stage_settings(policy.clean, CleanSettings),
    }


# --------------------------------------------------------------------------- progress


@dataclass(kw_only=True)
class PlanProgress:
    """What the planner's tool calls have done to the slide so far."""

    done: list[str] = field(default_factory=list)
    """Stage tools that returned, in order."""
    ground: GroundBoxesOutput | None = None
    """The last ground_boxes answer."""
    zero_shot: ClassifyPatchesOutput | None = None
    """The labels of the last region-less (zero-shot) classify_patches call."""
    grades: dict[int, list[Grades | None]] = field(default_factory=dict)
    """Region index -> grades of each review, in order (None: the review failed)."""
    refinements: dict[int, int] = field(default_factory=dict)
    """Region index -> few-shot classify_patches calls on it."""
    few_shot_sent: dict[int, list[int]] = field(default_factory=dict)
    """Region index -> patches sent by each of its few-shot classify_patches calls, in order."""
    cleaned_after_labels: bool = False
    """``clean`` ran after the last classify_patches call."""

    def note(self, name: str, args: Any, ctx: RunContext[StageDeps], result: Any) -> None:
        """Update from one tool call that returned ``result``."""
        self.done.append(name)
        ws = ctx.deps.workspace
        if name == "ground_boxes":
            self.ground, self.zero_shot, self.grades, self.refinements = result, None, {}, {}
            self.few_shot_sent = {}
            self.cleaned_after_labels = False
        elif name == "classify_patches":
            if getattr(args, "region", None) is None:
                self.zero_shot = ws.labels
            elif getattr(args, "few_shot", False):
                self.refinements[args.region] = self.refinements.get(args.region, 0) + 1
                self.few_shot_sent.setdefault(args.region, []).append(result.sent)
            self.cleaned_after_labels = False
        elif name == "clean":
            self.cleaned_after_labels = True
        elif name == "review_mask":
            for review in result.reviews:
                self.grades.setdefault(review.index, []).append(review.grades)

    def missing(self, mandatory: tuple[str, ...], regions: int) -> list[str]:
        """Mandatory work not yet done, in words (empty when the planner may finish)."""
        gaps = [s for s in mandatory if s not in self.done]
        if "classify_patches" in mandatory and "classify_patches" in self.done and self.zero_shot is None:
            gaps.append("classify_patches over every region (zero-shot)")
        if "review_mask" in mandatory and "review_mask" in self.done:
            unreviewed = [i for i in range(regions) if i not in self.grades]
            if unreviewed:
                gaps.append(f"review_mask of region(s) {unreviewed}")
        if "clean" in self.done and not self.cleaned_after_labels:
            gaps.append("clean after the last classify_patches")
        return gaps


# --------------------------------------------------------------------------- the toolset


def _choices_only(schema: dict[str, Any]) -> dict[str, Any]:
    props = {k: v for k, v in schema.get("properties", {}).items() if k in CHOICE_FIELDS}
    required = [r for r in schema.get("required", []) if r in props]
    out = {**schema, "properties": props, "required": required}
    if not required:
        out.pop("required")
    return out


@dataclass
class GuardedToolset(WrapperToolset[StageDeps]):
    """The stage toolset as the policy lets the planner see and use it (see the module docstring)."""

    allowed: frozenset[str] = frozenset()
    pinned: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: PlanProgress = field(default_factory=PlanProgress)
    timer: Any = None
    """Optional ``timed(stage)`` context-manager factory, so planner calls show in stage times."""

    @classmethod
    def for_policy(
        cls, wrapped: AbstractToolset[StageDeps], policy: Policy, *, timer: Any = None
    ) -> GuardedToolset:
        return cls(
            wrapped=wrapped,
            allowed=frozenset(policy.planner.allowed_tools),
            pinned=pinned_settings(policy),
            timer=timer,
        )

    async def get_tools(self, ctx: RunContext[StageDeps]) -> dict[str, ToolsetTool[StageDeps]]:
        tools = await self.wrapped.get_tools(ctx)
        shown: dict[str, ToolsetTool[StageDeps]] = {}
        for name, tool in tools.items():
            if name not in self.allowed:
                continue
            schema = _choices_only(tool.tool_def.parameters_json_schema)
            shown[name] = replace(tool, tool_def=replace(tool.tool_def, parameters_json_schema=schema))
        return shown

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[StageDeps], tool: ToolsetTool[StageDeps]
    ) -> Any:
        # Stage tools take one input model, ``args``; the policy's settings replace whatever it holds.
        args = tool_args["args"].model_copy(update=self.pinned.get(name, {}))
        if self.timer is None:
            result = await self.wrapped.call_tool(name, {"args": args}, ctx, tool)
        else:
            with self.timer(name):
                result = await self.wrapped.call_tool(name, {"args": args}, ctx, tool)
        self.progress.note(name, args, ctx, result)
        return result


# --------------------------------------------------------------------------- the guard


@dataclass(kw_only=True, frozen=True)
class GuardOverride:
    """Why the policy took the slide back from the planner, and when."""

    kind: OverrideKind
    turn: int
    """The planner turn (1-based model request) at which the guard stepped in."""
    detail: str


def tool_calls(response: ModelResponse) -> list[ToolCallPart]:
    return [p for p in response.parts if isinstance(p, ToolCallPart)]


def call_key(call: ToolCallPart) -> str:
    """A call's identity for loop detection: its name and canonical JSON arguments."""
    try:
        args = call.args_as_dict()
    except Exception:  # malformed arguments still identify the call by their text
        args = {"raw": str(call.args)}
    return f"{call.tool_name}:{json.dumps(args, sort_keys=True, default=str)}"


@dataclass(kw_only=True)
class PlanGuard:
    """Checks each planner turn against the policy; see the module docstring for the cases."""

    policy: Policy
    progress: PlanProgress
    regions: Any
    """A callable returning how many regions the slide has now (0 before ground_boxes)."""
    turns: int = 0
    tokens: int = 0
    recent: list[str] = field(default_factory=list)

    @property
    def mandatory(self) -> tuple[str, ...]:
        return mandatory_stages(self.policy)

    def before_request(self, *, slide_budget_ok: bool) -> GuardOverride | None:
        """Called before each model request; counts the turn."""
        self.turns += 1
        limit = self.policy.planner.max_turns
        if self.turns > limit:
            return GuardOverride(
                kind="turn_budget", turn=self.turns, detail=f"more than {limit} planner turns"
            )
        if not slide_budget_ok:
            return GuardOverride(
                kind="slide_budget",
                turn=self.turns,
                detail="the slide's budget has no call left for the planner",
            )
        return None

    def after_response(self, response: ModelResponse, tokens: int) -> GuardOverride | None:
        """Called with each model response (and its tokens) before any of its tool calls run."""
        self.tokens += tokens
        p = self.policy.planner
        if p.max_tokens is not None and self.tokens > p.max_tokens:
            return self._stop("token_budget", f"{self.tokens} planner tokens > {p.max_tokens}")
        calls = tool_calls(response)
        if not calls:
            text = " ".join(str(getattr(part, "content", "")) for part in response.parts).strip()
            return self._stop("text_only", f"answered with text and no tool call: {text[:200]!r}")
        for call in calls:
            name = call.tool_name
            if name == FINISH_TOOL:
                gaps = self.progress.missing(self.mandatory, self.regions())
                if gaps:
                    return self._stop("stopped_early", f"finish_slide before: {'; '.join(gaps)}")
            elif name in STAGE_TOOL_NAMES and name not in p.allowed_tools:
                return self._stop(
                    "forbidden_tool", f"{name!r} is not in planner.allowed_tools {p.allowed_tools}"
                )
            elif name not in STAGE_TOOL_NAMES:
                return self._stop("unknown_tool", f"no tool named {name!r}")
            self.recent.append(call_key(call))
            if len(self.recent) >= p.loop_repeats and len(set(self.recent[-p.loop_repeats :])) == 1:
                return self._stop("loop", f"{name!r} with the same arguments {p.loop_repeats} times in a row")
        return None

    def _stop(self, kind: OverrideKind, detail: str) -> GuardOverride:
        return GuardOverride(kind=kind, turn=self.turns, detail=detail)
