"""A role's call settings: the model family's defaults under the policy's ``models`` and ``role_settings``.

The settings themselves are policy data (``policies.model_settings``); what a model family needs
(thinking style, default temperature) is oracle knowledge (``oracles.model_families``). The
agent joins the two, since neither layer may import the other.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from tissue_oracle.oracles.model_families import family_of
from tissue_oracle.oracles.transport import Thinking
from tissue_oracle.policies.model_settings import DEFAULT_THINKING_TOKENS, ModelSettings, PriceSetting


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
