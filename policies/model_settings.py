"""Per-model and per-role call settings: temperature, thinking, the answer's output cap, and price.

A policy's ``models`` section maps spec patterns (``fnmatch`` globs over ``backend:model``, such
as ``gemini:gemini-3*`` or ``openai:Qwen/*``) to settings; every matching entry applies, later
ones winning field by field. Its ``role_settings`` section then overrides per role (``oracle``,
``classifier``, ``reviewer``). What neither sets comes from the model family
(``oracles.model_families``, joined in ``agent.call_settings``): temperature 1.0 for Gemini 3
(Google's advice: lower values can loop) and 0 elsewhere; Gemini 2.5 and 3 think with
``DEFAULT_THINKING_TOKENS`` at level high, like the paper's seed reviewer.

``price`` is USD per million tokens, or ``self-hosted`` ($0: only the user can say a server is
theirs); without it the maintained table (``policies.prices``) prices the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tissue_oracle.tools.schemas import ModelPrice

#: Thinking tokens a thinking model gets when the policy names none (the seed reviewer's 8192).
DEFAULT_THINKING_TOKENS = 8192

PriceSetting = ModelPrice | Literal["self-hosted"]
ThinkingLevel = Literal["minimal", "low", "medium", "high"]


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
