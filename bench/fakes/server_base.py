"""The machinery every loopback fake VLM server shares: the socket, threads, fault queue, answers.

The protocols themselves (OpenAI chat completions, Gemini ``generateContent``) are in ``server``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args

from tissue_oracle.bench.fakes import answerer
from tissue_oracle.oracles.profiles import ModelProfile

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
    "length",
    "quota_window",
    "daily_quota",
]
FAULTS: tuple[Fault, ...] = get_args(Fault)
#: Faults that send no 200 answer (nothing a client would pay for).
_UNANSWERED: frozenset[Fault | None] = frozenset(
    {"hang", "rate_limit", "unauthorized", "server_error", "quota_window", "daily_quota"}
)


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # many clients connect at once (64+ in flight); the default 5 drops them


@dataclass
class Parsed:
    """What a request asked, independent of the protocol."""

    model: str
    prompt: str
    images: list[bytes]
    schema: dict[str, Any]
    max_output_tokens: int | None = None
    thinking: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None


@dataclass
class FakeServer:
    """Shared machinery: the socket, the thread, the fault queue and the answer text."""

    profile: ModelProfile
    latency_s: float = 0.0
    retry_after_s: float = 0.05
    hang_s: float = 2.0
    analyse: bool = True
    retry_delay_s: float = 0.5
    """Window a ``quota_window`` 429 asks the client to wait (RetryInfo.retryDelay)."""
    thought_tokens: int = 0
    """Tokens a thinking model spends thinking before it answers (0: it doesn't think)."""
    max_images: int | None = None
    """Images one prompt may carry (vLLM ``--limit-mm-per-prompt``); None: no limit."""
    requests: int = 0
    in_flight: int = 0
    max_in_flight_seen: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    fail_rate: float = 0.0
    """Fraction of requests (with no queued fault) answered 500, drawn from a seeded RNG. Servers
    fail this way now and then; OpenAI's error-code guide says to retry 500/503
    (https://platform.openai.com/docs/guides/error-codes), and the client does."""
    seed: int = 0
    _faults: deque[Fault] = field(default_factory=deque)
    _blocked_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

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

    def answered(self) -> Counter[str]:
        """How many times each distinct request body got a 200 answer (paid for, on a priced model)."""
        with self._lock:
            return Counter(
                e["body_sha256"] for e in self.log if "body_sha256" in e and e["fault"] not in _UNANSWERED
            )

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
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def not_found_body(self) -> dict[str, Any]:
        raise NotImplementedError

    def serves(self, path: str) -> bool:
        raise NotImplementedError

    def refusal(self, parsed: Parsed) -> tuple[int, dict[str, Any]] | None:
        """A standing refusal of this request by the service's own rules, or None."""
        return None

    def thinking_spent(self, parsed: Parsed) -> int:
        """Thought tokens this request spends (they count against its output cap)."""
        return 0

    def quota_body(self, *, daily: bool, delay_s: float) -> dict[str, Any]:
        return self.error_body(429, "rate limited, slow down")

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
            if fault is None and self.fail_rate and self._rng.random() < self.fail_rate:
                fault = "server_error"
        if not self.serves(handler.path):
            with self._lock:
                self.log.append({"question": "unknown", "fault": fault, "path": handler.path, "n_images": 0})
            self._send(handler, 404, self.not_found_body())
            return
        try:
            parsed = self.parse(handler.path, json.loads(raw))
        except (KeyError, ValueError, TypeError) as exc:
            self._send(handler, 400, self.error_body(400, f"bad request: {exc}"))
            return
        question = answerer.question_of(parsed.schema)
        with self._lock:
            self.log.append(
                {
                    "question": question,
                    "fault": fault,
                    "path": handler.path,
                    "n_images": len(parsed.images),
                    "max_output_tokens": parsed.max_output_tokens,
                    "thinking": parsed.thinking,
                    "temperature": parsed.temperature,
                    "body_sha256": hashlib.sha256(raw).hexdigest(),
                }
            )
        time.sleep(self.latency_s + (0.3 if fault == "latency" else 0.0))
        refused = self.refusal(parsed)
        if refused is not None:
            self._send(handler, *refused)
            return
        now = time.monotonic()
        if fault == "quota_window" or now < self._blocked_until:
            # Per-minute quota: refused until the window ends, however often the client asks.
            with self._lock:
                if fault == "quota_window":
                    self._blocked_until = now + self.retry_delay_s
                remaining = self._blocked_until - now
            self._send(handler, 429, self.quota_body(daily=False, delay_s=remaining))
            return
        if fault == "daily_quota":
            self._send(handler, 429, self.quota_body(daily=True, delay_s=33.0))
            return
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
        thoughts = self.thinking_spent(parsed)
        answer_tokens = max(1, len(text) // 4)
        cap = parsed.max_output_tokens
        finish = "stop"
        if fault == "length" or (cap is not None and thoughts + answer_tokens > cap):
            # The cap counts thoughts and answer together; what doesn't fit is cut
            # (python-genai#811: empty text, MAX_TOKENS, billed; OpenAI: finish_reason "length").
            room = 0 if cap is None else max(0, cap - thoughts)
            thoughts = thoughts if cap is None else min(thoughts, cap)
            text = text[: room * 4] if fault != "length" else text[: len(text) // 2]
            answer_tokens, finish = len(text) // 4, "length"
        body = self.envelope(parsed.model, text, tokens_in, answer_tokens, thoughts=thoughts, finish=finish)
        self._send(handler, 200, body)

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
