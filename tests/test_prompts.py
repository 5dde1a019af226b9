"""Prompt templates render with their variables, carry a stable hash, and unknown names are listed."""

from __future__ import annotations

import hashlib

import pytest

from tissue_oracle import prompts

EXPECTED = {
    "ground_boxes",
    "classify_patch",
    "classify_patch_fewshot",
    "point_ground",
    "rerank_exemplars",
    "review_mask",
    "repair_json",
}


def test_every_task_has_a_template() -> None:
    assert set(prompts.names()) >= EXPECTED


def test_render_fills_and_hashes_the_template() -> None:
    rule = "Coordinates are normalised to 0-1000 over the image."
    out = prompts.render(
        "ground_boxes", box_key="bbox_2d", box_format="[x1, y1, x2, y2]", coordinate_rule=rule
    )
    assert '"bbox_2d": [x1, y1, x2, y2]' in out.text and "$" not in out.text
    assert out.name == "ground_boxes"
    assert out.sha256 == hashlib.sha256(prompts.template_text("ground_boxes").encode()).hexdigest()
    again = prompts.render(
        "ground_boxes", box_key="box_2d", box_format="[y1, x1, y2, x2]", coordinate_rule=rule
    )
    assert again.sha256 == out.sha256 and again.text != out.text


def test_unknown_name_lists_the_templates() -> None:
    with pytest.raises(prompts.UnknownPromptError) as err:
        prompts.render("ground_box")
    assert "ground_boxes" in str(err.value) and "review_mask" in str(err.value)


def test_missing_variable_is_named() -> None:
    with pytest.raises(KeyError, match="box_format"):
        prompts.render("ground_boxes", box_key="bbox_2d", coordinate_rule="0-1000")
