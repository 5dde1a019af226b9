"""Table-driven tests of the one norm1000 -> level-0 conversion per profile, and the tolerant parser."""

from __future__ import annotations

import pytest

from tissue_oracle.oracles import answers
from tissue_oracle.oracles.answers import AnswerError
from tissue_oracle.oracles.profiles import (
    PROFILES,
    ImageFrame,
    box_to_level0,
    level0_to_norm,
    point_to_level0,
    profile_for_model,
)
from tissue_oracle.tools.errors import ConfigError

FRAME = ImageFrame(x0=1000, y0=2000, width=4000, height=2000)

BOXES = [
    # profile, model's numbers, expected level-0 (x0, y0, x1, y1) or None (dropped)
    ("qwen3-vl", [0, 0, 1000, 1000], (1000, 2000, 5000, 4000)),
    ("qwen3-vl", [250, 500, 500, 1000], (2000, 3000, 3000, 4000)),
    ("gemini", [500, 250, 1000, 500], (2000, 3000, 3000, 4000)),
    ("generic", [250, 500, 500, 1000], (2000, 3000, 3000, 4000)),
    ("qwen3-vl", [500, 1000, 250, 500], (2000, 3000, 3000, 4000)),  # reversed corners put in order
    ("qwen3-vl", [-40, 0, 1060, 1000], (1000, 2000, 5000, 4000)),  # small overshoot clamped
    ("qwen3-vl", [0, 0, 3000, 1000], None),  # pixel coordinates, not norm1000: dropped
    ("qwen3-vl", [100, 100, 100, 400], None),  # zero width: dropped
    ("qwen3-vl", [1010, 0, 1050, 1000], None),  # entirely past the edge: empty after clamping
    ("qwen3-vl", [0, 0, 1000], None),  # wrong arity
    ("qwen3-vl", ["a", 0, 10, 10], None),  # not numbers
    ("gemini", [0, 0, float("nan"), 10], None),
]


@pytest.mark.parametrize(("profile", "values", "expected"), BOXES)
def test_box_conversion(profile: str, values: list[object], expected: tuple[int, ...] | None) -> None:
    assert box_to_level0(values, PROFILES[profile], FRAME) == expected  # type: ignore[index]


POINTS = [
    ("qwen3-vl", [500, 250], (3000, 2500)),
    ("gemini", [250, 500], (3000, 2500)),
    ("generic", [500, 250], (3000, 2500)),
    ("qwen3-vl", [1000, 1000], (4999, 3999)),  # the far edge stays inside the frame
    ("qwen3-vl", [-20, 1030], (1000, 3999)),
    ("qwen3-vl", [5000, 10], None),
    ("gemini", [True, 10], None),
]


@pytest.mark.parametrize(("profile", "values", "expected"), POINTS)
def test_point_conversion(profile: str, values: list[object], expected: tuple[int, int] | None) -> None:
    assert point_to_level0(values, PROFILES[profile], FRAME) == expected  # type: ignore[index]


def test_round_trip_through_norm1000() -> None:
    for x, y in [(1000, 2000), (3210, 3333), (4999, 3999)]:
        nx, ny = level0_to_norm(x, y, FRAME)
        back = point_to_level0([nx, ny], PROFILES["qwen3-vl"], FRAME)
        assert back is not None and abs(back[0] - x) <= 4 and abs(back[1] - y) <= 2


@pytest.mark.parametrize(
    ("model", "override", "profile"),
    [
        ("Qwen/Qwen3-VL-8B-Instruct", None, "qwen3-vl"),
        ("qwen3-vl-2b", None, "qwen3-vl"),
        ("gemini-2.5-pro", None, "gemini"),
        ("models/gemini-3-pro-preview", None, "gemini"),
        ("gpt-4.1-mini", None, "generic"),
        ("gpt-4.1-mini", "gemini", "gemini"),
    ],
)
def test_profile_from_model_name(model: str, override: str | None, profile: str) -> None:
    assert profile_for_model(model, override).name == profile


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(ConfigError, match="qwen3-vl"):
        profile_for_model("x", "llava")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ('Here you go: {"a": 1} hope this helps {"b": 2}', {"a": 1}),
        ("{'a': 'tissue', 'b': True}", {"a": "tissue", "b": True}),
        ('[{"bbox_2d": [1, 2, 3, 4]}]', [{"bbox_2d": [1, 2, 3, 4]}]),
    ],
)
def test_tolerant_parser_accepts(text: str, expected: object) -> None:
    assert answers.parse_json_text(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no json here", '{"labels": [{"index": 1, "label": "tis'])
def test_tolerant_parser_rejects(text: str) -> None:
    with pytest.raises(AnswerError):
        answers.parse_json_text(text)


def test_answer_validation_rules() -> None:
    qwen = PROFILES["qwen3-vl"]
    with pytest.raises(AnswerError, match="bbox_2d"):
        answers.boxes_from({"boxes": [{"box_2d": [0, 0, 10, 10]}]}, qwen, FRAME)
    assert answers.boxes_from({"boxes": []}, qwen, FRAME) == []
    assert answers.labels_from(
        {
            "labels": [
                {"index": 2, "label": "Background", "focus": "blurry"},
                {"index": 1, "label": "tissue", "focus": "sharp"},
            ]
        },
        2,
    ) == [("tissue", "sharp"), ("background", "mild_blur")]
    with pytest.raises(AnswerError):
        answers.labels_from({"labels": [{"label": "tissue"}]}, 2)
    with pytest.raises(AnswerError):
        answers.labels_from({"labels": [{"label": "fat"}]}, 1)
    assert answers.rerank_from({"tissue": [2, 1, 9], "background": [1]}, ["tissue", "tissue"], 1) == {
        "tissue": [1],
        "background": [],
    }
    grades = answers.grades_from({"precision_pct": 83, "recall_grade": 4, "recall_pct": 140})
    assert (grades.precision, grades.recall, grades.recall_pct) == (2, 4, 100.0)
