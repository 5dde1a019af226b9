"""The price table: US dollars per million tokens, per model, for budget reservations and cost rows.

Prices are list prices as published by the providers (standard tier, prompts under 200k tokens)
and change: check them before trusting a USD cap, and extend ``PRICES`` for a model that isn't
here. Backends with no per-token bill (``classical``, ``replay``, ``student``, a self-hosted
vLLM reached through ``--base-url``) cost 0.
"""

from __future__ import annotations

from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.schemas import ModelPrice

#: backend -> model -> price. Model names are matched exactly, then by the longest known prefix.
PRICES: dict[str, dict[str, ModelPrice]] = {
    "gemini": {
        "gemini-3-pro-preview": ModelPrice(input_per_mtok=2.00, output_per_mtok=12.00),
        "gemini-2.5-pro": ModelPrice(input_per_mtok=1.25, output_per_mtok=10.00),
        "gemini-2.5-flash-lite": ModelPrice(input_per_mtok=0.10, output_per_mtok=0.40),
        "gemini-2.5-flash": ModelPrice(input_per_mtok=0.30, output_per_mtok=2.50),
        "gemini-2.0-flash": ModelPrice(input_per_mtok=0.10, output_per_mtok=0.40),
    },
    "openai": {
        "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
        "gpt-4.1-nano": ModelPrice(input_per_mtok=0.10, output_per_mtok=0.40),
        "gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00),
        "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
        "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    },
}

#: Backends that never bill per token.
FREE_BACKENDS: frozenset[str] = frozenset({"classical", "replay", "student", "simulated"})

FREE = ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)


def split_spec(spec: str) -> tuple[str, str]:
    """``"openai:Qwen/Qwen3-VL-8B-Instruct"`` -> ``("openai", "Qwen/Qwen3-VL-8B-Instruct")``."""
    backend, _, model = spec.partition(":")
    return backend.strip(), model.strip()


def _lookup(table: dict[str, ModelPrice], model: str) -> ModelPrice | None:
    if model in table:
        return table[model]
    # Dated or suffixed variants (gpt-4o-2024-08-06, gemini-2.5-pro-preview-05-06) share a price.
    prefixes = [name for name in table if model.startswith(name)]
    return table[max(prefixes, key=len)] if prefixes else None


def price_for(spec: str, *, base_url: str | None = None) -> ModelPrice:
    """The price of the model a spec string names.

    Backends other than ``openai`` and ``gemini`` cost 0 here. ``openai:MODEL`` with a
    ``base_url`` is a self-hosted OpenAI-compatible server (vLLM) and
    costs 0 unless the model is in the table. A hosted model missing from the table raises
    ``ConfigError``: a USD cap with an unknown price would be no cap at all.
    """
    backend, model = split_spec(spec)
    if backend not in PRICES:
        # classical, replay, student, and plug-ins: the latter's rows carry their own cost, which
        # the ledger settles from; only the reservation can't know it in advance.
        return FREE
    known = _lookup(PRICES.get(backend, {}), model)
    if known is not None:
        return known
    if backend == "openai" and base_url is not None:
        return FREE
    known_models = ", ".join(f"{b}:{m}" for b, models in PRICES.items() for m in models)
    raise ConfigError(
        f"no price for {spec!r}. Known: {known_models}; self-hosted servers (openai:MODEL with "
        "--base-url) cost 0. Add the model to tissue_oracle.policies.prices.PRICES."
    )
