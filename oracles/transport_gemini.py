"""Gemini transport over google-genai: ``generate_content`` with inline image bytes and a response schema.

The key comes from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; with ``GOOGLE_GENAI_USE_VERTEXAI``
set, the SDK uses Vertex AI credentials from the environment instead. ``base_url`` points the SDK
at a proxy or a test server; without it the SDK reads ``GOOGLE_GEMINI_BASE_URL``, then uses
Google's endpoint. SDK retries are off (the oracle retries; one row per attempt).

Thinking goes as ``thinking_config`` per model family (``oracles.model_families``), and the
output cap sent is the answer's cap plus the thinking budget, because thought tokens count
against ``max_output_tokens``. A 429 is waited out for the ``google.rpc.RetryInfo.retryDelay``
its body gives (Gemini sends no ``Retry-After`` header: python-genai#1875); a 429 whose
``google.rpc.QuotaFailure`` names a per-day quota is final (gemini-cli's googleQuotaErrors.ts
treats ``PerDay`` quota ids as terminal).
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tissue_oracle.oracles.model_families import thinking_plan
from tissue_oracle.oracles.transport import (
    Thinking,
    TransportError,
    TransportRequest,
    TransportResponse,
    classify_status,
    parse_retry_after,
)
from tissue_oracle.tools.errors import ConfigError

_KEEP = {"type", "properties", "required", "items", "enum", "minimum", "maximum", "description"}
_RENAME = {"minItems": "min_items", "maxItems": "max_items"}


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Our JSON schema in the subset Gemini's ``response_schema`` takes (upper-case types, no extras)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            out["type"] = str(value).upper()
        elif key == "properties":
            out["properties"] = {name: gemini_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = gemini_schema(value)
        elif key in _RENAME:
            out[_RENAME[key]] = value
        elif key in _KEEP:
            out[key] = value
    return out


class GeminiTransport:
    """One ``aio.models.generate_content`` per ``send``."""

    name = "gemini"

    def __init__(
        self, *, base_url: str | None = None, timeout_s: float = 120.0, pool_shards: int = 1
    ) -> None:
        options = types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000))
        if os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true"):
            make = functools.partial(genai.Client, vertexai=True, http_options=options)
        else:
            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            if not key:
                raise ConfigError(
                    "gemini needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment, "
                    "or GOOGLE_GENAI_USE_VERTEXAI=true with Vertex AI credentials."
                )
            make = functools.partial(genai.Client, api_key=key, http_options=options)
        # Several small connection pools: httpx scans a whole pool per request (transport_openai).
        self._clients = [make() for _ in range(max(1, pool_shards))]
        self._next = itertools.cycle(self._clients)

    async def send(self, request: TransportRequest) -> TransportResponse:
        parts = [types.Part.from_bytes(data=im.data, mime_type=im.mime) for im in request.images]
        parts.append(types.Part.from_text(text=request.prompt))
        thinking, output_cap = thinking_config(request.model, request.thinking, request.max_tokens)
        config = types.GenerateContentConfig(
            temperature=request.temperature,
            max_output_tokens=output_cap,
            thinking_config=thinking,
            response_mime_type="application/json",
            response_schema=gemini_schema(request.schema),
            http_options=types.HttpOptions(timeout=int(request.timeout_s * 1000)),
            automatic_continuation=False,
        )
        try:
            response = await next(self._next).aio.models.generate_content(
                model=request.model, contents=[types.Content(role="user", parts=parts)], config=config
            )
        except genai_errors.APIError as exc:
            raise _translate(exc) from exc
        except Exception as exc:
            # httpx/httpx2 timeouts and connection errors, or a body the SDK can't read: all
            # worth another (bounded) attempt.
            raise TransportError(f"{type(exc).__name__}: {str(exc)[:300]}", retryable=True) from exc
        meta = response.usage_metadata
        thoughts = (meta.thoughts_token_count or 0) if meta else 0
        output = (meta.candidates_token_count or 0) + thoughts if meta else 0
        candidate = response.candidates[0] if response.candidates else None
        finish = candidate.finish_reason if candidate is not None else None
        return TransportResponse(
            text=_answer_text(response),
            input_tokens=(meta.prompt_token_count or 0) if meta else 0,
            output_tokens=output,
            raw=response.model_dump_json(exclude_none=True),
            finish_reason=str(getattr(finish, "value", finish) or ""),
            thought_tokens=thoughts,
        )

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aio.aclose()


_LEVELS = {
    "minimal": types.ThinkingLevel.MINIMAL,
    "low": types.ThinkingLevel.LOW,
    "medium": types.ThinkingLevel.MEDIUM,
    "high": types.ThinkingLevel.HIGH,
}


def thinking_config(
    model: str, thinking: Thinking | None, answer_tokens: int
) -> tuple[types.ThinkingConfig | None, int]:
    """The ``thinking_config`` for ``model`` and the output cap to send (``model_families.thinking_plan``)."""
    plan = thinking_plan("gemini", model, thinking, answer_tokens)
    if plan.level is not None:
        return types.ThinkingConfig(thinking_level=_LEVELS[plan.level]), plan.output_cap
    if plan.budget is not None:
        return types.ThinkingConfig(thinking_budget=plan.budget), plan.output_cap
    return None, plan.output_cap


def _answer_text(response: types.GenerateContentResponse) -> str:
    """The answer's text parts, without thought summaries."""
    candidate = response.candidates[0] if response.candidates else None
    content = candidate.content if candidate is not None else None
    parts = (content.parts if content is not None else None) or []
    return "".join(part.text for part in parts if part.text and not part.thought)


def _error_details(details: Any) -> list[dict[str, Any]]:
    """The ``google.rpc`` detail objects of an error body (a dict, or a one-element list on Vertex)."""
    body = details[0] if isinstance(details, list) and details else details
    error = body.get("error") if isinstance(body, dict) else None
    found = error.get("details") if isinstance(error, dict) else None
    return [d for d in found or [] if isinstance(d, dict)]


def parse_duration(text: Any) -> float | None:
    """Seconds of a protobuf JSON ``Duration`` such as ``"53s"`` or ``"1.5s"``."""
    if not isinstance(text, str) or not text.endswith("s"):
        return None
    try:
        return max(0.0, float(text[:-1]))
    except ValueError:
        return None


def retry_delay_of(details: Any) -> float | None:
    """``google.rpc.RetryInfo.retryDelay`` in seconds, when the body has one."""
    for detail in _error_details(details):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            return parse_duration(detail.get("retryDelay"))
    return None


def daily_quota_of(details: Any) -> str | None:
    """The quota id of a per-day ``google.rpc.QuotaFailure`` violation, when the body has one."""
    for detail in _error_details(details):
        if str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                quota = str(violation.get("quotaId", "")) if isinstance(violation, dict) else ""
                if "PerDay" in quota:
                    return quota
    return None


def _translate(exc: genai_errors.APIError) -> TransportError:
    """The SDK's error as a ``TransportError`` that says whether, and when, to try again."""
    code = int(exc.code)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    url = str(getattr(getattr(response, "request", None), "url", "") or "")
    message = str(exc.message or exc.status or "")[:300]
    if code == 404:
        return TransportError(
            f"HTTP 404 Not Found at {url or 'the Gemini endpoint'}: {message or 'no such path'}. "
            "Is this a Gemini endpoint? A bare --base-url is for openai: models only; point gemini: "
            "elsewhere with --base-url gemini=URL or GOOGLE_GEMINI_BASE_URL, or check the model name.",
            retryable=False,
            status=code,
        )
    daily = daily_quota_of(exc.details) if code == 429 else None
    if daily is not None:
        return TransportError(
            f"HTTP 429: daily quota {daily!r} is used up; it resets once a day, so waiting within "
            "this run won't help. Use another key or project, a paid tier, or run again tomorrow.",
            retryable=False,
            status=code,
        )
    delay = retry_delay_of(exc.details) if code == 429 else None
    return TransportError(
        f"HTTP {code}: {message}",
        retryable=classify_status(code),
        status=code,
        retry_after_s=delay if delay is not None else parse_retry_after(headers.get("retry-after")),
    )
