"""Roles to oracles: policy specs, command-line overrides, base URLs, shared instances."""

from __future__ import annotations

import pytest

from tissue_oracle.agent.oracle_setup import base_url_for, build_oracles, parse_base_urls, role_specs
from tissue_oracle.agent.summary import labelled_as
from tissue_oracle.oracles.vlm import VLMOracle
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.tools.errors import ConfigError


def test_overrides_replace_roles_independently_and_the_classifier_follows_the_oracle() -> None:
    paper = load_policy("paper")
    assert role_specs(paper) == {
        "oracle": "openai:Qwen/Qwen3-VL-8B-Instruct",
        "classifier": "openai:Qwen/Qwen3-VL-8B-Instruct",
        "reviewer": "gemini:gemini-2.5-pro",
    }
    specs = role_specs(paper, {"oracle": "classical", "reviewer": None})
    assert specs == {"oracle": "classical", "classifier": "classical", "reviewer": "gemini:gemini-2.5-pro"}
    specs = role_specs(paper, {"oracle": "classical", "classifier": "openai:x"})
    assert specs["classifier"] == "openai:x"


def test_base_urls_per_backend_or_for_all() -> None:
    urls = parse_base_urls(["http://h:8000/v1", "gemini=http://g:9000"])
    assert urls == {"*": "http://h:8000/v1", "gemini": "http://g:9000"}
    assert base_url_for("openai:Qwen/x", urls) == "http://h:8000/v1"
    assert base_url_for("gemini:gemini-2.5-pro", urls) == "http://g:9000"
    assert base_url_for("classical", urls) is None
    with pytest.raises(ConfigError, match="vllm"):
        parse_base_urls(["vllm=http://h"])


def test_roles_with_one_spec_share_one_oracle_and_are_labelled_classical() -> None:
    oracles = build_oracles(load_policy("default"))
    assert len({id(o) for o in oracles.by_role.values()}) == 1
    assert not oracles.any_vlm and labelled_as(oracles.by_role) == "classical (no VLM)"
    assert set(oracles.attempts.values()) == {1}
    assert all(o["spec"] == "classical" and o["is_vlm"] is False for o in oracles.identities().values())


def test_vlm_roles_get_transport_settings_and_prices_from_the_policy() -> None:
    policy = load_policy("paper").with_updates({"roles.reviewer": "classical", "classify.retries": 2})
    oracles = build_oracles(policy, base_urls={"openai": "http://127.0.0.1:9/v1"})
    vlm = oracles.by_role["oracle"]
    assert vlm.is_vlm and oracles.by_role["classifier"] is vlm
    assert oracles.attempts == {"oracle": 3, "classifier": 3, "reviewer": 1}
    assert oracles.prices["oracle"].cost(10**6, 10**6) == 0  # self-hosted through --base-url
    assert isinstance(vlm, VLMOracle) and vlm.patch_batch == policy.classify.batch_size
    assert vlm.retries == 2 and vlm.image_max_side == policy.classify.send_size
    assert labelled_as(oracles.by_role) == "VLM: openai:Qwen/Qwen3-VL-8B-Instruct"


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="classical"):
        build_oracles(load_policy("default"), overrides={"oracle": "nonsense:model"})
