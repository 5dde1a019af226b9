"""The soak's fake endpoint: the loopback OpenAI server with a random fault mix and a timed log.

Each request draws at most one fault from ``mix`` (seeded, independent per request): by default
10% ``server_error`` (500), 5% ``rate_limit`` (429 + Retry-After), 5% ``invalid_json`` (a 200
whose text is not JSON; billed, as a real endpoint bills any answer) and 2% ``hang`` (no answer
until after the client's timeout). The behaviour of each fault, and its source, is the fake
server's (``bench/fakes/server.py``). Every request is logged with its body hash, the fault, the
status sent and when handling began and ended, so the soak can tell what was paid, what was in
flight at a kill, and what was asked twice.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.bench.fakes.server_base import Fault

DEFAULT_MIX: dict[Fault, float] = {
    "server_error": 0.10,
    "rate_limit": 0.05,
    "invalid_json": 0.05,
    "hang": 0.02,
}


@dataclass(kw_only=True)
class Served:
    """One request as the server saw it."""

    body_sha256: str
    fault: str | None
    status: int | None
    """HTTP status sent, or None when nothing was sent (a hang, or the client had gone)."""
    began: float
    ended: float | None = None
    """``time.time()`` when the response was written (or the hang gave up)."""


@dataclass
class FaultyOpenAIServer(FakeOpenAIServer):
    """``FakeOpenAIServer`` drawing one fault per request from ``mix``; see the module doc."""

    mix: dict[Fault, float] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)

    def start(self) -> FaultyOpenAIServer:
        super().start()
        return self

    def __enter__(self) -> FaultyOpenAIServer:
        return self.start()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            draw = self._rng.random()
        fault: Fault | None = None
        for name, share in self.mix.items():
            if draw < share:
                fault = name
                break
            draw -= share
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        entry = Served(
            body_sha256=hashlib.sha256(raw).hexdigest(), fault=fault, status=None, began=time.time()
        )
        with self._lock:
            self.served.append(entry)
            if fault is not None:
                self._faults.appendleft(fault)  # drawn i.i.d., so which thread pops it doesn't matter
        self._local.entry = entry
        handler.rfile = io.BytesIO(raw)  # the parent reads the body again
        try:
            super()._serve(handler)
        finally:
            entry.ended = time.time()

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        entry = getattr(self._local, "entry", None)
        if entry is not None:
            entry.status = status
        super()._send(handler, status, body, headers)
