"""A loopback OpenAI-compatible server that plans with real ``tool_calls`` responses (no LLM).

It speaks ``POST /v1/chat/completions`` with ``tools`` as OpenAI documents it (API reference,
"Create chat completion": an assistant message with ``content: null`` and ``tool_calls`` of
``{"id", "type": "function", "function": {"name", "arguments": "<JSON string>"}}``, and
``finish_reason: "tool_calls"``; tool results come back as ``{"role": "tool", "tool_call_id",
"content"}`` messages). vLLM serves the same shape with ``--enable-auto-tool-choice``
(docs.vllm.ai, "Tool Calling"). What it answers:

- ``policy=``: the scripted policy imitator (``bench.fakes.scripted_planner``), rebuilt on every
  request from the conversation it is sent, so a whole slide is planned over the wire;
- ``script=``: fixed steps, one per assistant turn: ``{"tool": name, "args": {...}}`` or
  ``{"text": "..."}`` (a plain answer with no tool call); past the end it answers text.

Token counts are a length estimate (4 characters a token), not a model's bill. Faults from
``FakeServer.inject`` (``server_error``, ``rate_limit``, ``unauthorized``, ``hang``) apply too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tissue_oracle.bench.fakes.scripted_planner import Event, imitate
from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.policies.policy import Policy


@dataclass
class FakeToolCallingServer(FakeOpenAIServer):
    """See the module docstring. ``bodies`` keeps every request body, for assertions."""

    policy: Policy | None = None
    script: list[dict[str, Any]] | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            fault = self._faults.popleft() if self._faults else None
        if not handler.path.rstrip("/").endswith("/chat/completions"):
            self._send(handler, 404, self.error_body(404, f"unknown path {handler.path}"))
            return
        if fault == "hang":
            time.sleep(self.hang_s)
            handler.close_connection = True
            return
        if fault in ("server_error", "rate_limit", "unauthorized"):
            status = {"server_error": 500, "rate_limit": 429, "unauthorized": 401}[fault]
            self._send(handler, status, self.error_body(status, fault.replace("_", " ")))
            return
        step = self._step(body["messages"])
        tokens_in = max(1, len(json.dumps(body)) // 4)
        self._send(handler, 200, self._completion(body["model"], step, tokens_in))

    def _step(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        if self.policy is not None:
            name, args = imitate(self.policy, events_from_openai(messages))
            return {"tool": name, "args": args}
        turn = sum(m.get("role") == "assistant" for m in messages)
        script = self.script or []
        return script[turn] if turn < len(script) else {"text": "I have nothing more to do."}

    def _completion(self, model: str, step: dict[str, Any], tokens_in: int) -> dict[str, Any]:
        if "tool" in step:
            arguments = json.dumps(step.get("args", {}))
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{self.requests}",
                        "type": "function",
                        "function": {"name": step["tool"], "arguments": arguments},
                    }
                ],
            }
            finish, tokens_out = "tool_calls", max(1, (len(step["tool"]) + len(arguments)) // 4)
        else:
            message = {"role": "assistant", "content": step["text"]}
            finish, tokens_out = "stop", max(1, len(step["text"]) // 4)
        return {
            "id": f"chatcmpl-fake-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
        }

    def offered_tools(self, request: int = -1) -> list[str]:
        """The tool names one request offered the model (default: the last request)."""
        return [t["function"]["name"] for t in self.bodies[request].get("tools", [])]


def events_from_openai(messages: list[dict[str, Any]]) -> list[Event]:
    """OpenAI chat messages as imitator events: each tool call made, each tool result that is JSON."""
    events: list[Event] = []
    names: dict[str, str] = {}
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                names[call["id"]] = call["function"]["name"]
                events.append(("call", call["function"]["name"], None))
        elif message.get("role") == "tool":
            try:
                result = json.loads(message.get("content") or "")
            except ValueError:
                continue  # a retry prompt (the tool refused the call), not a result
            if isinstance(result, dict):
                events.append(("result", names.get(message.get("tool_call_id", ""), ""), result))
    return events
