"""Stage settings are declared once, by the tools: each policy section holds its tools' own
settings model, and the controller and the planner read the same values back."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from tissue_oracle.agent.planner_guard import pinned_settings
from tissue_oracle.policies.policy import Policy, load_policy, stage_settings
from tissue_oracle.tools import stage_settings as tool_settings
from tissue_oracle.tools.classify_patches import ClassifyPatchesParams
from tissue_oracle.tools.clean import CleanInput
from tissue_oracle.tools.cluster_colours import ClusterColoursParams
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.ground_boxes import GroundBoxesParams
from tissue_oracle.tools.point_ground import PointGroundParams
from tissue_oracle.tools.rerank_exemplars import RerankExemplarsParams
from tissue_oracle.tools.review_mask import ReviewMaskParams

#: Policy section -> the tool settings models it holds, and the tool model built on each.
HELD: list[tuple[str, type[BaseModel], type[BaseModel]]] = [
    ("ground", tool_settings.GroundBoxesSettings, GroundBoxesParams),
    ("cluster", tool_settings.ClusterColoursSettings, ClusterColoursParams),
    ("classify", tool_settings.ClassifyPatchesSettings, ClassifyPatchesParams),
    ("review", tool_settings.ReviewMaskSettings, ReviewMaskParams),
    ("autocontext", tool_settings.PointGroundSettings, PointGroundParams),
    ("autocontext", tool_settings.RerankExemplarsSettings, RerankExemplarsParams),
    ("clean", tool_settings.CleanSettings, CleanInput),
]


@pytest.mark.parametrize(("section", "settings", "tool"), HELD, ids=[f"{s}-{m.__name__}" for s, m, _ in HELD])
def test_each_section_is_its_tools_settings_model(
    section: str, settings: type[BaseModel], tool: type[BaseModel]
) -> None:
    held = getattr(Policy(), section)
    assert isinstance(held, settings) and issubclass(tool, settings)
    for name, field in settings.model_fields.items():
        # one declaration: the policy's field is the tool's (same type, default, bounds and doc)
        assert repr(type(held).model_fields[name]) == repr(field)
        assert tool.model_fields[name].default == field.default


@pytest.mark.parametrize("name", ["paper", "default"])
def test_the_controller_and_the_planner_get_what_the_yaml_says(name: str) -> None:
    policy = load_policy(name)
    pinned = pinned_settings(policy)
    assert pinned["cluster_colours"]["background_rule"] == policy.cluster.background_rule
    assert pinned["clean"] == policy.clean.model_dump()
    assert pinned["ground_boxes"]["downsample"] == policy.thumbnail.downsample
    assert pinned["rerank_exemplars"]["top_k"] == policy.autocontext.top_k
    for tool, fields in pinned.items():
        model = {
            "ground_boxes": GroundBoxesParams, "cluster_colours": ClusterColoursParams,
            "classify_patches": ClassifyPatchesParams, "point_ground": PointGroundParams,
            "rerank_exemplars": RerankExemplarsParams, "review_mask": ReviewMaskParams,
        }.get(tool)  # fmt: skip
        if model is not None:
            model.model_validate(fields)  # every pinned value is a valid tool setting


def test_stage_settings_refuses_a_section_that_does_not_hold_the_model() -> None:
    with pytest.raises(TypeError, match="does not hold"):
        stage_settings(Policy().ground, tool_settings.CleanSettings)


@pytest.mark.parametrize("key", ["downsample", "role", "stop_on_repeat"])
def test_per_call_tool_fields_are_not_policy_keys(tmp_path: Path, key: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"ground:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=f"ground.{key}"):
        load_policy(path)


def test_sections_stay_frozen_and_validated() -> None:
    policy = load_policy("default")
    with pytest.raises(ValidationError):
        policy.ground.pad_fraction = 0.5  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"classify\.patch_size"):
        policy.with_updates({"classify.patch_size": 8})
