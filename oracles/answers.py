"""What a VLM must answer for each question: JSON schemas, a tolerant parser, and validation.

The schema goes to the server as structured output; the parser still accepts what models write
when a server ignores it (code fences, text around the JSON, single quotes, a bare list). Every
answer is validated into our types; coordinates go through ``oracles.profiles`` (the one
conversion). Anything unusable raises :class:`AnswerError`, which the oracle answers with one
repair prompt and then bounded retries, never with an exception at the caller.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator

from tissue_oracle.oracles.profiles import ImageFrame, ModelProfile, box_to_level0, point_to_level0
from tissue_oracle.tools.errors import OracleError
from tissue_oracle.tools.schemas import Box, Focus, Grades, Label, Point, grade_from_percent

LABELS: tuple[Label, ...] = ("tissue", "background")
FOCUSES: tuple[Focus, ...] = ("sharp", "mild_blur", "out_of_focus")


class AnswerError(OracleError):
    """The model's text is not a usable answer (the message says why, for the repair prompt)."""


# --------------------------------------------------------------------------- tolerant JSON

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)


def parse_json_text(text: str) -> Any:
    """The first JSON value in ``text``, tolerating fences, surrounding prose and Python-style quotes."""
    if not text or not text.strip():
        raise AnswerError("the answer was empty")
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise AnswerError("no JSON object or list in the answer")
    body = body[min(starts) :]
    try:
        value, _ = json.JSONDecoder().raw_decode(body)
        return value
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON ({exc.msg} at character {exc.pos})"
    except (RecursionError, ValueError) as exc:  # nesting too deep; an int with too many digits
        problem = f"unreadable JSON ({type(exc).__name__})"
    try:  # single quotes, True/False/None: a Python literal is still an answer
        return ast.literal_eval(_balanced_prefix(body))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise AnswerError(problem) from None


def _balanced_prefix(text: str) -> str:
    """The shortest prefix whose brackets balance (ignores brackets inside quotes)."""
    depth, quote = 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote and text[i - 1] != "\\" else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return text[: i + 1]
    return text


# --------------------------------------------------------------------------- schemas


def _obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _numbers(n: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}


def boxes_schema(profile: ModelProfile) -> dict[str, Any]:
    item = _obj({profile.box_key: _numbers(4), "label": {"type": "string"}})
    return _obj({"boxes": {"type": "array", "items": item}})


def labels_schema(n_patches: int) -> dict[str, Any]:
    item = _obj(
        {
            "index": {"type": "integer"},
            "label": {"type": "string", "enum": list(LABELS)},
            "focus": {"type": "string", "enum": list(FOCUSES)},
        }
    )
    return _obj({"labels": {"type": "array", "items": item, "minItems": n_patches, "maxItems": n_patches}})


def points_schema(profile: ModelProfile) -> dict[str, Any]:
    item = _obj({profile.point_key: _numbers(2), "label": {"type": "string", "enum": list(LABELS)}})
    return _obj({"points": {"type": "array", "items": item}})


def rerank_schema() -> dict[str, Any]:
    picks = {"type": "array", "items": {"type": "integer"}}
    return _obj({"tissue": picks, "background": picks})


def review_schema() -> dict[str, Any]:
    pct = {"type": "number", "minimum": 0, "maximum": 100}
    grade = {"type": "integer", "minimum": 1, "maximum": 4}
    return _obj(
        {
            "precision_pct": pct,
            "precision_grade": grade,
            "recall_pct": pct,
            "recall_grade": grade,
            "notes": {"type": "string"},
        }
    )


# --------------------------------------------------------------------------- validation


def _items(value: Any, key: str) -> list[Any]:
    """The list under ``key``; a bare list is accepted (Qwen's native box format)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get(key), list):
        return list(value[key])
    raise AnswerError(f"expected an object with a {key!r} list")


def boxes_from(value: Any, profile: ModelProfile, frame: ImageFrame) -> list[Box]:
    """Level-0 boxes; unusable boxes are dropped, but a list with none in the right key is an error."""
    items = _items(value, "boxes")
    keyed = [it for it in items if isinstance(it, dict) and profile.box_key in it]
    if items and not keyed:
        raise AnswerError(f"boxes must use the key {profile.box_key!r} as {profile.box_format}")
    boxes = []
    for item in keyed:
        corners = box_to_level0(item[profile.box_key], profile, frame)
        if corners is not None:
            x0, y0, x1, y1 = corners
            boxes.append(Box(x0=x0, y0=y0, x1=x1, y1=y1, label=str(item.get("label") or "tissue")))
    return boxes


def points_from(value: Any, profile: ModelProfile, frame: ImageFrame) -> list[Point]:
    """Level-0 points with a valid label; unusable points are dropped."""
    items = _items(value, "points")
    keyed = [it for it in items if isinstance(it, dict) and profile.point_key in it]
    if items and not keyed:
        raise AnswerError(f"points must use the key {profile.point_key!r} as {profile.point_format}")
    points = []
    for item in keyed:
        label = str(item.get("label", "")).strip().lower()
        xy = point_to_level0(item[profile.point_key], profile, frame)
        if xy is not None and label in LABELS:
            points.append(Point(x=xy[0], y=xy[1], label=label))
    return points


class _LabelItem(BaseModel):
    index: int | None = None
    label: Label
    focus: Focus | None = None

    @field_validator("label", "focus", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower().replace("-", "_").replace(" ", "_")
            return {"blurry": "mild_blur", "blurred": "out_of_focus", "in_focus": "sharp"}.get(value, value)
        return value


def labels_from(value: Any, n_patches: int) -> list[tuple[Label, Focus | None]]:
    """Exactly ``n_patches`` (label, focus) pairs in patch order (1-based ``index`` if given)."""
    items = _items(value, "labels")
    if len(items) != n_patches:
        raise AnswerError(f"expected {n_patches} labels, got {len(items)}")
    try:
        parsed = [_LabelItem.model_validate(it) for it in items]
    except ValidationError as exc:
        why = exc.errors()[0]["msg"]
        raise AnswerError(f"labels must be 'tissue' or 'background' with a valid focus: {why}") from None
    indices = sorted(p.index or 0 for p in parsed)
    if indices == list(range(1, n_patches + 1)):
        parsed.sort(key=lambda p: p.index or 0)
    return [(p.label, p.focus) for p in parsed]


def rerank_from(value: Any, proposed: list[Label], top_k: int) -> dict[Label, list[int]]:
    """0-based candidate indices per class, best first; picks of the wrong class or range are dropped."""
    if not isinstance(value, dict):
        raise AnswerError("expected an object with 'tissue' and 'background' lists")
    picks: dict[Label, list[int]] = {}
    for label in LABELS:
        chosen: list[int] = []
        listed = value.get(label)
        for number in listed if isinstance(listed, list) else []:
            usable = isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= len(proposed)
            if usable and proposed[number - 1] == label and number - 1 not in chosen:
                chosen.append(number - 1)
        picks[label] = chosen[:top_k]
    if not any(picks.values()) and proposed:
        raise AnswerError("no valid patch numbers were chosen")
    return picks


def _number(value: Any) -> float | None:
    """A finite float from a JSON number, or None (booleans, NaN, infinities, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def grades_from(value: Any) -> Grades:
    """Grades 1-4 with percentages; a missing grade is derived from its percentage."""
    if not isinstance(value, dict):
        raise AnswerError("expected an object with precision/recall grades and percentages")
    fields: dict[str, Any] = {"notes": str(value.get("notes") or "")[:500]}
    for name in ("precision", "recall"):
        number, grade = _number(value.get(f"{name}_pct")), value.get(f"{name}_grade")
        pct = None if number is None else min(max(number, 0.0), 100.0)
        if not isinstance(grade, int) or isinstance(grade, bool) or not 1 <= grade <= 4:
            if pct is None:
                raise AnswerError(f"{name}_grade must be 1-4 (or give {name}_pct)")
            grade = grade_from_percent(pct)
        fields[name], fields[f"{name}_pct"] = grade, pct
    return Grades.model_validate(fields)
