"""Hypothesis fuzzing of every answer parser: arbitrary JSON and text never raise past the oracle.

The contract (``oracles.answers``): a parser returns a validated answer or raises ``AnswerError``,
which the oracle turns into a repair prompt and bounded retries. Anything else (``TypeError``,
``OverflowError``, ``KeyError``...) would escape ``vlm_attempts`` as a crash.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tissue_oracle.oracles import answers
from tissue_oracle.oracles.answers import AnswerError
from tissue_oracle.oracles.profiles import PROFILES, ImageFrame

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = [
    "boxes", "bbox_2d", "box_2d", "box", "points", "point_2d", "point", "labels", "label", "index",
    "focus", "tissue", "background", "precision_pct", "precision_grade", "recall_pct", "recall_grade",
    "notes",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["tissue", "background", "sharp", "mild-blur", "Blurry", "out of focus", ""]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6),
    ),
    max_leaves=40,
)
FRAMES = [
    ImageFrame(x0=0, y0=0, width=4096, height=3072, pixel_width=512, pixel_height=384),
    ImageFrame(x0=10_000, y0=20_000, width=1, height=1, pixel_width=1, pixel_height=1),
]


def allowed(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except AnswerError:
        return None


@FUZZ
@given(st.text(max_size=300))
@example("[" * 100_000)  # RecursionError inside json
@example('{"a":' * 50_000)
@example("[" + "9" * 5000 + "]")  # ValueError: more digits than int() converts
def test_parse_json_text_takes_any_text(text: str) -> None:
    allowed(answers.parse_json_text, text)


@FUZZ
@given(
    json_values,
    st.sampled_from(["", "```json\n", "Sure! "]),
    st.sampled_from(["", "\n```", " hope this helps"]),
)
def test_parse_json_text_reads_any_json_back(value: Any, before: str, after: str) -> None:
    text = before + json.dumps(value, allow_nan=True) + after
    parsed = allowed(answers.parse_json_text, text)
    if isinstance(value, dict | list) and parsed is not None:
        assert isinstance(parsed, dict | list)


@FUZZ
@given(json_values, st.sampled_from(sorted(PROFILES)), st.sampled_from(FRAMES))
@example(
    [{"bbox_2d": [10**400, 0, 5, 5], "box_2d": [10**400, 0, 5, 5], "box": [10**400, 0, 5, 5]}],
    "qwen3-vl",
    FRAMES[0],
)
@example(
    {"points": [{"point_2d": [10**400, 3], "point": [3, 10**400], "label": "tissue"}]}, "gemini", FRAMES[0]
)
def test_boxes_and_points(value: Any, profile_name: str, frame: ImageFrame) -> None:
    profile = PROFILES[profile_name]  # type: ignore[index]
    for box in allowed(answers.boxes_from, value, profile, frame) or []:
        assert frame.x0 <= box.x0 < box.x1 and frame.y0 <= box.y0 < box.y1
    for point in allowed(answers.points_from, value, profile, frame) or []:
        assert frame.x0 <= point.x < frame.x0 + frame.width and frame.y0 <= point.y < frame.y0 + frame.height


@FUZZ
@given(json_values, st.integers(min_value=0, max_value=8))
@example({"labels": [{"index": 10**400, "label": "tissue", "focus": 7}]}, 1)
@example([{"label": None}, "tissue"], 2)
def test_labels(value: Any, n: int) -> None:
    found = allowed(answers.labels_from, value, n)
    assert found is None or len(found) == n


@FUZZ
@given(json_values, st.lists(st.sampled_from(["tissue", "background"]), max_size=6), st.integers(1, 4))
@example({"tissue": 1}, [], 1)
@example({"tissue": "12", "background": {"a": 1}}, ["tissue", "background"], 1)
def test_rerank(value: Any, proposed: list[Any], top_k: int) -> None:
    picks = allowed(answers.rerank_from, value, proposed, top_k)
    for label, chosen in (picks or {}).items():
        assert len(chosen) <= top_k and all(proposed[i] == label for i in chosen)


@FUZZ
@given(json_values)
@example({"precision_pct": float("nan"), "recall_pct": 50})
@example({"precision_pct": 10**400, "recall_pct": 50})
@example({"precision_grade": 2, "recall_grade": 10**400, "recall_pct": float("-inf")})
def test_grades(value: Any) -> None:
    grades = allowed(answers.grades_from, value)
    if grades is not None:
        assert 1 <= grades.precision <= 4 and 1 <= grades.recall <= 4
        for pct in (grades.precision_pct, grades.recall_pct):
            assert pct is None or (math.isfinite(pct) and 0 <= pct <= 100)


def test_a_parser_bug_on_a_strange_answer_becomes_an_unusable_answer() -> None:
    from tissue_oracle.oracles.vlm_attempts import _validated

    def buggy(value: Any) -> Any:
        return value["boxes"][0] + 1  # TypeError on this answer

    try:
        _validated(buggy, '{"boxes": ["x"]}')
    except AnswerError as exc:
        assert "TypeError" in str(exc)
    else:
        raise AssertionError("expected AnswerError")
