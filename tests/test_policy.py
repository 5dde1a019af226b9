"""Policy loading, validation, hashing and overrides; the price table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tissue_oracle.policies.policy import BUILTIN_POLICIES, Policy, load_policy
from tissue_oracle.policies.prices import image_token_bound, price_for
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.schemas import ModelPrice


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
    pro = price_for("gemini:gemini-2.5-pro")
    assert pro.known and pro.cost(1_000_000, 100_000) == pytest.approx(1.25 + 1.0)  # base tier
    assert price_for("gemini:gemini-2.5-pro-preview-06-05") == pro
    assert price_for("gemini:gemini-2.5-flash-lite") != price_for("gemini:gemini-2.5-flash")
    assert price_for("gemini:gemini-3-pro-preview").known  # the seed's Gemini 3 models are priced
    # A model nobody prices is unknown (recorded as cost None), not refused and not free...
    unknown = price_for("openai:Qwen/Qwen3-VL-8B-Instruct", base_url="http://127.0.0.1:8000/v1")
    assert not unknown.known and unknown.recorded_cost(10, 10) is None
    assert not price_for("gemini:gemini-9-ultra").known
    # ...unless the user says it is self-hosted, or gives its price.
    assert price_for("openai:Qwen/x", base_url="http://h/v1", setting="self-hosted").recorded_cost(9, 9) == 0
    given = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    assert price_for("openai:Qwen/x", base_url="http://h/v1", setting=given) == given
    # A gateway relaying a hosted model is priced, not $0 (the USD cap must bind).
    assert price_for("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1").input_per_mtok > 0


def test_unknown_price_is_refused_only_under_a_usd_cap() -> None:
    from tissue_oracle.agent.oracle_setup import build_oracles

    policy = load_policy("default").with_updates({"roles.oracle": "openai:Qwen/Qwen3-VL-8B-Instruct"})
    oracles = build_oracles(policy, base_urls={"*": "http://127.0.0.1:9/v1"})
    assert oracles.notes and "self-hosted" in oracles.notes[0]
    with pytest.raises(ConfigError, match="USD cap"):
        build_oracles(policy.with_updates({"budgets.run.usd": 1.0}), base_urls={"*": "http://127.0.0.1:9/v1"})
    hosted = policy.with_updates(
        {"budgets.run.usd": 1.0, "models": {"openai:Qwen/*": {"price": "self-hosted"}}}
    )
    assert build_oracles(hosted, base_urls={"*": "http://127.0.0.1:9/v1"}).notes == []


def test_image_token_bound_covers_each_priced_family() -> None:
    assert image_token_bound("gemini:gemini-3-pro-preview", 512, 512) >= 1120  # default media resolution
    assert image_token_bound("openai:gpt-4o-mini", 512, 512) >= 2833 + 5667
    assert image_token_bound("openai:gpt-4o", 1024, 1024) >= 765  # OpenAI's own example
    assert image_token_bound("openai:Qwen/x", 512, 512) >= (512 // 28) ** 2
