"""A scripted planner that imitates the deterministic policy, as a pydantic-ai ``FunctionModel``.

No LLM: it reads each tool result and makes the call the fixed controller would make next,
deciding regions with the same pure rule (``policies.decide``). Driving the live planner with
it checks the planner's plumbing (guard, pinned settings, final mask) against the deterministic
controller: both should produce the same mask. Its token counts are pydantic-ai's estimate for
a ``FunctionModel`` (message length), not a real model's bill.

Regions are refined one after another (depth first, in index order), the order in which the
fixed controller merges their few-shot labels. What it can't imitate: the controller reviews a
refined region on the zero-shot mask plus only that region's own few-shot labels, and drops a
round graded worse than the one before (``review.revert_if_worse``); the stage tools review the
slide's current mask and have no undo. Where boxes overlap, or a round is graded worse, masks
can differ, and the comparison says so.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tissue_oracle.policies.decide import Decision, decide, refinement_helped
from tissue_oracle.policies.policy import Policy
from tissue_oracle.tools.schemas import Grades

Call = tuple[str, dict[str, Any]]
#: What the planner saw so far, in order: ("call", tool, None) for each call it made, and
#: ("result", tool, result) for each successful tool result.
Event = tuple[str, str, dict[str, Any] | None]


class _Plan:
    """The imitator's state, rebuilt from the conversation on every turn (so it keeps none)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.queue: deque[Call] = deque([("ground_boxes", {})])
        self.rounds: dict[int, int] = {}
        self.last_grades: dict[int, Grades | None] = {}
        self.verdicts: dict[int, Decision] = {}
        self.refining: deque[int] = deque()
        self.current = 0

    def next_call(self) -> Call:
        if not self.queue and self.refining:
            self._start_round(self.refining.popleft())
        if self.queue:
            return self.queue.popleft()
        verdicts = [
            {"region": i, "action": d.action, "reason": d.reason} for i, d in sorted(self.verdicts.items())
        ]
        return "finish_slide", {"regions": verdicts}

    # ------------------------------------------------------------------ what each result means

    def observe(self, tool: str, result: dict[str, Any]) -> None:
        if tool == "ground_boxes":
            self.queue.extend(
                [("cluster_colours", {}), ("classify_patches", {}), ("clean", {}), ("review_mask", {})]
            )
        elif tool == "review_mask":
            for review in result["reviews"]:
                self._judge(review)
        elif tool == "point_ground":
            if not result["points"]:
                self._escalate(self.current, f"point_ground: {result.get('error') or 'no points found'}")
            else:
                self.queue.append(("rerank_exemplars", {"region": self.current}))
        elif tool == "rerank_exemplars":
            region = result["region"]
            if not result["exemplars"]:
                self._escalate(region, f"rerank_exemplars: {result.get('error') or 'no exemplar kept'}")
            else:
                self.queue.extend(
                    [
                        ("classify_patches", {"region": region, "few_shot": True}),
                        ("clean", {}),
                        ("review_mask", {"regions": [region]}),
                    ]
                )

    def _judge(self, review: dict[str, Any]) -> None:
        index = review["index"]
        grades = None if review["grades"] is None else Grades.model_validate(review["grades"])
        r, round_ = self.policy.review, self.rounds.get(index, 0)
        if round_ and r.revert_if_worse and not refinement_helped(self.last_grades.get(index), grades):
            why = f"Auto-context round {round_} was graded worse than the mask before it"
            self.verdicts[index] = Decision(action="escalate", reason=why)
            return
        d = decide(
            grades,
            round_,
            threshold=r.threshold,
            max_rounds=r.max_rounds,
            budget_ok=not review.get("budget_exhausted", False),
            on_review_failure=r.on_review_failure,
        )
        self.last_grades[index] = grades
        if d.action == "refine" and round_:
            self.refining.appendleft(index)  # depth first: finish this region's rounds before the next
        elif d.action == "refine":
            self.refining.append(index)
        else:
            self.verdicts[index] = d

    def _start_round(self, region: int) -> None:
        self.current = region
        self.rounds[region] = self.rounds.get(region, 0) + 1
        self.queue.append(("point_ground", {"region": region}))

    def _escalate(self, region: int, why: str) -> None:
        round_ = self.rounds.get(region, 1)
        self.verdicts[region] = Decision(
            action="escalate", reason=f"Auto-context round {round_} failed: {why}"
        )


def imitate(policy: Policy, events: list[Event]) -> Call:
    """The call the fixed controller would make next, given what the planner saw so far."""
    plan = _Plan(policy)
    for kind, tool, result in events:
        if kind == "call":
            plan.next_call()
        elif result is not None:
            plan.observe(tool, result)
    return plan.next_call()


def events_of(messages: list[ModelMessage]) -> list[Event]:
    """pydantic-ai messages as imitator events."""
    events: list[Event] = []
    for message in messages:
        if isinstance(message, ModelResponse):
            events += [("call", p.tool_name, None) for p in message.parts if isinstance(p, ToolCallPart)]
        elif isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart) and part.outcome == "success":
                    events.append(("result", part.tool_name, part.model_response_object()))
    return events


def policy_imitator(policy: Policy) -> FunctionModel:
    """The scripted planner as a pydantic-ai model (stateless: any number of slides)."""

    def plan(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        name, args = imitate(policy, events_of(messages))
        return ModelResponse(parts=[ToolCallPart(tool_name=name, args=json.dumps(args))])

    return FunctionModel(plan, model_name="policy-imitator")
