"""Per-model and per-role call settings: temperature, thinking, the answer's output cap, and price.

A policy's ``models`` section maps spec patterns (``fnmatch`` globs over ``backend:model``, such
as ``gemini:gemini-3*`` or ``openai:Qwen/*``) to settings; every matching entry applies, later
ones winning field by field. Its ``role_settings`` section then overrides per role (``oracle``,
``classifier``, ``reviewer``). What neither sets comes from the model family
(``oracles.model_families``): temperature 1.0 for Gemini 3 (Google's advice: lower values can
loop) and 0 elsewhere; Gemini 2.5 and 3 think with ``DEFAULT_THINKING_TOKENS`` at level high,
like the paper's seed reviewer.

``price`` is USD per million tokens, or ``self-hosted`` ($0: only the user can say a server is
theirs); without it the maintained table (``policies.prices``) prices the model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.oracles.model_families import family_of
from tissue_oracle.oracles.transport import Thinking, ThinkingLevel
from tissue_oracle.tools.schemas import ModelPrice

#: Thinking tokens a thinking model gets when the policy names none (the seed reviewer's 8192).
DEFAULT_THINKING_TOKENS = 8192

PriceSetting = ModelPrice | Literal["self-hosted"]


class ModelSettings(BaseModel):
    """Call settings for one model (or one role); ``None`` leaves the field to the next layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """Sampling temperature."""
    thinking_budget: int | None = Field(default=None, ge=0)
    """Thinking tokens (Gemini 2.5's budget; the room reserved beside a Gemini 3 level)."""
    thinking_level: ThinkingLevel | None = None
    """Thinking level for models that take one (Gemini 3)."""
    max_output_tokens: int | None = Field(default=None, ge=16)
    """Cap on the answer's own tokens (thinking comes on top); default: the stages' caps."""
    price: PriceSetting | None = None
    """USD per million tokens, or ``self-hosted`` for $0; default: the maintained price table."""


@dataclass(frozen=True, kw_only=True)
class ResolvedSettings:
    """What one role's model is called with."""

    temperature: float
    thinking: Thinking | None
    max_output_tokens: int | None
    price: PriceSetting | None


def _layers(
    spec: str, models: Mapping[str, ModelSettings], role: ModelSettings | None
) -> list[ModelSettings]:
    found = [settings for pattern, settings in models.items() if fnmatch.fnmatchcase(spec, pattern)]
    return found + ([role] if role is not None else [])


def resolve_settings(
    spec: str, models: Mapping[str, ModelSettings], role: ModelSettings | None = None
) -> ResolvedSettings:
    """The settings ``spec`` is called with: family defaults, then ``models`` matches, then ``role``."""
    backend, _, model = spec.partition(":")
    family = family_of(backend, model)
    merged: dict[str, object] = {}
    for layer in _layers(spec, models, role):
        merged.update(layer.model_dump(exclude_none=True))
    temperature = merged.get("temperature", family.temperature)
    budget = merged.get("thinking_budget")
    level = merged.get("thinking_level")
    thinking: Thinking | None = None
    if family.thinking != "none" and (family.thinks_by_default or budget is not None or level is not None):
        tokens = DEFAULT_THINKING_TOKENS if budget is None else int(budget)  # type: ignore[call-overload]
        thinking = Thinking(budget_tokens=tokens, level=level or "high")  # type: ignore[arg-type]
    price = (role.price if role is not None and role.price is not None else None) or next(
        (layer.price for layer in reversed(_layers(spec, models, None)) if layer.price is not None), None
    )
    return ResolvedSettings(
        temperature=float(temperature),  # type: ignore[arg-type]
        thinking=thinking,
        max_output_tokens=merged.get("max_output_tokens"),  # type: ignore[arg-type]
        price=price,
    )
