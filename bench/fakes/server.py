"""Loopback fake VLM servers on 127.0.0.1 speaking the real wire protocols, with faults on demand.

- :class:`FakeOpenAIServer`: ``POST /v1/chat/completions`` (OpenAI / vLLM).
- :class:`FakeGeminiServer`: ``POST /v1beta/models/{model}:generateContent`` (Gemini API).

Both decode the images they receive and answer from image evidence (``answerer``), in their
profile's key names and coordinate order. Faults are queued per request with :meth:`inject`
(each queued fault applies to the next request; then the server behaves again):

    latency, rate_limit (429 + Retry-After), server_error (500), hang (sleep past the client's
    timeout), truncated (JSON cut short), invalid_json, wrong_keys, out_of_range, empty,
    unauthorized (401, not retryable), length (answer cut by the output cap: OpenAI/vLLM
    ``finish_reason: "length"``, Gemini ``MAX_TOKENS``), quota_window (Gemini's 429 with the wait
    in ``google.rpc.RetryInfo.retryDelay`` and no Retry-After header; every request inside the
    window is refused again), daily_quota (Gemini's 429 naming a per-day ``QuotaFailure``)

Standing behaviours of the real services, set per server (each cites its public source where it
is implemented): ``thought_tokens`` (Gemini thinking that counts against ``maxOutputTokens``),
``max_images`` (vLLM's ``--limit-mm-per-prompt``), a 404 for any path the service doesn't
serve, and the Qwen2.5-VL profile answering in absolute pixels of its processor's image.

A threaded ``http.server`` on an ephemeral port; ``start()``/``stop()`` or a ``with`` block.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tissue_oracle.bench.fakes.server_base import FakeServer, Parsed
from tissue_oracle.oracles.profiles import PROFILES, ModelProfile


@dataclass
class FakeOpenAIServer(FakeServer):
    """OpenAI chat completions (what vLLM serves). Default profile: Qwen3-VL."""

    profile: ModelProfile = field(default_factory=lambda: PROFILES["qwen3-vl"])

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def serves(self, path: str) -> bool:
        return path.split("?")[0].rstrip("/") == "/v1/chat/completions"

    def not_found_body(self) -> dict[str, Any]:
        # vLLM's server is FastAPI: an unrouted path is a 404 with Starlette's default body.
        return {"detail": "Not Found"}

    def refusal(self, parsed: Parsed) -> tuple[int, dict[str, Any]] | None:
        if self.max_images is not None and len(parsed.images) > self.max_images:
            # vLLM's wording and error shape (vllm-project/vllm#13513).
            message = f"At most {self.max_images} image(s) may be provided in one request."
            return 400, {
                "object": "error",
                "message": message,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        return None

    def parse(self, path: str, body: dict[str, Any]) -> Parsed:
        prompt, images = "", []
        for part in body["messages"][-1]["content"]:
            if part["type"] == "text":
                prompt += part["text"]
            elif part["type"] == "image_url":
                images.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        cap = body.get("max_tokens") or body.get("max_completion_tokens")
        return Parsed(
            model=body["model"],
            prompt=prompt,
            images=images,
            schema=schema,
            max_output_tokens=cap,
            temperature=body.get("temperature"),
        )

    def envelope(
        self,
        model: str,
        text: str,
        tokens_in: int,
        tokens_out: int,
        *,
        thoughts: int = 0,
        finish: str = "stop",
    ) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out + thoughts,
                "total_tokens": tokens_in + tokens_out + thoughts,
            },
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "fake_error", "code": status}}


@dataclass
class FakeGeminiServer(FakeServer):
    """Gemini ``generateContent``. Default profile: Gemini ([y, x] order)."""

    profile: ModelProfile = field(default_factory=lambda: PROFILES["gemini"])

    @property
    def base_url(self) -> str:
        return self.root

    def serves(self, path: str) -> bool:
        return re.fullmatch(r"/v1(beta|alpha)?/models/[^/:]+:generateContent", path.split("?")[0]) is not None

    def not_found_body(self) -> dict[str, Any]:
        return {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}

    def refusal(self, parsed: Parsed) -> tuple[int, dict[str, Any]] | None:
        # Budget 0 on a model that can't stop thinking, and budget with level, are 400s
        # (ai.google.dev/gemini-api/docs/thinking; the quoted messages from snailyp/gemini-balance#206
        # and sterlp/eclipse-peon-ai#115).
        budget, level = parsed.thinking.get("thinkingBudget"), parsed.thinking.get("thinkingLevel")
        if budget is not None and level is not None:
            return 400, self.error_body(
                400, "You can only set only one of thinking budget and thinking level."
            )
        if budget == 0 and parsed.model.startswith(("gemini-2.5-pro", "gemini-3-pro")):
            return 400, self.error_body(400, "Budget 0 is invalid. This model only works in thinking mode.")
        if level is not None and not parsed.model.startswith("gemini-3"):
            return 400, self.error_body(400, "Thinking level is not supported for this model.")
        return None

    def thinking_spent(self, parsed: Parsed) -> int:
        # Thinking models think by default (2.5 Pro and 3 can't stop); a budget bounds it.
        budget = parsed.thinking.get("thinkingBudget")
        return self.thought_tokens if budget is None else min(self.thought_tokens, int(budget))

    def quota_body(self, *, daily: bool, delay_s: float) -> dict[str, Any]:
        # The Gemini API's 429 body (python-genai#1875, #2044): QuotaFailure + RetryInfo, no header.
        quota = (
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
            if daily
            else "GenerateRequestsPerMinutePerProjectPerModel"
        )
        body = self.error_body(429, f"You exceeded your current quota. Please retry in {delay_s:.3f}s.")
        body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                        "quotaId": quota,
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{max(1, round(delay_s))}s"},
        ]
        return body

    def parse(self, path: str, body: dict[str, Any]) -> Parsed:
        found = re.search(r"/models/([^/:]+):generateContent", path)
        if not found:
            raise ValueError(f"unknown path {path}")
        prompt, images = "", []
        for part in body["contents"][-1]["parts"]:
            if "text" in part:
                prompt += part["text"]
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                data = inline["data"]  # the SDK sends URL-safe base64, sometimes unpadded
                images.append(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
        config = body.get("generationConfig", {})
        schema = config.get("responseSchema") or config.get("response_schema") or {}
        return Parsed(
            model=found.group(1),
            prompt=prompt,
            images=images,
            schema=schema,
            max_output_tokens=config.get("maxOutputTokens"),
            thinking=_camel_keys(config.get("thinkingConfig") or config.get("thinking_config") or {}),
            temperature=config.get("temperature"),
        )

    def envelope(
        self,
        model: str,
        text: str,
        tokens_in: int,
        tokens_out: int,
        *,
        thoughts: int = 0,
        finish: str = "stop",
    ) -> dict[str, Any]:
        parts = [{"text": text}] if text else []
        usage = {
            "promptTokenCount": tokens_in,
            "candidatesTokenCount": tokens_out,
            "totalTokenCount": tokens_in + tokens_out + thoughts,
        }
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": "MAX_TOKENS" if finish == "length" else "STOP",
                }
            ],
            "usageMetadata": usage,
            "modelVersion": model,
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        names = {
            429: "RESOURCE_EXHAUSTED",
            500: "INTERNAL",
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            404: "NOT_FOUND",
        }
        return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}


def _camel_keys(value: dict[str, Any]) -> dict[str, Any]:
    """Proto JSON accepts ``thinking_budget`` and ``thinkingBudget`` alike; the fake reads camelCase."""
    out = {}
    for key, item in value.items():
        head, *rest = key.split("_")
        out[head + "".join(part.title() for part in rest)] = item
    return out
