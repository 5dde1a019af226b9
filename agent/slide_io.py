"""The controller's edges: what it records into, the slide's store record, and its output files.

The controller takes either an ``AuditStore`` (which tracks slides and exposes ``.recorder``) or
a bare recorder such as ``store.memory.MemoryRecorder`` (unit tests); these helpers hide the
difference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from tissue_oracle.agent.outputs import atomic_path, write_slide_outputs
from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput
from tissue_oracle.tools.clean import CleanOutput
from tissue_oracle.tools.schemas import (
    CallRecorder,
    DecisionRecord,
    OutputRecord,
    PatchLabel,
    PatchRecord,
    SlideRecord,
)
from tissue_oracle.tools.slide_base import Slide

if TYPE_CHECKING:
    from tissue_oracle.agent.summary import SlideSummary

#: File names ``write_slide_outputs`` writes, by kind, plus the zero-shot mask written here.
OUTPUT_NAMES: dict[str, str] = {
    "mask_png": "mask.png",
    "mask_npy": "mask.npy",
    "mask_thumb": "mask_thumb.png",
    "geojson": "tissue.geojson",
    "patches_h5": "patches.h5",
    "patches_parquet": "patches.parquet",
    "focus": "focus.png",
    "overlay": "overlay.png",
    "mask_zero_shot": "mask_zero_shot.npy",
    "summary": "summary.json",
}


@runtime_checkable
class AuditSink(CallRecorder, Protocol):
    """What the controller records into: calls (and the cache), decisions, patches, outputs."""

    def record_decision(self, record: DecisionRecord) -> None: ...

    def record_patches(self, records: list[PatchRecord]) -> None: ...

    def record_output(self, record: OutputRecord) -> None: ...


@runtime_checkable
class SlideTracker(Protocol):
    """Stores that track slides (``AuditStore``): told when one begins and how it finished."""

    def begin_slide(self, slide: SlideRecord) -> None: ...

    def finish_slide(
        self, run_id: str, slide_id: str, *, status: str, error: str | None = None, flags: Any = ()
    ) -> None: ...


def recorder_of(store: Any) -> AuditSink:
    """The sink behind ``store``: an ``AuditStore`` records itself; a ``MemoryRecorder`` too."""
    if isinstance(store, AuditSink):
        return store
    raise TypeError(
        f"{type(store).__name__!r} can't record calls, decisions, patches and outputs; "
        "pass an AuditStore or a MemoryRecorder"
    )


def tracks_slides(store: Any) -> bool:
    return isinstance(store, SlideTracker)


def slide_record(run_id: str, slide_id: str, slide: Slide) -> SlideRecord:
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


def answered_only(out: ClassifyPatchesOutput) -> ClassifyPatchesOutput:
    """``out`` restricted to the patches the oracle answered: a failed or refused few-shot question
    must not overwrite a zero-shot answer with the coarse label."""
    answered = [lab for lab in out.labels if lab.source != "coarse"]
    scope = np.zeros_like(out.scope)
    for lab in answered:
        scope[out.grid.cell_of(lab.ref.x, lab.ref.y)] = True
    return out.model_copy(update={"scope": scope, "labels": answered})


def final_labels(raw: ClassifyPatchesOutput, cleaned: CleanOutput) -> list[PatchLabel]:
    """Every labelled patch after cleaning; patches the clean stage flipped get source ``clean``."""
    by_cell = {raw.grid.cell_of(lab.ref.x, lab.ref.y): lab for lab in raw.labels}
    for r, c in zip(*np.nonzero(cleaned.changed), strict=True):
        cell = (int(r), int(c))
        label = "tissue" if cleaned.tissue[cell] else "background"
        old = by_cell.get(cell)
        ref = old.ref if old is not None else raw.grid.ref(*cell)
        focus = old.focus if old is not None else None
        by_cell[cell] = PatchLabel(ref=ref, label=label, focus=focus, confidence=1.0, source="clean")
    return [by_cell[cell] for cell in sorted(by_cell)]


def patch_records(run_id: str, slide_id: str, labels: list[PatchLabel]) -> list[PatchRecord]:
    """One store row per final patch label."""
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finish_outputs(
    slide: Slide,
    out_dir: Path,
    summary: SlideSummary,
    tissue: np.ndarray,
    labels: list[PatchLabel],
    zero_shot_tissue: np.ndarray,
    thumbnail: np.ndarray,
    sink: AuditSink,
) -> dict[str, str]:
    """Write the slide's outputs (summary.json last) and record each file; returns kind -> path.

    Besides the standard outputs, ``mask_zero_shot.npy`` keeps the cleaned zero-shot mask, so
    what Auto-context changed stays visible.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.outputs = {kind: str(out_dir / name) for kind, name in OUTPUT_NAMES.items()}
    zero_path = out_dir / OUTPUT_NAMES["mask_zero_shot"]
    with atomic_path(zero_path) as tmp:
        np.save(tmp, np.asarray(zero_shot_tissue, dtype=bool))
    sink.record_output(
        OutputRecord(
            run_id=summary.run_id,
            slide_id=summary.slide_id,
            path=str(zero_path),
            kind="mask_zero_shot",
            sha256=_sha256(zero_path),
            bytes=zero_path.stat().st_size,
        )
    )
    records = write_slide_outputs(
        out_dir,
        run_id=summary.run_id,
        slide_id=summary.slide_id,
        grid=slide.patch_grid(summary.patches.patch_size),
        tissue=np.asarray(tissue, dtype=bool),
        labels=labels,
        thumbnail=thumbnail,
        thumb_downsample=summary.thumbnail_downsample,
        focus=None,
        summary=summary.model_dump(mode="json"),
        level_dim=(summary.width, summary.height),
        magnification=slide.magnification,
        picture=readable_picture(slide, thumbnail),
    )
    for record in records:
        sink.record_output(record)
    return summary.outputs


#: The overlay's long side is at least this many pixels when the slide is that large.
OVERLAY_MIN_SIDE = 1024


def readable_picture(slide: Slide, thumbnail: np.ndarray) -> tuple[np.ndarray, float] | None:
    """A finer thumbnail for ``overlay.png`` when the grounding thumbnail is too small to read.

    A 64x thumbnail of an 8k-pixel slide is 128 px wide; the overlay is for a person, so it is
    redrawn with a long side of ``OVERLAY_MIN_SIDE`` (read from the best pyramid level).
    """
    if max(thumbnail.shape[:2]) >= OVERLAY_MIN_SIDE:
        return None
    width, height = slide.dimensions
    downsample = max(1.0, max(width, height) / OVERLAY_MIN_SIDE)
    return slide.thumbnail(downsample), downsample


def record_failure(store: Any, run_id: str, slide_id: str, path: str | None, exc: BaseException) -> None:
    """Tell a slide-tracking store the slide failed (begun first when it never opened)."""
    if not tracks_slides(store):
        return
    if path is not None:
        store.begin_slide(SlideRecord(run_id=run_id, slide_id=slide_id, path=path))
    store.finish_slide(run_id, slide_id, status="failed", error=f"{type(exc).__name__}: {exc}")
