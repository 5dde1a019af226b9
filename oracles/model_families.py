"""What a model's name says about how to call it: thinking style, whether thinking can be off, default
temperature. One table of rules, read by the transports and by the policy's model settings.

Sources (Google AI for Developers, "Gemini thinking", ai.google.dev/gemini-api/docs/thinking):
- Gemini 3 takes ``thinking_level`` (``low``/``high``; Flash also ``minimal``/``medium``) and
  refuses ``thinking_budget`` with it in one request; thinking cannot be turned off on 3 Pro.
- Gemini 2.5 takes ``thinking_budget``: Pro 128-32768 and never 0 ("Budget 0 is invalid. This
  model only works in thinking mode."), Flash 0-24576, Flash-Lite 512-24576 or 0.
- Thought tokens count against ``max_output_tokens`` (python-genai#811, #2062), so the answer's
  cap and the thinking budget must be added, not shared.
- Google advises temperature 1.0 for Gemini 3: lower values can make it loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tissue_oracle.oracles.transport import Thinking, ThinkingLevel

ThinkingStyle = Literal["level", "budget", "none"]


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    """How one family of models is called."""

    thinking: ThinkingStyle
    """``level`` (Gemini 3), ``budget`` (Gemini 2.5) or ``none`` (no thinking setting is sent)."""
    min_budget: int = 0
    """Smallest thinking budget the server accepts (128 for 2.5 Pro: it can't stop thinking)."""
    thinks_by_default: bool = False
    """The model thinks even when asked nothing, so its output cap needs room for thoughts."""
    temperature: float = 0.0
    """Default sampling temperature."""


def _base(model: str) -> str:
    return model.lower().rsplit("/", 1)[-1].removeprefix("models/")


def family_of(backend: str, model: str) -> ModelFamily:
    """The family rules for ``backend:model`` (name prefixes; unknown models get no thinking setting)."""
    name = _base(model)
    if backend == "gemini" or name.startswith("gemini"):
        if name.startswith("gemini-3"):
            return ModelFamily(thinking="level", thinks_by_default=True, temperature=1.0)
        if name.startswith("gemini-2.5-pro"):
            return ModelFamily(thinking="budget", min_budget=128, thinks_by_default=True)
        if name.startswith("gemini-2.5-flash-lite"):
            return ModelFamily(thinking="budget")
        if name.startswith("gemini-2.5"):
            return ModelFamily(thinking="budget", thinks_by_default=True)
    return ModelFamily(thinking="none")


#: Thinking room a model that thinks by default gets when no allowance is sent (Gemini's
#: dynamic thinking goes "up to 8,192 tokens" by default on 2.5).
DEFAULT_THOUGHT_ROOM = 8192


@dataclass(frozen=True, kw_only=True)
class ThinkingPlan:
    """What a Gemini request sends about thinking, and the output cap that leaves the answer room."""

    level: ThinkingLevel | None
    """``thinking_level`` to send (Gemini 3), or None."""
    budget: int | None
    """``thinking_budget`` to send (Gemini 2.5), or None."""
    output_cap: int
    """``max_output_tokens``: the answer's cap plus the thinking allowance."""


def thinking_plan(backend: str, model: str, thinking: Thinking | None, answer_tokens: int) -> ThinkingPlan:
    """Level or budget per family (never a budget below the family's minimum), and the output cap."""
    family = family_of(backend, model)
    if family.thinking == "none":
        return ThinkingPlan(level=None, budget=None, output_cap=answer_tokens)
    if thinking is None:
        room = DEFAULT_THOUGHT_ROOM if family.thinks_by_default else 0
        return ThinkingPlan(level=None, budget=None, output_cap=answer_tokens + room)
    budget = max(thinking.budget_tokens, family.min_budget)
    if family.thinking == "level":
        return ThinkingPlan(level=thinking.level or "high", budget=None, output_cap=answer_tokens + budget)
    return ThinkingPlan(level=None, budget=budget, output_cap=answer_tokens + budget)
