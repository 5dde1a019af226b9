"""The fake model's brain: answer a question by analysing the images received (classical evidence).

Used by both loopback servers. The question is read from the answer schema the client sent
(its property names), the way a structured-output server sees it; coordinates are written in
the given profile's key names and order, in norm1000.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
from PIL import Image

from tissue_oracle.oracles.classical import typicality
from tissue_oracle.oracles.evidence import patch_evidence
from tissue_oracle.oracles.profiles import ModelProfile, smart_resize
from tissue_oracle.oracles.regions import crop_points, mask_agreement, section_boxes
from tissue_oracle.tools.schemas import grade_from_percent


def decode(data: bytes) -> np.ndarray:
    """RGB uint8 array of PNG/JPEG bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def question_of(schema: dict[str, Any]) -> str:
    """Which question a schema asks, from its top-level property names."""
    props = set((schema or {}).get("properties", {}))
    for key, question in (("boxes", "boxes"), ("labels", "patch_labels"), ("points", "points")):
        if key in props:
            return question
    if {"tissue", "background"} <= props:
        return "rerank"
    if "precision_pct" in props:
        return "review"
    return "unknown"


def _labels_wanted(schema: dict[str, Any]) -> int:
    labels = schema["properties"]["labels"]
    return int(labels.get("maxItems") or labels.get("max_items") or 1)


def _scale(profile: ModelProfile, image: np.ndarray) -> tuple[float, float]:
    """Full-scale values of x and y: 1000, or (Qwen2.5-VL) the pixels of the image its processor
    made, after ``smart_resize`` (QwenLM/Qwen2.5-VL#676: "absolute coordinates based on the
    actual input size of the image ... the size after processor")."""
    if profile.scale == "norm1000":
        return 1000.0, 1000.0
    height, width = smart_resize(*image.shape[:2])
    return float(width), float(height)


def _box(profile: ModelProfile, x0: float, y0: float, x1: float, y1: float) -> list[int]:
    """A box in model units, in the profile's order."""
    xyxy = [round(v) for v in (x0, y0, x1, y1)]
    return xyxy if profile.box_order == "xyxy" else [xyxy[1], xyxy[0], xyxy[3], xyxy[2]]


def _point(profile: ModelProfile, x: float, y: float) -> list[int]:
    return [round(x), round(y)] if profile.point_order == "xy" else [round(y), round(x)]


def _item_key(schema: dict[str, Any], list_key: str, default: str) -> str:
    """The coordinate key the request's schema demands (a structured-output server obeys it)."""
    try:
        props = schema["properties"][list_key]["items"]["properties"]
    except (KeyError, TypeError):
        return default
    # Only a lone array-valued property is a coordinate key; else keep the profile's own.
    arrays = [k for k, v in props.items() if str(dict(v).get("type", "")).upper() == "ARRAY"]
    return arrays[0] if len(arrays) == 1 else default


def answer(
    question: str, images: list[np.ndarray], prompt: str, schema: dict[str, Any], profile: ModelProfile
) -> Any:
    """The JSON value a competent model would return for this request."""
    if question == "boxes":
        image = images[0]
        h, w = image.shape[:2]
        sx, sy = _scale(profile, image)
        key = _item_key(schema, "boxes", profile.box_key)
        boxes = section_boxes(image)
        return {
            "boxes": [
                {key: _box(profile, sx * x0 / w, sy * y0 / h, sx * x1 / w, sy * y1 / h), "label": "tissue"}
                for x0, y0, x1, y1 in boxes
            ]
        }
    if question == "patch_labels":
        wanted = _labels_wanted(schema)
        out = []
        for i, image in enumerate(images[-wanted:]):
            ev = patch_evidence(image)
            label = "tissue" if ev.tissue_frac >= 0.10 else "background"
            out.append({"index": i + 1, "label": label, "focus": ev.focus or "sharp"})
        return {"labels": out}
    if question == "points":
        image = images[0]
        h, w = image.shape[:2]
        found = re.search(r"up to (\d+) points", prompt)
        per_class = int(found.group(1)) if found else 3
        tissue, background = crop_points(image, per_class)
        sx, sy = _scale(profile, image)
        key = _item_key(schema, "points", profile.point_key)
        return {
            "points": [
                {key: _point(profile, sx * (x + 0.5) / w, sy * (y + 0.5) / h), "label": label}
                for label, pts in (("tissue", tissue), ("background", background))
                for x, y in pts
            ]
        }
    if question == "rerank":
        proposed = re.findall(r"(\d+): (tissue|background)", prompt)
        labels = {int(n): lab for n, lab in proposed}
        scores = {
            n: typicality(patch_evidence(images[n - 1]), lab) for n, lab in labels.items() if n <= len(images)
        }
        found = re.search(r"best (\d+) example", prompt)
        top_k = int(found.group(1)) if found else 1
        ranked = sorted(scores, key=lambda n: -scores[n])
        return {lab: [n for n in ranked if labels[n] == lab][:top_k] for lab in ("tissue", "background")}
    if question == "review":
        crop, overlay = images[0], images[1]
        mask = np.abs(overlay.astype(np.int16) - crop.astype(np.int16)).max(axis=2) > 20
        agree = mask_agreement(crop, mask)
        p, r = round(agree.precision_pct, 1), round(agree.recall_pct, 1)
        return {
            "precision_pct": p,
            "precision_grade": grade_from_percent(p),
            "recall_pct": r,
            "recall_grade": grade_from_percent(r),
            "notes": "fake server: graded from image evidence",
        }
    return {}
