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
from dataclasses import dataclass, replace
from typing import Any

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


async def attempt_question(
    *,
    ctx: CallContext,
    spec: CallSpec,
    transport: Transport,
    request: TransportRequest,
    validate: Callable[[Any], AnswerT],
    codec: WireCodec[AnswerT],
    policy: AttemptPolicy,
    price: ModelPrice | None,
    slots: asyncio.Semaphore,
) -> AnswerT:
    """Ask until a valid answer or the attempts run out; returns the answer with summed usage."""
    usage = Usage()
    repaired = False
    sent, row_spec = request, spec
    last = "no attempt made"
    for attempt in range(1, policy.retries + 2):
        started = time.perf_counter()
        try:
            async with slots:
                started = time.perf_counter()  # latency is the server's time, not the queue's
                response = await asyncio.wait_for(transport.send(sent), timeout=policy.timeout_s + 1.0)
        except (TransportError, TimeoutError) as exc:
            error = exc if isinstance(exc, TransportError) else TransportError("timed out", retryable=True)
            last = f"{transport.name}: {error}"
            record_attempt(ctx, row_spec, ok=False, attempt=attempt, error=last, latency_s=_since(started))
            if not error.retryable:
                raise OracleUnavailableError(
                    f"{spec.backend}:{spec.model} refused the request: {error}"
                ) from exc
            wait = error.retry_after_s
            if wait is not None and wait > policy.retry_after_max_s:
                raise OracleError(
                    f"{spec.backend}:{spec.model} asks to wait {wait:g} s before trying again, longer than "
                    f"the {policy.retry_after_max_s:g} s a question waits; last problem: {last}"
                ) from exc
            if attempt <= policy.retries:
                await asyncio.sleep(policy.backoff(attempt, error.retry_after_s))
            sent, row_spec = request, spec
            continue
        except Exception as exc:
            # A transport bug must not escape as a raw traceback: one row, then a clean error.
            last = f"{transport.name}: unexpected {type(exc).__name__}: {exc}"
            record_attempt(ctx, row_spec, ok=False, attempt=attempt, error=last, latency_s=_since(started))
            raise OracleError(f"{spec.backend}:{spec.model} failed: {last}") from exc
        cost = price.recorded_cost(response.input_tokens, response.output_tokens) if price else 0.0
        usage = usage + Usage(
            calls=1, input_tokens=response.input_tokens, output_tokens=response.output_tokens, usd=cost or 0.0
        )
        row = functools.partial(
            record_attempt,
            ctx,
            attempt=attempt,
            response_raw=response.text,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost_usd=cost,
        )
        try:
            answer = _validated(validate, response.text)
        except AnswerError as exc:
            if response.hit_output_cap:
                last = _cap_problem(response, sent)
                row(row_spec, ok=False, error=last, latency_s=_since(started))
                raise OracleError(f"{spec.backend}:{spec.model}: {last}") from exc
            last = f"unusable answer: {exc}"
            row(row_spec, ok=False, error=last, latency_s=_since(started))
            if repaired:
                sent, row_spec = request, spec
            else:
                repaired = True
                sent, row_spec = _repair(request, spec, response.text, str(exc))
            continue
        row(row_spec, ok=True, parsed_json=codec.dump(answer), latency_s=_since(started))
        return answer.model_copy(update={"usage": usage})
    raise OracleError(
        f"{spec.backend}:{spec.model} gave no usable {spec.question!r} answer after "
        f"{policy.retries + 1} attempts; last problem: {last}"
    )


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
