"""Roles to oracles: the policy's spec strings, overridden from the command line, built once per run.

Roles are independent: the paper asks Qwen3-VL (through vLLM) for boxes and patch labels and
Gemini for reviews, and any role can be any backend. Roles that name the same spec (with the
same call settings) share one oracle, so a backend's bound on calls in flight holds across
roles. ``replay:PATH`` needs the audit store and is built by ``agent.replay_setup``; everything
else by the oracle registry.

A bare ``--base-url`` belongs to ``openai:`` specs only (a vLLM box speaks chat completions, not
Gemini's ``generateContent``); ``gemini:`` uses ``gemini=URL``, else ``GOOGLE_GEMINI_BASE_URL``,
else Google. Call settings (temperature, thinking, answer cap, price) come from the policy's
``models`` and ``role_settings`` (``policies.model_settings``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tissue_oracle.agent.call_settings import ResolvedSettings, resolve_settings
from tissue_oracle.oracles.routing import Routes, resolve_routes
from tissue_oracle.policies.policy import Policy
from tissue_oracle.policies.prices import FREE, FREE_BACKENDS, price_for, split_spec, unknown_price_advice
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import VLM_BACKENDS, Oracle
from tissue_oracle.tools.schemas import ModelPrice, Question, Role

#: The roles the controller asks; ``planner`` drives tools and is built by the planner itself.
CONTROLLER_ROLES: tuple[Role, ...] = ("oracle", "classifier", "reviewer")
#: Backends that speak to a model server and take transport options from the policy.


@dataclass(kw_only=True)
class OracleSet:
    """The built oracle for each role, with the spec and price it came from."""

    by_role: dict[Role, Oracle]
    specs: dict[Role, str]
    prices: dict[Role, ModelPrice]
    attempts: dict[Role, int]
    """Most attempts one question can make on each role's backend (for budget reservations)."""
    routes: Routes = field(default_factory=dict)
    """Questions a role's backend can't answer and the role that answers them (``oracles.routing``)."""
    notes: list[str] = field(default_factory=list)
    """Warnings for the user (e.g. a model whose price is unknown)."""
    cascade_student: Oracle | None = None
    """``policy.cascade.student`` when the cascade is on: the controller puts it in front of the
    classifier, behind the slide's budget (``oracles.cascade.with_cascade``)."""
    cascade_threshold: float = 0.9
    _owned: list[Oracle] = field(default_factory=list, repr=False)

    def identities(self) -> dict[str, dict[str, Any]]:
        """Per role: spec, backend, model and ``is_vlm``, so classical output is labelled classical."""
        out: dict[str, dict[str, Any]] = {
            role: {"spec": self.specs[role], "backend": o.backend, "model": o.model, "is_vlm": o.is_vlm}
            for role, o in self.by_role.items()
        }
        if self.cascade_student is not None:
            s = self.cascade_student
            out["cascade_student"] = {
                "spec": f"{s.backend}:{s.model}",
                "backend": s.backend,
                "model": s.model,
                "is_vlm": s.is_vlm,
                "threshold": self.cascade_threshold,
            }
        return out

    @property
    def any_vlm(self) -> bool:
        return any(o.is_vlm for o in self.by_role.values())

    async def aclose(self) -> None:
        for oracle in self._owned:
            with contextlib.suppress(Exception):  # closing is best effort; the run's results are kept
                await oracle.aclose()


def role_specs(policy: Policy, overrides: Mapping[Role, str | None] | None = None) -> dict[Role, str]:
    """The spec of each controller role: the override where given, else the policy's."""
    specs: dict[Role, str] = {
        "oracle": policy.roles.oracle,
        "classifier": policy.roles.classifier_spec,
        "reviewer": policy.roles.reviewer,
    }
    for role, spec in (overrides or {}).items():
        if spec:
            specs[role] = spec.strip()
    # An overridden oracle carries the classifier along unless the classifier was set explicitly.
    if (
        (overrides or {}).get("oracle")
        and not (overrides or {}).get("classifier")
        and not policy.roles.classifier
    ):
        specs["classifier"] = specs["oracle"]
    return specs


def questions_asked(policy: Policy) -> dict[Role, set[Question]]:
    """The questions the controller will ask each role under ``policy``."""
    refine = policy.review.enabled and policy.review.max_rounds > 0  # Auto-context: points, rerank
    return {
        "oracle": {"boxes", "points"} if refine else {"boxes"},
        "classifier": {"patch_labels", "rerank"} if refine else {"patch_labels"},
        "reviewer": {"review"} if policy.review.enabled else set(),
    }


def base_url_for(spec: str, base_urls: Mapping[str, str] | None) -> str | None:
    """``base_urls`` maps a backend (``openai``, ``gemini``) or ``*`` (a bare URL) to a URL.

    A bare URL serves ``openai:`` only; ``gemini:`` without its own URL returns None, so the SDK
    uses ``GOOGLE_GEMINI_BASE_URL`` or Google's endpoint.
    """
    backend, _ = split_spec(spec)
    if not base_urls or backend not in VLM_BACKENDS:
        return None
    return base_urls.get(backend) or (base_urls.get("*") if backend == "openai" else None)


def parse_base_urls(values: list[str] | None) -> dict[str, str]:
    """``["http://h:8000/v1", "gemini=http://h:9000"]`` -> ``{"*": ..., "gemini": ...}``."""
    urls: dict[str, str] = {}
    for value in values or []:
        backend, sep, url = value.partition("=")
        if sep and backend in VLM_BACKENDS:
            urls[backend] = url
        elif sep and "://" not in backend:
            raise ConfigError(f"--base-url {value!r}: {backend!r} is not one of {sorted(VLM_BACKENDS)}")
        else:
            urls["*"] = value
    return urls


def _vlm_options(policy: Policy, settings: ResolvedSettings) -> dict[str, Any]:
    """Transport settings from the policy. One patch-labels question is one call of
    ``batch_size`` patches; the answer's cap covers the longest answer any question needs unless
    the model's settings name one; each question sends images at its stage's size."""
    c = policy.classify
    return {
        "max_in_flight": c.max_in_flight,
        "retries": c.retries,
        "timeout_s": c.timeout_s,
        "image_max_side": c.send_size,
        "image_sides": {
            "boxes": policy.ground.send_size,
            "patch_labels": c.send_size,
            "rerank": c.send_size,
            "points": policy.review.crop_size,
            "review": policy.review.crop_size,
        },
        "patch_batch": c.batch_size,
        "temperature": settings.temperature,
        "thinking": settings.thinking,
        "max_tokens": settings.max_output_tokens
        or max(
            c.max_tokens * c.batch_size,
            policy.ground.max_tokens,
            policy.review.max_tokens,
            policy.autocontext.max_tokens,
        ),
    }


def settings_for(spec: str, policy: Policy, role: Role) -> ResolvedSettings:
    """The call settings of ``role``'s model: family defaults, the policy's models, its role settings."""
    return resolve_settings(spec, policy.models, policy.role_settings.get(role))


def build_one(
    spec: str,
    policy: Policy,
    *,
    role: Role,
    base_urls: Mapping[str, str] | None = None,
    replaying: bool = False,
) -> tuple[Oracle, ModelPrice]:
    """Build one oracle from its spec. ``replay:AUDIT_DB`` replays the backend that served ``role``.

    ``replaying`` builds the recorded backend behind a replay: it never sends a request, so it
    needs no price (a self-hosted model replayed without its ``--base-url`` has none).
    """
    from tissue_oracle.oracles.registry import build_oracle

    backend, argument = split_spec(spec)
    if backend == "replay":
        from tissue_oracle.agent.replay_setup import build_replay_oracle

        def live(recorded: str) -> Oracle:
            return build_one(recorded, policy, role=role, base_urls=base_urls, replaying=True)[0]

        return build_replay_oracle(Path(argument), role, live), price_for(spec)
    base_url = base_url_for(spec, base_urls)
    settings = settings_for(spec, policy, role)
    price = FREE if replaying else price_for(spec, base_url=base_url, setting=settings.price)
    options = _vlm_options(policy, settings) if backend in VLM_BACKENDS else {}
    probed = probed_profile(spec, base_url) if backend in VLM_BACKENDS else None
    if probed is not None:
        options["profile"] = probed
    return build_oracle(spec, base_url=base_url, price=price, **options), price


def probed_profile(spec: str, base_url: str | None) -> str | None:
    """The coordinate profile ``tissue-oracle probe`` found for this model at this endpoint, if any."""
    from tissue_oracle.oracles.probe import endpoint_of, load_probe

    cached = load_probe(spec, endpoint_of(split_spec(spec)[0], base_url))
    profile = cached.get("profile") if cached else None
    return profile if isinstance(profile, str) else None


def build_oracles(
    policy: Policy,
    *,
    overrides: Mapping[Role, str | None] | None = None,
    base_urls: Mapping[str, str] | None = None,
) -> OracleSet:
    """One oracle per controller role; roles naming the same live spec share one instance.

    Raises ``ConfigError`` before any slide is read when a role can't answer a question the policy
    asks it and its fallback can't either (``oracles.routing``).
    """
    specs = role_specs(policy, overrides)
    built: dict[str, tuple[Oracle, ModelPrice]] = {}
    by_role: dict[Role, Oracle] = {}
    prices: dict[Role, ModelPrice] = {}
    for role, spec in specs.items():
        # A replay serves one role's recorded backend, so it is never shared between roles;
        # roles calling one model with different settings get one oracle each.
        key = (
            f"{role}|{spec}"
            if split_spec(spec)[0] == "replay"
            else f"{spec}|{settings_for(spec, policy, role)}"
        )
        if key not in built:
            built[key] = build_one(spec, policy, role=role, base_urls=base_urls)
        by_role[role], prices[role] = built[key]
    notes = _check_prices(policy, specs, prices)
    for spec in sorted(set(specs.values())):
        probed = probed_profile(spec, base_url_for(spec, base_urls))
        if probed is not None:
            notes.append(f"{spec}: coordinate profile {probed!r} from its cached probe (tissue-oracle probe)")
    owned = [oracle for oracle, _ in built.values()]
    student = None
    if policy.cascade.enabled and policy.cascade.student:
        # Student first, the classifier only for unsure patches (oracles.cascade); built once per run,
        # put in front of the budgeted classifier per slide by the controller.
        student, _ = build_one(policy.cascade.student, policy, role="classifier")
        if "patch_labels" not in student.questions:
            raise ConfigError(f"cascade.student {policy.cascade.student!r} does not answer 'patch_labels'")
        owned.append(student)
    routes = resolve_routes(by_role, questions_asked(policy), specs)
    return OracleSet(
        by_role=by_role,
        routes=routes,
        specs=specs,
        prices=prices,
        attempts={
            role: (1 if split_spec(spec)[0] in FREE_BACKENDS else policy.classify.retries + 1)
            for role, spec in specs.items()
        },
        notes=notes,
        cascade_student=student,
        cascade_threshold=policy.cascade.confidence,
        _owned=owned,
    )


def _check_prices(policy: Policy, specs: Mapping[Role, str], prices: Mapping[Role, ModelPrice]) -> list[str]:
    """Warnings for models with no known price; ``ConfigError`` when a USD cap could not bind."""
    unknown = sorted({specs[role] for role, price in prices.items() if not price.known})
    capped = policy.budgets.run.usd is not None or policy.budgets.slide.usd is not None
    if unknown and capped:
        raise ConfigError(
            "a USD cap is set but "
            + "; ".join(unknown_price_advice(spec) for spec in unknown)
            + " Or drop the USD cap (--max-usd / budgets.*.usd)."
        )
    return [unknown_price_advice(spec) for spec in unknown]
