"""The live planner: a pydantic-ai ``Agent`` that drives the stage tools for one slide, under the guard.

``run_planner`` gives the agent the slide's stage toolset behind :class:`GuardedToolset` (the
policy's allowed tools, with stage settings pinned to the policy) and drives the run one node
at a time, so :class:`PlanGuard` sees every request before it is sent and every response
before its tool calls run. Each turn (one model request) becomes one ``calls`` row with role
``planner`` and stage ``plan``: the request sent, the tool calls chosen, tokens and cost; a
turn the guard stopped carries ``ok = false`` and the reason. The turn's tokens and cost are
charged to the slide's budget ledger, reserved before the request is sent.

The planner ends a slide by calling ``finish_slide`` with a verdict per region. Whatever the
guard stopped, :class:`PlanOutcome` says where and why, and the controller finishes the slide
with the deterministic policy.

Specs: ``openai:MODEL`` (any OpenAI-compatible server with tool calling, e.g. vLLM; ``--base-url``
routes it) and ``gemini:MODEL``. Keys come from the environment, as for the oracles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic_ai import Agent, ModelRetry, RunContext, ToolOutput
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelRequest, ModelResponse, TextPart
from pydantic_ai.models import Model
from pydantic_ai.usage import UsageLimits

from tissue_oracle.agent.oracle_setup import base_url_for, settings_for
from tissue_oracle.agent.planner_guard import (
    FINISH_TOOL,
    GuardedToolset,
    GuardOverride,
    PlanGuard,
    PlanProgress,
    check_planner_policy,
    tool_calls,
)
from tissue_oracle.agent.planner_report import PlannerReport, SlideVerdict
from tissue_oracle.policies.ledger import Amount, BudgetLedger
from tissue_oracle.policies.policy import Policy
from tissue_oracle.policies.prices import price_for, split_spec
from tissue_oracle.prompts import render
from tissue_oracle.tools.errors import BudgetExceededError, ConfigError, SlideError
from tissue_oracle.tools.schemas import CallRecord, CallRecorder, ModelPrice
from tissue_oracle.tools.stage_deps import StageDeps
from tissue_oracle.tools.toolset import stage_toolset

#: Planner backends: tool-calling chat models.
PLANNER_BACKENDS: tuple[str, ...] = ("openai", "gemini")
#: Characters of a turn's request kept in its audit row (tool results can be long).
_REQUEST_CHARS = 20_000


@dataclass(kw_only=True)
class PlannerModel:
    """The model that plans, with the names and price its audit rows carry."""

    model: Model
    spec: str
    """``openai:MODEL`` / ``gemini:MODEL``, or a label such as ``function:scripted`` in tests."""
    price: ModelPrice
    close: Callable[[], Awaitable[Any]] | None = None
    """Closes the SDK client this object opened for the model, if any."""

    async def aclose(self) -> None:
        """Close the model's connections; call it on the loop that used them."""
        if self.close is not None:
            with contextlib.suppress(Exception):  # best effort: the slide's results are kept
                await self.close()


def build_planner_model(
    spec: str, *, policy: Policy | None = None, base_urls: Mapping[str, str] | None = None
) -> PlannerModel:
    """The pydantic-ai model a planner spec names; ``ConfigError`` naming what to do otherwise.

    Its price comes from the policy's ``models``/``role_settings`` (role ``planner``) or the price
    table, as for the oracles; an unknown price records cost as unknown.
    """
    backend, name = split_spec(spec)
    if backend not in PLANNER_BACKENDS or not name:
        raise ConfigError(
            f"planner spec {spec!r}: a planner is a tool-calling chat model, 'openai:MODEL' (any "
            "OpenAI-compatible server, e.g. vLLM with --base-url) or 'gemini:MODEL'."
        )
    base_url = base_url_for(spec, base_urls)
    setting = settings_for(spec, policy, "planner").price if policy is not None else None
    price = price_for(spec, base_url=base_url, setting=setting)
    if backend == "openai":
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        key = os.environ.get("OPENAI_API_KEY")
        if key is None and base_url is None:
            raise ConfigError(
                f"planner {spec!r} needs OPENAI_API_KEY in the environment, or --base-url for a "
                "self-hosted OpenAI-compatible server."
            )
        provider = OpenAIProvider(base_url=base_url, api_key=key or "EMPTY")
        model = OpenAIChatModel(name, provider=provider)
        return PlannerModel(model=model, spec=spec, price=price, close=provider.client.close)
    from pydantic_ai.models.google import GoogleModel
    from pydantic_ai.providers.google import GoogleProvider

    key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
    if not key:
        raise ConfigError(f"planner {spec!r} needs GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment.")
    provider_g = GoogleProvider(api_key=key, base_url=base_url)
    model_g = GoogleModel(name, provider=provider_g)
    return PlannerModel(model=model_g, spec=spec, price=price, close=provider_g.client.aio.aclose)


# --------------------------------------------------------------------------- the verdict


# --------------------------------------------------------------------------- the outcome


@dataclass(kw_only=True)
class PlanTurn:
    """One planner turn: the tool calls it chose (or its text), and what it cost."""

    turn: int
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    """0 when the price is unknown (``cost_known`` False)."""
    cost_known: bool = True

    def describe(self) -> str:
        chosen = ", ".join(f"{n}({_args_text(a)})" for n, a in self.calls)
        return chosen or f"text: {self.text[:120]!r}"


def _args_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


@dataclass(kw_only=True)
class PlanOutcome:
    """What the planner did on one slide, and whether the guard took the slide back."""

    spec: str
    turns: list[PlanTurn] = field(default_factory=list)
    verdict: SlideVerdict | None = None
    override: GuardOverride | None = None
    progress: PlanProgress = field(default_factory=PlanProgress)

    @property
    def finished_by(self) -> Literal["planner", "policy"]:
        return "planner" if self.override is None and self.verdict is not None else "policy"

    @property
    def input_tokens(self) -> int:
        return sum(t.input_tokens for t in self.turns)

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.turns)

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.turns)

    def report(self, *, kept: str) -> PlannerReport:
        o = self.override
        return PlannerReport(
            spec=self.spec,
            finished_by=self.finished_by,
            turns=len(self.turns),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            decisions=[f"turn {t.turn}: {t.describe()}" for t in self.turns],
            verdicts=list(self.verdict.regions) if self.verdict is not None else [],
            override=None if o is None else {"kind": o.kind, "turn": o.turn, "detail": o.detail},
            kept=kept,
        )


# --------------------------------------------------------------------------- the state it sees


def slide_state(deps: StageDeps, progress: PlanProgress, guard: PlanGuard, ledger: BudgetLedger) -> str:
    """The slide as the planner sees it before each turn: regions, coarse mask, grades, budgets."""
    ws = deps.workspace
    width, height = deps.slide.dimensions
    lines = [f"Slide: {width} x {height} level-0 pixels."]
    if not ws.boxes:
        lines.append("Regions: none yet (ground_boxes finds them).")
    for i, box in enumerate(ws.boxes):
        parts = [f"Region {i}: box x {box.x0}-{box.x1}, y {box.y0}-{box.y1}"]
        if ws.coarse is not None and i < len(ws.coarse.box_masks):
            parts.append(f"coarse tissue {ws.coarse.box_masks[i].coverage:.0%}")
        reviews = progress.grades.get(i, [])
        if reviews:
            shown = ["failed" if g is None else f"P{g.precision}/R{g.recall}" for g in reviews]
            parts.append(f"reviews (oldest first) {', '.join(shown)}")
        else:
            parts.append("not reviewed")
        parts.append(f"Auto-context rounds {progress.refinements.get(i, 0)}")
        lines.append("; ".join(parts) + ".")
    if ws.coarse is not None:
        lines.append(f"Coarse mask: {ws.coarse.coverage:.0%} of the thumbnail is tissue.")
    if ws.labels is not None:
        lines.append(f"Patch labels: {int(ws.labels.tissue.sum())} tissue patches.")
    gaps = progress.missing(guard.mandatory, len(ws.boxes))
    pending = [s for s in guard.mandatory if s not in progress.done]
    lines.append(f"Mandatory still to do: {'; '.join(gaps or pending) or 'nothing'}.")
    left = ledger.remaining()
    lines.append(f"Budget left: calls {_cap(left.calls)}, tokens {_cap(left.tokens)}, USD {_cap(left.usd)}.")
    p = guard.policy.planner
    lines.append(
        f"Planner: turn {guard.turns} of {p.max_turns}; tokens used {guard.tokens} of {_cap(p.max_tokens)}. "
        f"Tools: {', '.join(p.allowed_tools)}, {FINISH_TOOL}."
    )
    return "\n".join(lines)


def _cap(value: float | None) -> str:
    return "no cap" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


# --------------------------------------------------------------------------- the run


@dataclass(kw_only=True)
class PlanAudit:
    """Writes one ``calls`` row per planner turn."""

    recorder: CallRecorder
    planner: PlannerModel
    run_id: str
    slide_id: str
    template_hash: str

    def record(
        self,
        turn: PlanTurn,
        request: ModelRequest | None,
        response: ModelResponse | None,
        override: GuardOverride | None,
        latency_s: float,
    ) -> None:
        backend, model = split_spec(self.planner.spec)
        request_json = _messages_json(request)[:_REQUEST_CHARS]
        digest = hashlib.sha256(
            f"{self.run_id}|{self.slide_id}|{turn.turn}|{request_json}".encode()
        ).hexdigest()
        parsed = {
            "tool_calls": [{"tool": n, "args": a} for n, a in turn.calls],
            "text": turn.text,
            "guard": "ok" if override is None else override.kind,
        }
        self.recorder.record_call(
            CallRecord(
                run_id=self.run_id,
                slide_id=self.slide_id,
                stage="plan",
                role="planner",
                backend=backend,
                model=model,
                template="plan_slide",
                template_hash=self.template_hash,
                request_hash=digest,
                request_json=request_json,
                response_raw=None if response is None else _messages_json(response),
                parsed_json=json.dumps(parsed, default=str),
                ok=override is None,
                error=None if override is None else f"guard: {override.kind}: {override.detail}",
                attempt=turn.turn,
                latency_s=latency_s,
                input_tokens=turn.input_tokens,
                output_tokens=turn.output_tokens,
                cost_usd=turn.cost_usd if turn.cost_known else None,
            )
        )


def _messages_json(message: ModelRequest | ModelResponse | None) -> str:
    if message is None:
        return "{}"
    return ModelMessagesTypeAdapter.dump_json([message]).decode()


def _turn_of(index: int, response: ModelResponse, price: ModelPrice) -> PlanTurn:
    usage = response.usage
    calls = []
    for call in tool_calls(response):
        try:
            args = call.args_as_dict()
        except Exception:  # the guard judges malformed arguments; the trace keeps their text
            args = {"raw": str(call.args)}
        calls.append((call.tool_name, args))
    text = " ".join(p.content for p in response.parts if isinstance(p, TextPart)).strip()
    return PlanTurn(
        turn=index,
        calls=calls,
        text=text,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=price.cost(usage.input_tokens, usage.output_tokens),
        cost_known=price.known,
    )


def _reserve_turn(ledger: BudgetLedger, guard: PlanGuard, price: ModelPrice) -> Any:
    """Reserve one request and the planner's remaining token allowance; None when it doesn't fit."""
    cap = guard.policy.planner.max_tokens
    tokens = max(cap - guard.tokens, 0) if cap is not None else 0
    try:
        return ledger.reserve(calls=1, tokens=tokens, usd=price.cost(tokens, tokens))
    except BudgetExceededError:
        return None


def build_agent(
    planner: PlannerModel, toolset: GuardedToolset, state: Callable[[], str], policy: Policy, *, regions: Any
) -> Agent[StageDeps, SlideVerdict]:
    """The planning agent: stage tools behind the guard, the slide's state as instructions."""
    intro = render("plan_slide", threshold=policy.review.threshold, max_rounds=policy.review.max_rounds).text
    agent: Agent[StageDeps, SlideVerdict] = Agent(
        planner.model,
        deps_type=StageDeps,
        output_type=ToolOutput(
            SlideVerdict, name=FINISH_TOOL, description="Finish the slide with a verdict per region."
        ),
        toolsets=[toolset],
        instructions=intro,
        retries=2,
    )

    @agent.instructions
    def current_state() -> str:
        return state()

    @agent.output_validator
    def every_region(ctx: RunContext[StageDeps], verdict: SlideVerdict) -> SlideVerdict:
        count = regions()
        named = sorted({v.region for v in verdict.regions})
        if named != list(range(count)):
            raise ModelRetry(
                f"finish_slide needs exactly one verdict for each region {list(range(count))}; got {named}"
            )
        return verdict

    return agent


async def run_planner(
    planner: PlannerModel,
    *,
    policy: Policy,
    deps: StageDeps,
    ledger: BudgetLedger,
    recorder: CallRecorder,
    run_id: str,
    slide_id: str,
    timer: Any = None,
) -> PlanOutcome:
    """Let the planner drive the stage tools on ``deps.slide`` until it finishes or the guard stops it.

    Never raises for the planner's behaviour or its model's failures: the outcome's ``override``
    says what happened. Errors of the slide itself (``SlideError``) propagate.
    """
    check_planner_policy(policy)
    toolset = GuardedToolset.for_policy(stage_toolset(), policy, timer=timer)
    progress = toolset.progress
    outcome = PlanOutcome(spec=planner.spec, progress=progress)

    def regions() -> int:
        return len(deps.workspace.boxes)

    guard = PlanGuard(policy=policy, progress=progress, regions=regions)
    agent = build_agent(
        planner, toolset, lambda: slide_state(deps, progress, guard, ledger), policy, regions=regions
    )
    audit = PlanAudit(
        recorder=recorder,
        planner=planner,
        run_id=run_id,
        slide_id=slide_id,
        template_hash=render("plan_slide", threshold=0, max_rounds=0).sha256,
    )
    request: ModelRequest | None = None
    try:
        async with agent.iter(
            "Segment the tissue on this slide.", deps=deps, usage_limits=UsageLimits(request_limit=None)
        ) as run:
            node: Any = run.next_node
            while not Agent.is_end_node(node):
                if Agent.is_model_request_node(node):
                    reservation = _reserve_turn(ledger, guard, planner.price)
                    override = guard.before_request(slide_budget_ok=reservation is not None)
                    if override is not None:
                        if reservation is not None:
                            ledger.commit(reservation, Amount())
                        outcome.override = override
                        audit.record(PlanTurn(turn=guard.turns), node.request, None, override, 0.0)
                        return outcome
                    request, started = node.request, time.perf_counter()
                    try:
                        node = await run.next(node)
                    except BaseException:
                        ledger.commit(reservation, Amount())
                        raise
                    latency = time.perf_counter() - started
                    turn = _turn_of(guard.turns, node.model_response, planner.price)
                    ledger.commit(
                        reservation,
                        Amount(calls=1, tokens=turn.input_tokens + turn.output_tokens, usd=turn.cost_usd),
                    )
                    outcome.turns.append(turn)
                    override = guard.after_response(
                        node.model_response, turn.input_tokens + turn.output_tokens
                    )
                    audit.record(turn, request, node.model_response, override, latency)
                    if override is not None:
                        outcome.override = override
                        return outcome
                    continue
                node = await run.next(node)
            if run.result is not None:
                outcome.verdict = run.result.output
    except SlideError:
        raise
    except Exception as exc:  # the model or the protocol failed; the policy finishes the slide
        override = GuardOverride(
            kind="model_error", turn=guard.turns, detail=f"{type(exc).__name__}: {exc}"[:500]
        )
        outcome.override = override
        audit.record(PlanTurn(turn=guard.turns), request, None, override, 0.0)
    return outcome
