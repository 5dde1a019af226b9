"""Loopback fake VLM servers on 127.0.0.1 speaking the real wire protocols, with faults on demand.

- :class:`FakeOpenAIServer`: ``POST /v1/chat/completions`` (OpenAI / vLLM).
- :class:`FakeGeminiServer`: ``POST /v1beta/models/{model}:generateContent`` (Gemini API).

Both decode the images they receive and answer from image evidence (``answerer``), in their
profile's key names and coordinate order. Faults are queued per request with :meth:`inject`
(each queued fault applies to the next request; then the server behaves again):

    latency, rate_limit (429 + Retry-After), server_error (500), hang (sleep past the client's
    timeout), truncated (JSON cut short), invalid_json, wrong_keys, out_of_range, empty,
    unauthorized (401, not retryable)

A threaded ``http.server`` on an ephemeral port; ``start()``/``stop()`` or a ``with`` block.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args

from tissue_oracle.bench.fakes import answerer
from tissue_oracle.oracles.profiles import PROFILES, ModelProfile

Fault = Literal[
    "latency",
    "rate_limit",
    "server_error",
    "hang",
    "truncated",
    "invalid_json",
    "wrong_keys",
    "out_of_range",
    "empty",
    "unauthorized",
]
FAULTS: tuple[Fault, ...] = get_args(Fault)


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # many clients connect at once (64+ in flight); the default 5 drops them


@dataclass
class Parsed:
    """What a request asked, independent of the protocol."""

    model: str
    prompt: str
    images: list[bytes]
    schema: dict[str, Any]


@dataclass
class FakeServer:
    """Shared machinery: the socket, the thread, the fault queue and the answer text."""

    profile: ModelProfile
    latency_s: float = 0.0
    retry_after_s: float = 0.05
    hang_s: float = 2.0
    analyse: bool = True
    requests: int = 0
    in_flight: int = 0
    max_in_flight_seen: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def inject(self, *faults: Fault) -> None:
        """Queue faults for the next requests, one per request, in order."""
        with self._lock:
            self._faults.extend(faults)

    # ------------------------------------------------------------------ per protocol

    @property
    def base_url(self) -> str:
        """What the SDK's ``base_url`` is set to for this protocol."""
        raise NotImplementedError

    def parse(self, path: str, body: dict[str, Any]) -> Parsed:
        raise NotImplementedError

    def envelope(self, model: str, text: str, tokens_in: int, tokens_out: int) -> dict[str, Any]:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ handling

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            self._serve(handler)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        with self._lock:
            self.requests += 1
            fault = self._faults.popleft() if self._faults else None
        try:
            parsed = self.parse(handler.path, json.loads(raw))
        except (KeyError, ValueError, TypeError) as exc:
            self._send(handler, 400, self.error_body(400, f"bad request: {exc}"))
            return
        question = answerer.question_of(parsed.schema)
        with self._lock:
            self.log.append(
                {"question": question, "fault": fault, "path": handler.path, "n_images": len(parsed.images)}
            )
        time.sleep(self.latency_s + (0.3 if fault == "latency" else 0.0))
        if fault == "hang":
            time.sleep(self.hang_s)
            handler.close_connection = True
            return
        if fault == "rate_limit":
            headers = {"Retry-After": f"{self.retry_after_s:g}"}
            self._send(handler, 429, self.error_body(429, "rate limited, slow down"), headers)
            return
        if fault == "unauthorized":
            self._send(handler, 401, self.error_body(401, "invalid API key"))
            return
        if fault == "server_error":
            self._send(handler, 500, self.error_body(500, "internal error"))
            return
        text = self._answer_text(question, parsed, fault)
        tokens_in = len(parsed.prompt) // 4 + 258 * len(parsed.images)
        self._send(handler, 200, self.envelope(parsed.model, text, tokens_in, max(1, len(text) // 4)))

    def _answer_text(self, question: str, parsed: Parsed, fault: Fault | None) -> str:
        images = [answerer.decode(b) for b in parsed.images] if self.analyse else []
        if self.analyse:
            value = answerer.answer(question, images, parsed.prompt, parsed.schema, self.profile)
        else:
            value = _canned(question, parsed.schema)
        text = json.dumps(value)
        if fault == "truncated":
            return text[: max(1, len(text) // 2)]
        if fault == "invalid_json":
            return "Sure! Here is what I see: tissue, mostly sharp."
        if fault == "empty":
            return ""
        if fault == "wrong_keys":
            return _rename_keys(text, self.profile)
        if fault == "out_of_range":
            return json.dumps(_push_out_of_range(value, self.profile))
        return text

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to tell it


def _push_out_of_range(value: Any, profile: ModelProfile) -> Any:
    """The first box/point far outside 0-1000 (must be dropped), the rest overshooting a little (clamped)."""
    if not isinstance(value, dict):
        return value
    for list_key, coord_key in (("boxes", profile.box_key), ("points", profile.point_key)):
        for i, item in enumerate(value.get(list_key) or []):
            coords = item[coord_key]
            item[coord_key] = (
                [c * 5 + 2000 for c in coords] if i == 0 else [c + 60 if c > 500 else c - 60 for c in coords]
            )
    return value


def _rename_keys(text: str, profile: ModelProfile) -> str:
    """Wrong key names everywhere a model might put them: coordinates and labels."""
    for old in (
        profile.box_key,
        profile.point_key,
        "labels",
        "precision_grade",
        "recall_grade",
        "precision_pct",
    ):
        text = text.replace(f'"{old}"', f'"{old}_x"')
    if text.startswith('{"tissue"'):
        text = text.replace('"tissue"', '"tissue_patches"').replace('"background"', '"background_patches"')
    return text


def _canned(question: str, schema: dict[str, Any]) -> Any:
    """A fixed valid answer, for throughput runs that must not measure image analysis."""
    if question == "patch_labels":
        n = answerer._labels_wanted(schema)
        return {"labels": [{"index": i + 1, "label": "tissue", "focus": "sharp"} for i in range(n)]}
    return {
        "boxes": [],
        "points": [],
        "tissue": [1],
        "background": [],
        "precision_pct": 99,
        "precision_grade": 1,
        "recall_pct": 99,
        "recall_grade": 1,
        "notes": "",
    }


@dataclass
class FakeOpenAIServer(FakeServer):
    """OpenAI chat completions (what vLLM serves). Default profile: Qwen3-VL."""

    profile: ModelProfile = field(default_factory=lambda: PROFILES["qwen3-vl"])

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def parse(self, path: str, body: dict[str, Any]) -> Parsed:
        if not path.rstrip("/").endswith("/chat/completions"):
            raise ValueError(f"unknown path {path}")
        prompt, images = "", []
        for part in body["messages"][-1]["content"]:
            if part["type"] == "text":
                prompt += part["text"]
            elif part["type"] == "image_url":
                images.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        return Parsed(model=body["model"], prompt=prompt, images=images, schema=schema)

    def envelope(self, model: str, text: str, tokens_in: int, tokens_out: int) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
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
        return Parsed(model=found.group(1), prompt=prompt, images=images, schema=schema)

    def envelope(self, model: str, text: str, tokens_in: int, tokens_out: int) -> dict[str, Any]:
        return {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": tokens_in,
                "candidatesTokenCount": tokens_out,
                "totalTokenCount": tokens_in + tokens_out,
            },
            "modelVersion": model,
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED"}
        return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
