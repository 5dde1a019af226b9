"""Policy loading, validation, hashing and overrides; the price table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tissue_oracle.policies.policy import BUILTIN_POLICIES, Policy, load_policy
from tissue_oracle.policies.prices import price_for
from tissue_oracle.tools.errors import ConfigError


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_builtin_policies_load_and_carry_the_paper_stage_parameters(name: str) -> None:
    policy = load_policy(name)
    assert policy.name == name
    assert policy.thumbnail.downsample == 64
    assert (policy.ground.pad_fraction, policy.ground.merge_fraction) == (0.25, 0.2)
    assert (policy.ground.max_box_fraction, policy.ground.retries) == (0.6, 3)
    assert (policy.cluster.k_global, policy.cluster.k_local) == (2, 3)
    assert (policy.classify.patch_size, policy.classify.gate_fraction) == (512, 0.05)
    assert (policy.classify.max_tokens, policy.ground.send_size) == (256, 1024)
    assert (policy.classify.max_in_flight, policy.classify.timeout_s) == (16, 120.0)
    assert policy.autocontext.top_k == 1
    assert (policy.clean.min_tissue_patches, policy.clean.max_hole_patches) == (8, 10)
    assert policy.clean.connectivity == 4


def test_paper_uses_qwen_oracle_and_gemini_reviewer_default_is_classical() -> None:
    paper, default = load_policy("paper"), load_policy("default")
    assert paper.roles.oracle.startswith("openai:Qwen/Qwen3-VL")
    assert paper.roles.reviewer.startswith("gemini:")
    assert paper.roles.classifier_spec == paper.roles.oracle
    assert {default.roles.oracle, default.roles.reviewer, default.roles.classifier_spec} == {"classical"}


def test_unknown_name_lists_the_known_policies() -> None:
    with pytest.raises(ConfigError, match="paper, default"):
        load_policy("papper")


def test_invalid_field_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nreview:\n  threshold: 7\n")
    with pytest.raises(ConfigError) as info:
        load_policy(bad)
    assert str(bad) in str(info.value)
    assert "review.threshold" in str(info.value)


def test_typo_in_a_key_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("classify:\n  gate_fracton: 0.1\n")
    with pytest.raises(ConfigError, match=r"classify\.gate_fracton"):
        load_policy(bad)


@pytest.mark.parametrize("text", ["- a\n- b\n", "roles: [\n", ""])
def test_non_mapping_or_broken_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_policy(bad)


def test_cascade_needs_a_student(tmp_path: Path) -> None:
    bad = tmp_path / "cascade.yaml"
    bad.write_text("cascade:\n  enabled: true\n")
    with pytest.raises(ConfigError, match="cascade"):
        load_policy(bad)


def test_hash_is_canonical_and_changes_with_any_parameter(tmp_path: Path) -> None:
    policy = load_policy("default")
    copy = tmp_path / "copy.yaml"
    copy.write_text(policy.to_yaml())
    assert load_policy(copy).policy_hash == policy.policy_hash
    changed = policy.with_updates({"clean.max_hole_patches": 11})
    assert changed.policy_hash != policy.policy_hash
    assert Policy().policy_hash != policy.policy_hash


def test_overrides_are_validated_and_unknown_fields_rejected() -> None:
    policy = load_policy("paper").with_updates({"roles.reviewer": "classical", "budgets.run.usd": 2.5})
    assert policy.roles.reviewer == "classical" and policy.budgets.run.usd == 2.5
    with pytest.raises(ConfigError, match=r"budgets\.run\.dollars"):
        policy.with_updates({"budgets.run.dollars": 1})
    with pytest.raises(ConfigError, match=r"budgets\.run\.calls"):
        policy.with_updates({"budgets.run.calls": -1})


def test_prices() -> None:
    assert price_for("classical").cost(10**6, 10**6) == 0
    assert price_for("openai:Qwen/Qwen3-VL-8B-Instruct", base_url="http://127.0.0.1:8000/v1").cost(1, 1) == 0
    pro = price_for("gemini:gemini-2.5-pro")
    assert pro.cost(1_000_000, 100_000) == pytest.approx(1.25 + 1.0)
    assert price_for("gemini:gemini-2.5-pro-preview-06-05") == pro
    assert price_for("gemini:gemini-2.5-flash-lite") != price_for("gemini:gemini-2.5-flash")
    with pytest.raises(ConfigError, match="no price"):
        price_for("gemini:gemini-9-ultra")
