"""Gemini transport over google-genai: ``generate_content`` with inline image bytes and a response schema.

The key comes from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; with ``GOOGLE_GENAI_USE_VERTEXAI``
set, the SDK uses Vertex AI credentials from the environment instead. ``base_url`` points the SDK
at a proxy or a test server. SDK retries are off (the oracle retries; one row per attempt).
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tissue_oracle.oracles.transport import (
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
        config = types.GenerateContentConfig(
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
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
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            raise TransportError(
                f"HTTP {exc.code}: {str(exc.message or exc.status)[:300]}",
                retryable=classify_status(int(exc.code)),
                status=int(exc.code),
                retry_after_s=parse_retry_after(headers.get("retry-after")),
            ) from exc
        except Exception as exc:
            # httpx/httpx2 timeouts and connection errors, or a body the SDK can't read: all
            # worth another (bounded) attempt.
            raise TransportError(f"{type(exc).__name__}: {str(exc)[:300]}", retryable=True) from exc
        meta = response.usage_metadata
        output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0) if meta else 0
        return TransportResponse(
            text=response.text or "",
            input_tokens=(meta.prompt_token_count or 0) if meta else 0,
            output_tokens=output,
            raw=response.model_dump_json(exclude_none=True),
        )

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aio.aclose()
