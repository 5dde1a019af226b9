"""The bounded attempt loop of one VLM question: retries, backoff, one JSON repair, one row per attempt.

- 429, 5xx, timeouts and connection failures are retried with jittered exponential backoff; a
  wait the server names (``Retry-After``, Gemini's ``RetryInfo``) is honoured instead, up to
  ``retry_after_max_s`` (a longer one ends the question: waiting inside a run won't help).
- An answer cut off by the output cap (``finish_reason`` ``length`` / ``MAX_TOKENS``, often
  thinking that ate the cap) that doesn't validate ends the question with that reason: the
  identical request would be cut off again, and each try is billed.
- A malformed or invalid answer gets one repair prompt (the task, the bad answer and what was
  wrong with it); further bad answers are plain retries.
- Other 4xx (bad key, unknown model) stop at once with ``OracleUnavailableError``.
- At most ``1 + retries`` attempts; then ``OracleError`` naming the last problem. Every attempt,
  failed or not, writes exactly one audit row.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic

from tissue_oracle import prompts
from tissue_oracle.oracles.answers import AnswerError, parse_json_text
from tissue_oracle.oracles.base import AnswerT, CallSpec, WireCodec, record_attempt
from tissue_oracle.oracles.transport import Transport, TransportError, TransportRequest, TransportResponse
from tissue_oracle.tools.errors import OracleError, OracleUnavailableError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import ModelPrice, Usage


@dataclass(kw_only=True)
class AttemptPolicy:
    """How hard one question is tried."""

    retries: int = 3
    """Attempts after the first (so at most ``1 + retries`` requests)."""
    timeout_s: float = 120.0
    """Seconds per request before it counts as a timeout."""
    backoff_base_s: float = 0.5
    """First backoff wait; doubles per retry, with jitter."""
    backoff_max_s: float = 20.0
    """Longest single backoff wait when the server names none."""
    retry_after_max_s: float = 120.0
    """Longest wait honoured when the server names one; longer ones end the question."""
    rng: random.Random | None = None
    """Jitter source (seeded in tests)."""

    def backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        rng = self.rng or random
        if retry_after_s is not None:
            return min(retry_after_s, self.retry_after_max_s) * (1.0 + 0.1 * rng.random())
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * rng.random())


@dataclass(kw_only=True)
class PendingQuestion(Generic[AnswerT]):
    """One question: where its rows go, the request, and how its answer is read."""

    ctx: CallContext
    """The caller's context: run, slide, stage, role and the recorder that gets one row per attempt."""
    spec: CallSpec
    """The question's row fields (template, hashes, request JSON)."""
    request: TransportRequest
    validate: Callable[[Any], AnswerT]
    """Parsed JSON -> the typed answer; raises ``AnswerError`` for an unusable one."""
    codec: WireCodec[AnswerT]


@dataclass(kw_only=True)
class Asking:
    """How one oracle asks: its transport, its attempt rules, its price and its in-flight bound."""

    transport: Transport
    policy: AttemptPolicy
    price: ModelPrice | None
    """None: the cost is unknown and recorded as None."""
    slots: asyncio.Semaphore
    """Bounds requests in flight on the backend; latency is measured once a slot is held."""


@dataclass(kw_only=True)
class _Tries:
    """The state of one question's attempts."""

    sent: TransportRequest
    """The request the next attempt sends (the repair prompt after one unusable answer)."""
    row_spec: CallSpec
    usage: Usage = field(default_factory=Usage)
    repaired: bool = False
    last: str = "no attempt made"
    """The last problem, for the final error."""


async def attempt_question(q: PendingQuestion[AnswerT], via: Asking) -> AnswerT:
    """Ask until a valid answer or the attempts run out; returns the answer with summed usage."""
    tries = _Tries(sent=q.request, row_spec=q.spec)
    for attempt in range(1, via.policy.retries + 2):
        started = time.perf_counter()
        try:
            async with via.slots:
                started = time.perf_counter()  # latency is the server's time, not the queue's
                response = await asyncio.wait_for(
                    via.transport.send(tries.sent), timeout=via.policy.timeout_s + 1.0
                )
        except (TransportError, TimeoutError) as exc:
            await _transport_failed(q, via, tries, attempt, started, exc)
            continue
        except Exception as exc:
            # A transport bug must not escape as a raw traceback: one row, then a clean error.
            tries.last = f"{via.transport.name}: unexpected {type(exc).__name__}: {exc}"
            _row(q, tries, attempt, ok=False, error=tries.last, latency_s=_since(started))
            raise OracleError(f"{q.spec.backend}:{q.spec.model} failed: {tries.last}") from exc
        answer = _answered(q, via, tries, attempt, started, response)
        if answer is not None:
            return answer
    raise OracleError(
        f"{q.spec.backend}:{q.spec.model} gave no usable {q.spec.question!r} answer after "
        f"{via.policy.retries + 1} attempts; last problem: {tries.last}"
    )


async def _transport_failed(
    q: PendingQuestion[Any], via: Asking, tries: _Tries, attempt: int, started: float, exc: Exception
) -> None:
    """Record a failed request; raise when retrying can't help, else wait before the next attempt."""
    error = exc if isinstance(exc, TransportError) else TransportError("timed out", retryable=True)
    tries.last = f"{via.transport.name}: {error}"
    _row(q, tries, attempt, ok=False, error=tries.last, latency_s=_since(started))
    name, limit = f"{q.spec.backend}:{q.spec.model}", via.policy.retry_after_max_s
    if not error.retryable:
        raise OracleUnavailableError(f"{name} refused the request: {error}") from exc
    wait = error.retry_after_s
    if wait is not None and wait > limit:
        raise OracleError(
            f"{name} asks to wait {wait:g} s before trying again, longer than "
            f"the {limit:g} s a question waits; last problem: {tries.last}"
        ) from exc
    if attempt <= via.policy.retries:
        await asyncio.sleep(via.policy.backoff(attempt, error.retry_after_s))
    tries.sent, tries.row_spec = q.request, q.spec


def _answered(
    q: PendingQuestion[AnswerT],
    via: Asking,
    tries: _Tries,
    attempt: int,
    started: float,
    response: TransportResponse,
) -> AnswerT | None:
    """Record an answered request: the valid answer (with the summed usage), or None after an
    unusable one (the next attempt sends the repair prompt once, then the plain request)."""
    cost = via.price.recorded_cost(response.input_tokens, response.output_tokens) if via.price else 0.0
    tries.usage = tries.usage + Usage(
        calls=1, input_tokens=response.input_tokens, output_tokens=response.output_tokens, usd=cost or 0.0
    )
    row = functools.partial(
        _row,
        q,
        tries,
        attempt,
        response_raw=response.text,
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        cost_usd=cost,
    )
    try:
        answer = _validated(q.validate, response.text)
    except AnswerError as exc:
        if response.hit_output_cap:
            tries.last = _cap_problem(response, tries.sent)
            row(ok=False, error=tries.last, latency_s=_since(started))
            raise OracleError(f"{q.spec.backend}:{q.spec.model}: {tries.last}") from exc
        tries.last = f"unusable answer: {exc}"
        row(ok=False, error=tries.last, latency_s=_since(started))
        if tries.repaired:
            tries.sent, tries.row_spec = q.request, q.spec
        else:
            tries.repaired = True
            tries.sent, tries.row_spec = _repair(q.request, q.spec, response.text, str(exc))
        return None
    row(ok=True, parsed_json=q.codec.dump(answer), latency_s=_since(started))
    return answer.model_copy(update={"usage": tries.usage})


def _row(q: PendingQuestion[Any], tries: _Tries, attempt: int, **fields: Any) -> None:
    """The attempt's one audit row, under the spec of the request it sent."""
    record_attempt(q.ctx, tries.row_spec, attempt=attempt, **fields)


def _validated(validate: Any, text: str) -> Any:
    """``validate(parse_json_text(text))``; a parser bug on a strange answer is an unusable answer
    (recorded, repaired, retried), never an exception past the oracle."""
    try:
        return validate(parse_json_text(text))
    except AnswerError:
        raise
    except Exception as exc:
        raise AnswerError(f"the answer could not be read ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _repair(
    request: TransportRequest, spec: CallSpec, bad: str, problem: str
) -> tuple[TransportRequest, CallSpec]:
    """The repair request (same images and schema) and its row spec (template ``repair_json``)."""
    rendered = prompts.render(
        "repair_json", original_prompt=request.prompt, problem=problem, bad_answer=bad[:2000]
    )
    repaired_spec = replace(spec, template=rendered.name, template_hash=rendered.sha256)
    return replace(request, prompt=rendered.text), repaired_spec


def _cap_problem(response: TransportResponse, request: TransportRequest) -> str:
    """Why an answer was cut off, and what to change (retrying the same request can't help)."""
    thinking = request.thinking.budget_tokens if request.thinking is not None else 0
    spent = f"{response.output_tokens} output tokens"
    if response.thought_tokens:
        spent += f", {response.thought_tokens} of them thinking"
    return (
        f"output cap reached (finish reason {response.finish_reason!r}, {spent}; answer cap "
        f"{request.max_tokens}, thinking allowance {thinking}) before a usable answer. Raise the "
        "model's max_output_tokens or lower its thinking in the policy's models section."
    )


def _since(started: float) -> float:
    return time.perf_counter() - started
