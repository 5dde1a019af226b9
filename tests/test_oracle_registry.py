"""Spec strings build the right backend; unknown names list the known ones."""

from __future__ import annotations

import importlib.metadata

import pytest

from tissue_oracle.oracles import registry
from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.oracles.registry import build_oracle, known_backends
from tissue_oracle.tools.errors import ConfigError


def test_classical_is_built_with_options() -> None:
    oracle = build_oracle("classical", tissue_fraction=0.2)
    assert isinstance(oracle, ClassicalOracle) and oracle.tissue_fraction == 0.2


def test_unknown_backend_lists_known_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_oracle("llava:7b")
    message = str(err.value)
    assert "'llava'" in message
    for name in ("classical", "openai", "gemini", "student", "replay"):
        assert repr(name) in message


@pytest.mark.parametrize("spec", ["classical:x", "openai", "gemini:", "student", "replay:audit.duckdb"])
def test_malformed_specs_say_what_to_do(spec: str) -> None:
    with pytest.raises(ConfigError):
        build_oracle(spec)


def test_entry_point_plugins_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party backend registered under the group is built through its factory."""
    entry = importlib.metadata.EntryPoint(
        name="myclassical",
        value="tissue_oracle.oracles.registry:_classical",
        group=registry.ENTRY_POINT_GROUP,
    )
    monkeypatch.setattr(registry, "_plugins", lambda: {"myclassical": entry})
    assert "myclassical" in known_backends()
    assert isinstance(build_oracle("myclassical"), ClassicalOracle)
