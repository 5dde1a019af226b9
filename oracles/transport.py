"""The transport seam: one prompt with images and a JSON schema in, the model's text and usage out.

Two implementations wrap the vendor SDKs (``transport_openai``, ``transport_gemini``); tests run
them against loopback servers. A transport makes exactly one HTTP request per ``send`` (SDK
retries are off: the oracle owns retries, so that every attempt is one audit row), and
translates every SDK failure into :class:`TransportError`, saying whether a retry may help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tissue_oracle.oracles.base import EncodedImage
from tissue_oracle.tools.errors import OracleError


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
    """Output token cap."""
    temperature: float = 0.0
    """Sampling temperature (0: as deterministic as the server allows)."""
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
