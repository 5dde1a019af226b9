"""The transport seam: one prompt with images and a JSON schema in, the model's text and usage out.

Two implementations wrap the vendor SDKs (``transport_openai``, ``transport_gemini``); tests run
them against loopback servers. A transport makes exactly one HTTP request per ``send`` (SDK
retries are off: the oracle owns retries, so that every attempt is one audit row), and
translates every SDK failure into :class:`TransportError`, saying whether a retry may help.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from tissue_oracle.oracles.base import EncodedImage
from tissue_oracle.tools.errors import OracleError

ThinkingLevel = Literal["minimal", "low", "medium", "high"]


@dataclass(frozen=True, kw_only=True)
class Thinking:
    """A model's thinking allowance: a token budget (Gemini 2.5) or a level (Gemini 3).

    Thought tokens count against the server's output cap, so a transport that sends this also
    raises its output cap by ``budget_tokens`` on top of the answer's own cap.
    """

    budget_tokens: int
    """Tokens the model may spend thinking (sent as the budget, or reserved beside a level)."""
    level: ThinkingLevel | None = None
    """Sent instead of a budget to models that take a level (Gemini 3)."""


@dataclass(frozen=True, kw_only=True)
class TransportRequest:
    """One model request: text prompt, images in order, and the answer's JSON schema."""

    model: str
    """Model name as the server knows it."""
    prompt: str
    """The rendered prompt text (sent after the images)."""
    images: list[EncodedImage] = field(default_factory=list)
    """Encoded images, in the order the prompt numbers them."""
    schema: dict[str, Any] = field(default_factory=dict)
    """JSON schema of the expected answer (structured output)."""
    schema_name: str = "answer"
    """A name for the schema (OpenAI's ``json_schema.name``)."""
    max_tokens: int = 256
    """Output token cap of the answer itself (thinking tokens are budgeted separately)."""
    temperature: float = 0.0
    """Sampling temperature (0: as deterministic as the server allows)."""
    thinking: Thinking | None = None
    """How much the model may think before answering; None sends no thinking setting."""
    timeout_s: float = 120.0
    """Seconds before the request counts as timed out."""


@dataclass(frozen=True, kw_only=True)
class TransportResponse:
    """What the server said: the answer text and its token usage."""

    text: str
    """The model's answer text (expected to be JSON, not yet checked)."""
    input_tokens: int = 0
    """Prompt tokens, from the server's usage numbers."""
    output_tokens: int = 0
    """Completion tokens, from the server's usage numbers."""
    raw: str = ""
    """The raw response body (JSON) for the audit row."""
    finish_reason: str = ""
    """Why the model stopped, as the server says it (``stop``/``length``, ``STOP``/``MAX_TOKENS``)."""
    thought_tokens: int = 0
    """Of ``output_tokens``, how many were thinking (Gemini reports them; 0 when unknown)."""

    @property
    def hit_output_cap(self) -> bool:
        """The model ran out of output tokens before it finished (its answer is cut or empty)."""
        return self.finish_reason.lower() in ("length", "max_tokens")


class TransportError(OracleError):
    """One request failed. ``retryable`` says whether trying again may help."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


def classify_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying: 408, 409, 429 and 5xx are; other 4xx are not."""
    return status in (408, 409, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


@runtime_checkable
class Transport(Protocol):
    """Sends one request to one model server."""

    name: str
    """``openai`` or ``gemini`` (the backend name in audit rows)."""

    async def send(self, request: TransportRequest) -> TransportResponse: ...

    async def aclose(self) -> None: ...


# vLLM's refusals when a prompt carries more images than ``--limit-mm-per-prompt`` allows. Older
# servers: "At most 1 image(s) may be provided in one request." (vllm-project/vllm#13513);
# newer: "You set image=2 (or defaulted to 1) in `--limit-mm-per-prompt`, but passed 3 image
# items in the same prompt." (xorbitsai/inference#3054, quoting vLLM).
_IMAGE_LIMIT = (
    re.compile(r"At most (\d+) image\(s\) may be provided in one (?:prompt|request)"),
    re.compile(r"You set image=(\d+) \(or defaulted to 1\) in `?--limit-mm-per-prompt`?"),
)


def image_limit_of(message: str) -> int | None:
    """The images-per-prompt limit a server's 400 message states, or None when it states none."""
    for pattern in _IMAGE_LIMIT:
        found = pattern.search(message)
        if found:
            return int(found.group(1))
    return None


def image_limit_advice(limit: int, sent: int) -> str:
    """What to do when a server refuses ``sent`` images because it allows ``limit`` per prompt."""
    return (
        f"the server accepts at most {limit} image(s) per prompt but this request sent {sent}. "
        "For vLLM, restart it with a higher limit, e.g. `vllm serve MODEL --limit-mm-per-prompt "
        "'{\"image\": 16}'` (reviews send 2 images; few-shot classification sends the exemplars plus "
        "classify.batch_size patches), or lower classify.batch_size in the policy"
    )
