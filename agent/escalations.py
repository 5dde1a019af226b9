"""The escalation queue: every slide or region a human should check, as ``OUT/escalations.csv``.

Built from the slides' ``summary.json`` files, so it is the same after a resume and can be
re-made at any time. One row per region the policy escalated (its box, the reason and the grades of
every review round), and one whole-slide row per slide a budget degraded or whose questions failed
(patches kept their coarse label). Beside each slide's outputs, ``review_regions.geojson`` holds
the regions to check as QuPath annotations of class "Review" (File > Import objects), with the
reason as the annotation's name; a degraded slide with no escalated region lists all its regions.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tissue_oracle.agent.summary import RegionSummary, SlideSummary

ESCALATIONS_CSV = "escalations.csv"
REVIEW_GEOJSON = "review_regions.geojson"
REVIEW_CLASS = "Review"
#: QuPath colour for the Review class (RGB 0-255).
REVIEW_COLOUR = (230, 120, 0)
_SLIDE_FLAGS = ("budget_exhausted", "oracle_errors")


@dataclass(kw_only=True, frozen=True)
class Escalation:
    """One row of the queue: a region (or the whole slide when ``region`` is empty) and why."""

    run_id: str
    slide_id: str
    region: str
    """The region's index, or "" for the whole slide."""
    x0: str
    y0: str
    x1: str
    y1: str
    status: str
    reason: str
    grades: str
    """Each review round's grades, ``r0 P2/R3; r1 P1/R2`` (P precision, R recall, 1 best, 4 worst)."""

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def grades_text(region: RegionSummary) -> str:
    parts = []
    for r in region.rounds:
        g = r.grades
        parts.append(f"r{r.round} " + ("no grade" if g is None else f"P{g.precision}/R{g.recall}"))
    return "; ".join(parts)


def slide_escalations(summary: SlideSummary) -> list[Escalation]:
    """The queue rows of one slide."""
    rows: list[Escalation] = []
    base = {"run_id": summary.run_id, "slide_id": summary.slide_id, "status": summary.status}
    degraded = summary.status == "degraded" or any(f in summary.flags for f in _SLIDE_FLAGS)
    if degraded:
        why = [r for r in summary.reasons if not r.startswith("region ")] or ["degraded"]
        rows.append(
            Escalation(
                **base, region="", x0="0", y0="0", x1=str(summary.width), y1=str(summary.height),
                reason="; ".join(why), grades="",
            )
        )  # fmt: skip
    for region in summary.regions:
        if region.needs_human_review:
            b = region.box
            rows.append(
                Escalation(
                    **base, region=str(region.index), x0=str(b.x0), y0=str(b.y0), x1=str(b.x1), y1=str(b.y1),
                    reason=region.reason, grades=grades_text(region),
                )
            )  # fmt: skip
    return rows


def review_geojson(summary: SlideSummary) -> dict[str, Any]:
    """The regions to check as a QuPath-importable FeatureCollection (level-0 pixels)."""
    escalated = [r for r in summary.regions if r.needs_human_review]
    degraded = summary.status == "degraded" or any(f in summary.flags for f in _SLIDE_FLAGS)
    regions = escalated or (summary.regions if degraded else [])
    features = []
    for region in regions:
        b = region.box
        ring = [[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]]
        reason = region.reason if region.needs_human_review else "; ".join(summary.reasons) or "degraded"
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"region {region.index}: {reason}"[:200],
                    "classification": {"name": REVIEW_CLASS, "color": list(REVIEW_COLOUR)},
                    "measurements": {"region": region.index},
                    "grades": grades_text(region),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def read_summaries(out_dir: Path) -> list[SlideSummary]:
    """Every ``OUT/<slide>/summary.json``, by slide id; unreadable files are skipped."""
    found = []
    for path in sorted(out_dir.glob("*/summary.json")):
        try:
            found.append(SlideSummary.model_validate_json(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def write_escalations(out_dir: Path, summaries: list[SlideSummary] | None = None) -> list[Escalation]:
    """Write ``OUT/escalations.csv`` and each slide's ``review_regions.geojson``; return the rows."""
    summaries = read_summaries(out_dir) if summaries is None else summaries
    rows: list[Escalation] = []
    for summary in summaries:
        mine = slide_escalations(summary)
        rows += mine
        geojson = out_dir / summary.slide_id / REVIEW_GEOJSON
        if mine:
            geojson.write_text(json.dumps(review_geojson(summary), indent=1))
        else:
            geojson.unlink(missing_ok=True)
    target = out_dir / ESCALATIONS_CSV
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=Escalation.columns())
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    tmp.replace(target)
    return rows


def read_escalations(out_dir: Path) -> list[dict[str, str]]:
    """The rows of ``OUT/escalations.csv`` (empty when the run escalated nothing)."""
    path = out_dir / ESCALATIONS_CSV
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
