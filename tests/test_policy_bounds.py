"""Policy numbers the store can't hold, infinities, and a policy without budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.policies.policy import DEFAULT_RUN_BUDGET, DEFAULT_SLIDE_BUDGET, load_policy
from tissue_oracle.tools.errors import ConfigError


def policy_file(tmp_path: Path, **sections: object) -> Path:
    data = load_policy("default").model_dump(mode="json")
    for dotted, value in sections.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("budgets__run__tokens", 10**23, "out of range"),
        ("budgets__run__usd", 1e23, "out of range"),
        ("budgets__slide__calls", 10**19, "out of range"),
        ("budgets__run__usd", float("inf"), "finite"),
        ("thumbnail__downsample", float("inf"), "finite"),
        ("classify__timeout_s", float("inf"), "finite"),
        ("classify__timeout_s", float("nan"), "finite"),
        ("clean__min_tissue_patches", 10**18, "out of range"),
    ],
)
def test_numbers_the_store_cant_hold_are_refused_at_load(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_policy(policy_file(tmp_path, **{field: value}))


def test_yaml_infinity_is_refused(tmp_path: Path) -> None:
    text = load_policy("default").to_yaml().replace("downsample: 64.0", "downsample: .inf")
    assert ".inf" in text
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match="downsample"):
        load_policy(tmp_path / "p.yaml")


def test_a_policy_without_budgets_gets_safe_caps(tmp_path: Path) -> None:
    loaded = load_policy(policy_file(tmp_path, budgets=...))
    assert loaded.budgets.slide == DEFAULT_SLIDE_BUDGET and loaded.budgets.run == DEFAULT_RUN_BUDGET
    assert DEFAULT_SLIDE_BUDGET.calls and DEFAULT_SLIDE_BUDGET.usd and DEFAULT_RUN_BUDGET.usd


def test_segment_says_which_caps_are_in_force(tmp_path: Path) -> None:
    slide = tmp_path / "a.png"
    Image.new("RGB", (256, 256), (240, 240, 240)).save(slide)
    path = policy_file(tmp_path, budgets=...)
    result = CliRunner().invoke(
        app, ["segment", str(slide), "--out", str(tmp_path / "o"), "--policy", str(path)]
    )
    assert "caps in force: per slide: 20000 calls, 10 USD; per run: 100 USD" in result.output
