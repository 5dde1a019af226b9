"""Prices: US dollars per million tokens per model, from pydantic's maintained ``genai-prices`` table.

``genai-prices`` (github.com/pydantic/genai-prices) ships a dated snapshot of provider list
prices with tiers and model-name matching, works offline (we never ask it to update over the
network), and is what pydantic-ai itself prices with. We read each model's base tier (prompts
under 200k tokens: ours are a few thousand) as one ``ModelPrice``.

Rules, in order: backends that never bill (``classical``, ``replay``, ``student``) cost 0; a
price the policy gives (``models:`` settings) wins, ``self-hosted`` being $0; then the table
(``openai:`` behind a ``--base-url`` is matched by the URL's provider, e.g. OpenRouter, then by
the model's name at OpenAI); else
the price is *unknown* (``ModelPrice.known`` false): the run warns, records cost as unknown,
and refuses only when a USD cap is set, since an unknown price can't be capped.

:func:`image_token_bound` bounds what one image costs in input tokens on each priced family,
for budget reservations.
"""

from __future__ import annotations

import math
from decimal import Decimal

from tissue_oracle.tools.schemas import ModelPrice

#: Backends that never bill per token.
FREE_BACKENDS: frozenset[str] = frozenset({"classical", "replay", "student", "simulated"})
#: Where ``genai-prices`` looks a backend's models up (its provider ids).
PROVIDERS: dict[str, str] = {"gemini": "google", "openai": "openai"}

FREE = ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)
UNKNOWN = ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0, known=False)
_PROBE_TOKENS = 100_000  # under every provider's long-prompt tier


def split_spec(spec: str) -> tuple[str, str]:
    """``"openai:Qwen/Qwen3-VL-8B-Instruct"`` -> ``("openai", "Qwen/Qwen3-VL-8B-Instruct")``."""
    backend, _, model = spec.partition(":")
    return backend.strip(), model.strip()


def _table_cost(model: str, provider: str | None, url: str | None, inp: int, out: int) -> Decimal:
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=inp, output_tokens=out)
    if url is not None:
        return calc_price(usage, model_ref=model, provider_api_url=url).total_price
    return calc_price(usage, model_ref=model, provider_id=provider).total_price


def table_price(backend: str, model: str, *, base_url: str | None = None) -> ModelPrice | None:
    """The maintained table's base-tier price, or None when it doesn't know the model.

    ``openai:`` behind a ``base_url`` is looked up by the URL's provider first (OpenRouter and
    other gateways are in the table), then by the model's name at OpenAI: a gateway relaying
    ``gpt-4o-mini`` is priced at OpenAI's list price rather than $0.
    """
    lookups: list[tuple[str | None, str | None]] = []
    if backend == "openai" and base_url:
        lookups.append((None, base_url))
    if backend in PROVIDERS:
        lookups.append((PROVIDERS[backend], None))
    scale = Decimal(1_000_000) / _PROBE_TOKENS
    for provider, url in lookups:
        try:
            per_in = _table_cost(model, provider, url, _PROBE_TOKENS, 0)
            per_out = _table_cost(model, provider, url, 0, _PROBE_TOKENS)
        except LookupError:
            continue
        return ModelPrice(input_per_mtok=float(per_in * scale), output_per_mtok=float(per_out * scale))
    return None


def price_for(
    spec: str, *, base_url: str | None = None, setting: ModelPrice | str | None = None
) -> ModelPrice:
    """The price of the model ``spec`` names: free backends, the policy's ``setting``, the table,
    else :data:`UNKNOWN`."""
    backend, model = split_spec(spec)
    if backend not in PROVIDERS:
        # classical, replay, student, and plug-ins: the latter's rows carry their own cost.
        return FREE
    if setting == "self-hosted":
        return FREE
    if isinstance(setting, ModelPrice):
        return setting
    return table_price(backend, model, base_url=base_url) or UNKNOWN


def unknown_price_advice(spec: str) -> str:
    """What to do about a model with no known price."""
    return (
        f"no price known for {spec!r}: its calls are recorded with cost unknown. If it runs on your own "
        "server, say so (segment --self-hosted, or the policy's models section: "
        f'"{spec}": {{price: self-hosted}}); otherwise give its price there '
        "({input_per_mtok: X, output_per_mtok: Y})."
    )


# --------------------------------------------------------------------------- image tokens

# Sources: Gemini "Understand and count tokens" (<= 384 px both sides: 258 tokens; larger:
# 768x768 tiles of 258); Gemini 3 "Media resolution" (images default to high: 1120 tokens);
# OpenAI "Images and vision" (gpt-4o: fit in 2048, shortest side to 768, 170 per 512 px tile
# + 85; gpt-4o-mini bills 5667 per tile + 2833; gpt-4.1-mini/nano and o4-mini: 32 px patches,
# at most 1536, times 1.62 / 2.46 / 1.72); Qwen2.5-VL: one token per 28x28 pixels.


def _qwen_tokens(height: int, width: int) -> int:
    return math.ceil(height / 28) * math.ceil(width / 28) + 8


def _gemini_tokens(model: str, height: int, width: int) -> int:
    if model.startswith("gemini-3"):
        return 1120
    if height <= 384 and width <= 384:
        return 258
    return 258 * math.ceil(height / 768) * math.ceil(width / 768)


def _openai_tiles(height: int, width: int) -> int:
    scale = min(1.0, 2048 / max(height, width))
    h, w = height * scale, width * scale
    scale = min(1.0, 768 / min(h, w))
    return math.ceil(h * scale / 512) * math.ceil(w * scale / 512)


def _openai_tokens(model: str, height: int, width: int) -> int:
    patch_multipliers = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "o4-mini": 1.72}
    for prefix, multiplier in patch_multipliers.items():
        if model.startswith(prefix):
            patches = min(1536, math.ceil(height / 32) * math.ceil(width / 32))
            return math.ceil(patches * multiplier)
    if model.startswith("gpt-4o-mini"):
        return 2833 + 5667 * _openai_tiles(height, width)
    return 85 + 170 * _openai_tiles(height, width)


def image_token_bound(spec: str, height: int, width: int) -> int:
    """Upper bound on the input tokens one ``height`` x ``width`` image costs on ``spec``'s model.

    The 28-pixel bound (Qwen's, the largest of the open models we call) always counts; hosted
    families add their own formula and the larger of the two is the bound.
    """
    backend, model = split_spec(spec)
    name = model.lower().rsplit("/", 1)[-1]
    bound = _qwen_tokens(height, width)
    if backend == "gemini":
        bound = max(bound, _gemini_tokens(name, height, width))
    elif backend == "openai" and name.startswith(("gpt-", "o1", "o3", "o4")):
        bound = max(bound, _openai_tokens(name, height, width))
    return bound
