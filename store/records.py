"""Store records built from the pipeline's own objects: a slide's row and its final patch labels."""

from __future__ import annotations

from tissue_oracle.tools.schemas import PatchLabel, PatchRecord, SlideRecord
from tissue_oracle.tools.slide_base import Slide


def slide_record(run_id: str, slide_id: str, slide: Slide) -> SlideRecord:
    """The ``slides`` row of an open slide (level-0 dimensions; an in-memory slide's path is
    ``<array NAME>``)."""
    width, height = slide.dimensions
    return SlideRecord(
        run_id=run_id,
        slide_id=slide_id,
        path=str(slide.path) if slide.path is not None else f"<array {slide.name}>",
        file_hash=slide.file_hash(),
        width=width,
        height=height,
        mpp=slide.mpp,
        vendor=slide.vendor,
    )


def patch_records(run_id: str, slide_id: str, labels: list[PatchLabel]) -> list[PatchRecord]:
    """One ``patches`` row per final patch label."""
    return [
        PatchRecord(
            run_id=run_id,
            slide_id=slide_id,
            x=lab.ref.x,
            y=lab.ref.y,
            size=lab.ref.size,
            label=lab.label,
            focus=lab.focus,
            confidence=lab.confidence,
            source=lab.source,
        )
        for lab in labels
    ]
