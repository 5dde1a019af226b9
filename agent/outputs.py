"""Writers for one slide's outputs in ``OUT/<slide>/``.

    mask.png          patch-grid mask, one pixel per patch (255 tissue, 0 background)
    mask.npy          the same, bool of grid.shape
    mask_thumb.png    the mask at thumbnail resolution (thumb_xy frame, 255 tissue)
    tissue.geojson    level-0 polygons, one QuPath "Tissue" annotation per piece (agent.geojson);
                      traced on the pixel-accurate contour when the run has one (classical map)
    patches.h5        CLAM/TRIDENT coords: int64 (N, 2) level-0 top-left corners of tissue patches
    patches.parquet   one row per PatchLabel: x, y, size, label, focus, confidence, stage
    focus.png         one pixel per patch, coloured by focus class (FOCUS_COLOURS)
    overlay.png       the thumbnail with the mask drawn (translucent fill + outline)
    mask_zero_shot.npy  the cleaned zero-shot mask, bool of grid.shape (before Auto-context)
    summary.json      the run's summary dict, sorted keys

Every file is written to a temporary name in the same folder, flushed to disk, then renamed,
so a crash never leaves a half-written output. ``summary.json`` is written last: its presence
means the slide's outputs are complete.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel
from scipy import ndimage

from tissue_oracle.agent.geojson import contour_polygons, mask_to_geojson, polygons_to_geojson
from tissue_oracle.agent.safe_text import scrubbed_tree
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS, focus_code
from tissue_oracle.tools.hashing import sha256_file
from tissue_oracle.tools.schemas import OutputRecord, PatchGrid, PatchLabel
from tissue_oracle.tools.slide_base import Slide

OutputKind = Literal[
    "mask_zero_shot",
    "mask_png",
    "mask_npy",
    "mask_thumb",
    "geojson",
    "patches_h5",
    "patches_parquet",
    "focus",
    "overlay",
    "summary",
]

#: ``tools.focus`` code -> RGB in focus.png: light grey not graded, green sharp, amber mild blur,
#: red out of focus.
FOCUS_COLOURS: dict[int, tuple[int, int, int]] = {
    NO_FOCUS: (230, 230, 230),
    FOCUS_CODES["sharp"]: (26, 152, 80),
    FOCUS_CODES["mild_blur"]: (254, 196, 79),
    FOCUS_CODES["out_of_focus"]: (215, 48, 39),
}
#: overlay.png: tissue fill colour and opacity, and outline colour.
OVERLAY_FILL = (0, 200, 80)
OVERLAY_ALPHA = 0.35
OVERLAY_OUTLINE = (0, 90, 40)

_PARQUET_SCHEMA = pa.schema(
    [
        ("x", pa.int64()),
        ("y", pa.int64()),
        ("size", pa.int64()),
        ("label", pa.string()),
        ("focus", pa.string()),
        ("confidence", pa.float64()),
        ("stage", pa.string()),
    ]
)


# --------------------------------------------------------------------------- atomic files


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto it (after fsync) when the block succeeds."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _png(path: Path, pixels: np.ndarray) -> None:
    # zlib level 3, not PIL's 6: an 8k slide's 1024 px overlay encodes in half the time (53 ms
    # against 105 here) for about 15% more bytes; PNG stays lossless either way.
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=3)


# --------------------------------------------------------------------------- single writers


def write_mask_png(path: Path, tissue: np.ndarray) -> None:
    """One pixel per patch, 255 tissue and 0 background (8-bit grey)."""
    _png(path, np.where(tissue, 255, 0).astype(np.uint8))


def write_mask_npy(path: Path, tissue: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(tissue, dtype=bool))


def mask_at_thumbnail(
    tissue: np.ndarray, grid: PatchGrid, thumb_shape: tuple[int, int], thumb_downsample: float
) -> np.ndarray:
    """The patch-grid mask resampled to a thumbnail (bool, ``thumb_shape`` = (h, w)).

    Thumbnail pixel (i, j) takes the cell holding its centre, level-0 ((j+0.5)*ds, (i+0.5)*ds).
    """
    rows = ((np.arange(thumb_shape[0]) + 0.5) * thumb_downsample // grid.patch_size).astype(np.int64)
    cols = ((np.arange(thumb_shape[1]) + 0.5) * thumb_downsample // grid.patch_size).astype(np.int64)
    inside = (rows[:, None] < grid.rows) & (cols[None, :] < grid.cols)
    picked = tissue[np.minimum(rows, grid.rows - 1)[:, None], np.minimum(cols, grid.cols - 1)[None, :]]
    return np.asarray(picked & inside, dtype=bool)


def write_geojson(
    path: Path, tissue: np.ndarray, grid: PatchGrid, contour: tuple[np.ndarray, float] | None = None
) -> None:
    """Tissue polygons: the pixel-accurate ``contour`` (mask, downsample) when given, else patch edges."""
    if contour is None:
        doc = mask_to_geojson(tissue, grid)
    else:
        pixels, downsample = contour
        doc = polygons_to_geojson(contour_polygons(pixels, downsample, grid.slide_width, grid.slide_height))
    _text(path, json.dumps(doc, separators=(",", ":")))


def write_patches_h5(
    path: Path,
    tissue: np.ndarray,
    grid: PatchGrid,
    *,
    level_dim: tuple[int, int],
    name: str,
    magnification: float | None = None,
) -> None:
    """CLAM/TRIDENT ``coords``: level-0 top-left (x, y) of every tissue patch, row-major.

    Attributes on ``coords`` follow CLAM (patch_size, patch_level, level_dim, downsample,
    downsampled_level_dim, name, save_path) and TRIDENT (patch_size_level0, overlap, and the
    magnifications when the slide records one). Patches are taken at level 0, so
    ``patch_level`` is 0 and ``downsample`` is (1, 1).
    """
    rows, cols = np.nonzero(tissue)
    coords = np.stack([cols, rows], axis=1).astype(np.int64) * grid.patch_size
    attrs: dict[str, Any] = {
        "patch_size": grid.patch_size,
        "patch_level": 0,
        "level_dim": np.asarray(level_dim, dtype=np.int64),
        "downsample": np.asarray([1.0, 1.0]),
        "downsampled_level_dim": np.asarray(level_dim, dtype=np.int64),
        "name": name,
        "save_path": str(path.parent),
        "patch_size_level0": grid.patch_size,
        "overlap": 0,
    }
    if magnification is not None:
        attrs |= {"level0_magnification": magnification, "target_magnification": magnification}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        dataset = handle.create_dataset("coords", data=coords.reshape(-1, 2))
        dataset.attrs.update(attrs)


def write_patches_parquet(path: Path, labels: list[PatchLabel]) -> None:
    """One row per label; ``stage`` holds the label's source (coarse, zero_shot, few_shot...)."""
    columns = {
        "x": [lab.ref.x for lab in labels],
        "y": [lab.ref.y for lab in labels],
        "size": [lab.ref.size for lab in labels],
        "label": [lab.label for lab in labels],
        "focus": [lab.focus for lab in labels],
        "confidence": [lab.confidence for lab in labels],
        "stage": [lab.source for lab in labels],
    }
    table = pa.table(columns, schema=_PARQUET_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def focus_codes(labels: list[PatchLabel], grid: PatchGrid) -> np.ndarray:
    """Per-patch focus codes (uint8, grid.shape; ``tools.focus``) from the labels' focus grades."""
    codes = np.full(grid.shape, NO_FOCUS, dtype=np.uint8)
    for lab in labels:
        row, col = grid.cell_of(lab.ref.x, lab.ref.y)
        if 0 <= row < grid.rows and 0 <= col < grid.cols:
            codes[row, col] = focus_code(lab.focus)
    return codes


def write_focus_png(path: Path, codes: np.ndarray) -> None:
    """One pixel per patch coloured by ``FOCUS_COLOURS``; ``codes`` as from ``focus_codes``."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for code, colour in FOCUS_COLOURS.items():
        palette[code] = colour
    _png(path, palette[np.asarray(codes, dtype=np.uint8)])


def overlay_image(thumbnail: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The thumbnail with ``mask`` (bool, same h x w) filled translucently and outlined."""
    out = thumbnail.astype(np.float32)
    out[mask] = out[mask] * (1 - OVERLAY_ALPHA) + np.asarray(OVERLAY_FILL, np.float32) * OVERLAY_ALPHA
    width = max(1, round(min(mask.shape) / 300))
    outline = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out[outline] = OVERLAY_OUTLINE
    return np.rint(out).astype(np.uint8)


def _overlay(
    tissue: np.ndarray,
    grid: PatchGrid,
    thumbnail: np.ndarray,
    mask_thumb: np.ndarray,
    picture: tuple[np.ndarray, float] | None,
) -> np.ndarray:
    if picture is None:
        return overlay_image(thumbnail, mask_thumb)
    image, downsample = picture
    return overlay_image(image, mask_at_thumbnail(tissue, grid, image.shape[:2], downsample))


def write_summary_json(path: Path, summary: dict[str, Any]) -> None:
    """``summary`` as JSON with sorted keys; numpy values, paths, models and dates converted."""
    # Scrubbed: an error text in it can echo a key (a 401 body), and control characters are made visible.
    data = scrubbed_tree(_jsonable(summary))
    _text(path, json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n")


def _text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json"))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | bool):
        return value
    raise TypeError(f"summary value of type {type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- one slide

#: File name of each output kind, in writing order (``summary.json`` last).
OUTPUT_NAMES: dict[OutputKind, str] = {
    "mask_zero_shot": "mask_zero_shot.npy",
    "mask_png": "mask.png",
    "mask_npy": "mask.npy",
    "mask_thumb": "mask_thumb.png",
    "geojson": "tissue.geojson",
    "patches_h5": "patches.h5",
    "patches_parquet": "patches.parquet",
    "focus": "focus.png",
    "overlay": "overlay.png",
    "summary": "summary.json",
}
#: The overlay's long side is at least this many pixels when the slide is that large.
OVERLAY_MIN_SIDE = 1024


def output_paths(out_dir: Path) -> dict[str, str]:
    """Output kind -> the path ``write_slide_outputs`` writes it to (with a zero-shot mask)."""
    return {kind: str(out_dir / name) for kind, name in OUTPUT_NAMES.items()}


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


@dataclass(kw_only=True)
class SlideOutputs:
    """Everything one slide's output files are drawn from."""

    run_id: str
    slide_id: str
    grid: PatchGrid
    """The slide's patch grid; every mask below has its shape."""
    tissue: np.ndarray
    """The final mask, bool of ``grid.shape``."""
    labels: list[PatchLabel]
    """Every labelled patch (``patches.parquet``; focus grades when ``focus`` is None)."""
    thumbnail: np.ndarray
    """RGB uint8 taken at ``thumb_downsample`` (``mask_thumb.png``, ``overlay.png``)."""
    thumb_downsample: float
    level_dim: tuple[int, int]
    """Level-0 (width, height)."""
    summary: dict[str, Any]
    """Written as ``summary.json``, last."""
    focus: np.ndarray | None = None
    """Per-patch codes (``tools.focus``) or focus names of ``grid.shape``; None takes the labels'."""
    magnification: float | None = None
    """The slide's level-0 magnification, recorded in ``patches.h5`` when known."""
    picture: tuple[np.ndarray, float] | None = None
    """(RGB image, downsample) to draw ``overlay.png`` on when the thumbnail is too small to read."""
    zero_shot_tissue: np.ndarray | None = None
    """The cleaned zero-shot mask (``mask_zero_shot.npy``), so what Auto-context changed stays
    visible; None writes no such file."""
    contour: tuple[np.ndarray, float] | None = None
    """(bool ``thumb_xy`` mask, downsample): the pixel-accurate tissue, already cut to the accepted
    patches; ``tissue.geojson`` traces it instead of the patch edges when given."""


def write_slide_outputs(out_dir: Path, outputs: SlideOutputs) -> list[OutputRecord]:
    """Write every output of one slide into ``out_dir`` (created) and describe each file.

    Returns one OutputRecord per file, in writing order (``OUTPUT_NAMES``; summary.json last).
    """
    o, grid, tissue = outputs, outputs.grid, outputs.tissue
    if tissue.shape != grid.shape or tissue.dtype != np.bool_:
        raise ValueError(f"tissue must be bool of shape {grid.shape}, got {tissue.dtype} {tissue.shape}")
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_thumb = mask_at_thumbnail(tissue, grid, o.thumbnail.shape[:2], o.thumb_downsample)
    codes = focus_codes(o.labels, grid) if o.focus is None else _as_focus_codes(o.focus, grid)
    writers: dict[OutputKind, Callable[[Path], None]] = {
        "mask_png": lambda p: write_mask_png(p, tissue),
        "mask_npy": lambda p: write_mask_npy(p, tissue),
        "mask_thumb": lambda p: write_mask_png(p, mask_thumb),
        "geojson": lambda p: write_geojson(p, tissue, grid, o.contour),
        "patches_h5": lambda p: write_patches_h5(
            p, tissue, grid, level_dim=o.level_dim, name=o.slide_id, magnification=o.magnification
        ),
        "patches_parquet": lambda p: write_patches_parquet(p, o.labels),
        "focus": lambda p: write_focus_png(p, codes),
        "overlay": lambda p: _png(p, _overlay(tissue, grid, o.thumbnail, mask_thumb, o.picture)),
        "summary": lambda p: write_summary_json(p, o.summary),
    }
    if o.zero_shot_tissue is not None:
        zero_shot = o.zero_shot_tissue
        writers["mask_zero_shot"] = lambda p: write_mask_npy(p, zero_shot)
    records = []
    for kind, name in OUTPUT_NAMES.items():
        if kind in writers:
            path = out_dir / name
            writers[kind](path)
            records.append(_record(path, kind, run_id=o.run_id, slide_id=o.slide_id))
    return records


def _as_focus_codes(focus: np.ndarray, grid: PatchGrid) -> np.ndarray:
    if focus.shape != grid.shape:
        raise ValueError(f"focus must have the grid's shape {grid.shape}, got {focus.shape}")
    if focus.dtype.kind in "UO":
        return np.vectorize(lambda v: FOCUS_CODES.get(v, NO_FOCUS), otypes=[np.uint8])(focus)
    if focus.size and not np.isin(focus, list(FOCUS_COLOURS)).all():
        raise ValueError(f"focus codes must be in {sorted(FOCUS_COLOURS)}")
    return focus.astype(np.uint8)


def _record(path: Path, kind: OutputKind, *, run_id: str, slide_id: str) -> OutputRecord:
    return OutputRecord(
        run_id=run_id, slide_id=slide_id, path=str(path), kind=kind, sha256=sha256_file(path),
        bytes=path.stat().st_size,
    )  # fmt: skip
