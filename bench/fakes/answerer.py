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
from tissue_oracle.oracles.profiles import ModelProfile
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


def _box(profile: ModelProfile, x0: float, y0: float, x1: float, y1: float) -> list[int]:
    xyxy = [round(v) for v in (x0, y0, x1, y1)]
    return xyxy if profile.box_order == "xyxy" else [xyxy[1], xyxy[0], xyxy[3], xyxy[2]]


def _point(profile: ModelProfile, x: float, y: float) -> list[int]:
    return [round(x), round(y)] if profile.point_order == "xy" else [round(y), round(x)]


def answer(
    question: str, images: list[np.ndarray], prompt: str, schema: dict[str, Any], profile: ModelProfile
) -> Any:
    """The JSON value a competent model would return for this request."""
    if question == "boxes":
        image = images[0]
        h, w = image.shape[:2]
        boxes = section_boxes(image)
        return {
            "boxes": [
                {
                    profile.box_key: _box(
                        profile, 1000 * x0 / w, 1000 * y0 / h, 1000 * x1 / w, 1000 * y1 / h
                    ),
                    "label": "tissue",
                }
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
        return {
            "points": [
                {
                    profile.point_key: _point(profile, 1000 * (x + 0.5) / w, 1000 * (y + 0.5) / h),
                    "label": label,
                }
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
