"""OpenAI-compatible transport over the openai SDK: vLLM, hosted APIs, anything speaking chat completions.

Images go inline as ``data:`` URIs in one user message (images first, then the prompt); the
answer's JSON schema goes as ``response_format={"type": "json_schema", ...}``, which vLLM
enforces by guided decoding. The key comes from ``OPENAI_API_KEY`` (``"EMPTY"`` when unset, as a
keyless vLLM server expects) and never leaves the SDK client. SDK retries are off: the oracle
retries, so each attempt is one audit row.

A 400 saying the prompt has too many images (vLLM's ``--limit-mm-per-prompt``) and a 404 (a
wrong ``--base-url`` path) are final, with what to do in the message.
"""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion

from tissue_oracle.oracles.transport import (
    TransportError,
    TransportRequest,
    TransportResponse,
    classify_status,
    image_limit_advice,
    image_limit_of,
    parse_retry_after,
)


class OpenAITransport:
    """One ``chat.completions.create`` per ``send``."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        api_key_env: str = "OPENAI_API_KEY",
        token_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        pool_shards: int = 1,
    ) -> None:
        key = os.environ.get(api_key_env) or "EMPTY"
        # httpx's pool scans every open connection for each new request, so one pool holding
        # 64 connections costs more CPU per call than the call itself; a few small pools don't.
        self._clients = [
            openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
            for _ in range(max(1, pool_shards))
        ]
        self._next = itertools.cycle(self._clients)
        self._token_param = token_param

    async def send(self, request: TransportRequest) -> TransportResponse:
        content: list[dict[str, Any]] = [
            {
                "type": "image_url",
                "image_url": {"url": f"data:{im.mime};base64,{base64.b64encode(im.data).decode('ascii')}"},
            }
            for im in request.images
        ]
        content.append({"type": "text", "text": request.prompt})
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": True},
        }
        body = {
            "model": request.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": request.temperature,
            "response_format": response_format,
            self._token_param: request.max_tokens,
        }
        try:
            # The SDK's documented raw ``post`` sends the same chat-completions request without its
            # per-call recursive parameter transform, which walked every base64 image string and
            # cost more CPU than everything else in a call (bench/perf/oracle_throughput.py).
            completion = await next(self._next).post(
                "/chat/completions", cast_to=ChatCompletion, body=body, options={"timeout": request.timeout_s}
            )
        except openai.APITimeoutError as exc:
            raise TransportError(f"timed out after {request.timeout_s:g} s", retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise TransportError(f"connection failed: {exc}", retryable=True) from exc
        except openai.APIStatusError as exc:
            raise _translate(exc, len(request.images)) from exc
        except openai.OpenAIError as exc:  # e.g. a body the SDK can't read
            raise TransportError(f"bad response: {_short(str(exc))}", retryable=True) from exc
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        usage = completion.usage
        return TransportResponse(
            text=text,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            raw=completion.model_dump_json(),
            finish_reason=str(choice.finish_reason or "") if choice is not None else "",
        )

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


def _translate(exc: openai.APIStatusError, n_images: int) -> TransportError:
    """The SDK's status error as a ``TransportError`` that says whether to retry and what to do."""
    code, message = exc.status_code, _short(exc.message)
    limit = image_limit_of(exc.message) if code == 400 else None
    if limit is not None:
        advice = image_limit_advice(limit, n_images)
        return TransportError(f"HTTP 400: {advice}", retryable=False, status=code)
    if code == 404:
        return TransportError(
            f"HTTP 404 Not Found at {exc.request.url}: {message}. Check --base-url (an OpenAI-compatible "
            "server is usually http://HOST:PORT/v1) and the model name the server serves.",
            retryable=False,
            status=code,
        )
    return TransportError(
        f"HTTP {code}: {message}",
        retryable=classify_status(code),
        status=code,
        retry_after_s=parse_retry_after(exc.response.headers.get("retry-after")),
    )


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
