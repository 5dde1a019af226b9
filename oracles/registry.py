"""Spec strings to oracles: ``classical``, ``openai:MODEL``, ``gemini:MODEL``, ``student:PATH``, plug-ins.

A spec is ``NAME`` or ``NAME:ARGUMENT``. Built-in names are a table below; third-party backends
register a factory under the entry-point group ``tissue_oracle.oracles``::

    [project.entry-points."tissue_oracle.oracles"]
    mybackend = "mypkg.oracle:build"      # build(argument: str, **options) -> Oracle

``replay:PATH`` needs the audit store, so the agent resolves it (``agent/replay_setup.py``)
before it reaches here. Heavy modules (SDKs, torch) are imported only when their backend is
built, so listing or building ``classical`` stays instant.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any

from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import Oracle
from tissue_oracle.tools.schemas import ModelPrice

ENTRY_POINT_GROUP = "tissue_oracle.oracles"

Factory = Callable[..., Oracle]


def _classical(argument: str, **options: Any) -> Oracle:
    from tissue_oracle.oracles.classical import ClassicalOracle

    if argument:
        raise ConfigError(f"'classical' takes no argument, got 'classical:{argument}'. Write 'classical'.")
    options.pop("base_url", None)
    options.pop("price", None)
    return ClassicalOracle(**options)


def _vlm(family: str) -> Factory:
    def build(argument: str, **options: Any) -> Oracle:
        if not argument:
            raise ConfigError(f"{family!r} needs a model name, e.g. '{family}:MODEL'.")
        from tissue_oracle.oracles.vlm import build_vlm_oracle

        return build_vlm_oracle(family, argument, **options)

    return build


def _student(argument: str, **options: Any) -> Oracle:
    if not argument:
        raise ConfigError("'student' needs a checkpoint path, e.g. 'student:runs/student.pt'.")
    options.pop("base_url", None)
    options.pop("price", None)
    module = importlib.import_module("tissue_oracle.oracles.student")
    built: Oracle = module.build(argument, **options)
    return built


def _replay(argument: str, **options: Any) -> Oracle:
    raise ConfigError(
        f"'replay:{argument}' is resolved by the agent, which opens the audit store "
        "(tissue_oracle.agent.replay_setup). Pass the spec to the CLI or the controller, not to build_oracle."
    )


BUILTINS: dict[str, Factory] = {
    "classical": _classical,
    "openai": _vlm("openai"),
    "gemini": _vlm("gemini"),
    "student": _student,
    "replay": _replay,
}


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_backends() -> list[str]:
    """Every backend name a spec may start with: the built-ins, then installed plug-ins."""
    return list(BUILTINS) + sorted(set(_plugins()) - set(BUILTINS))


def build_oracle(
    spec: str, *, base_url: str | None = None, price: ModelPrice | None = None, **options: Any
) -> Oracle:
    """The oracle a spec string names.

    ``base_url`` points ``openai:`` at any OpenAI-compatible server (vLLM) and ``gemini:`` at a
    proxy or test server; ``price`` turns the server's token counts into USD. Other options go to
    the backend (``profile=`` overrides the model profile; ``max_in_flight``, ``retries``,
    ``timeout_s``, ``max_tokens``, ``image_max_side`` for VLMs). Raises ``ConfigError`` naming
    the known backends when the name is unknown.
    """
    name, _, argument = spec.strip().partition(":")
    factory: Factory | None = BUILTINS.get(name)
    if factory is None:
        entry = _plugins().get(name)
        if entry is None:
            known = ", ".join(repr(n) for n in known_backends())
            raise ConfigError(
                f"unknown oracle backend {name!r} in spec {spec!r}. Known backends: {known}; "
                f"plug-ins register under the entry-point group {ENTRY_POINT_GROUP!r}."
            )
        try:
            factory = entry.load()
        except Exception as exc:
            raise ConfigError(f"oracle plug-in {name!r} ({entry.value}) failed to load: {exc}") from exc
    oracle = factory(argument, base_url=base_url, price=price, **options)
    if not isinstance(oracle, Oracle):
        raise ConfigError(f"backend {name!r} built {type(oracle).__name__!r}, which is not an Oracle.")
    return oracle
