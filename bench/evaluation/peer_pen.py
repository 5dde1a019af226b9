"""The peers bench's ``pen`` group: real thumbnails with HUMAN masks of their pen marks.

HistoQC ships slide thumbnails whose pen strokes (black, green, red) and coverslip edges (H&E,
IHC) a person traced (``../shared/data/real/pen``, see its MANIFEST.md). Nobody traced their
tissue, so no Dice against tissue truth exists. Per method and image, at the image's pixels:

- ``marks called tissue``: the share of the human-marked pixels the method calls tissue. Where a
  mark lies on glass, every such pixel is a false positive: pen_black's stroke and both coverslip
  edges lie on glass. pen_green's loop and pen_red's strokes partly cross or touch tissue, where
  "tissue" is a fair answer, so their figures mix both.
- ``agreement off the marks``: Dice against the majority of ``VOTERS`` (one method per package, so
  that tiatoolbox's two maskers, identical on an image without a pixel size, and CLAM's two
  thresholds do not vote twice; ours never votes), outside the marks grown by ``MARK_MARGIN`` of the
  image's long side. A method cannot win the
  first figure by calling nothing without losing this one. It is agreement, not accuracy, and it
  is not scored where that majority finds no tissue off the marks (pen_black: glass and a stroke).

The images are thumbnails (their long side is at most ``SMALL_SIDE``), so every method reads them
whole: ours with 32 px grid patches (as ``segment --patch-size 32`` does), its mask the map's pixels
inside the accepted patches (the contour that ``tissue.geojson`` carries); tiatoolbox at scale 1;
CLAM with its reference patch (the unit of its area filters) at the same 32 px, or its one-patch
area filter would drop every piece of a thumbnail. Ours is the CLASSICAL ORACLE (no VLM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.bench.evaluation.clam_segment import ClamParams
from tissue_oracle.bench.evaluation.labelled import load_mask
from tissue_oracle.bench.evaluation.peer_methods import (
    METHODS,
    PEER_ENVS,
    clam_slide_mask,
    mask_dice,
    peer_mask,
)
from tissue_oracle.bench.evaluation.suites import SMALL_SIDE

PEN_IMAGES = {
    "pen__1k_version__pen_black": "black pen on glass",
    "pen__1k_version__pen_green": "green pen, a loop around tissue",
    "pen__1k_version__pen_red": "red pen along the tissue's edge",
    "models__coverslip_edge_he__coverslip_edge": "H&E, coverslip edge",
    "models__coverslip_edge_ihc__coverslip_edge": "IHC, coverslip edge",
}
"""The HistoQC images with a human mask, and what their marks are."""
THUMB_PATCH = 32
"""Grid patch side (pixels) ours reads a thumbnail at."""
VOTERS = ("clam_otsu", "tiatoolbox_otsu", "lazyslide", "histolab")
"""The methods whose majority (of those that ran) is the reference off the marks."""
MARK_MARGIN = 0.01
"""The marks are grown by this share of the image's long side before 'off the marks' is scored."""


@dataclass(kw_only=True, frozen=True)
class PenCase:
    """One thumbnail and its human mark mask."""

    name: str
    path: Path
    marks: Path
    what: str


def pen_cases(real: Path) -> list[PenCase]:
    """The HistoQC thumbnails under ``real/pen`` whose human mask is there (none if the folder is absent)."""
    cases = []
    for stem, what in PEN_IMAGES.items():
        image, marks = real / "pen" / f"{stem}.png", real / "pen" / f"{stem}_mask.png"
        if image.is_file() and marks.is_file():
            cases.append(PenCase(name=stem, path=image, marks=marks, what=what))
    return cases


def _ours_pixels(path: Path) -> tuple[np.ndarray, float, str]:
    from tissue_oracle.oracles.classical_dense import ClassifyDenseInput, cut_to_patches, dense_labels
    from tissue_oracle.tools.slides import open_slide

    started = time.perf_counter()
    with open_slide(path) as slide:
        if max(slide.dimensions) > SMALL_SIDE:
            raise ValueError(f"{path}: the pen group scores thumbnails (long side <= {SMALL_SIDE} px)")
        out = dense_labels(ClassifyDenseInput(patch_size=THUMB_PATCH), slide)
    return cut_to_patches(out, out.tissue), time.perf_counter() - started, out.scope_kind


def _resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a mask spanning the image onto the image's pixels."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0]) // shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1]) // shape[1], mask.shape[1] - 1)
    return np.asarray(mask[np.ix_(rows, cols)], dtype=bool)


def run_pen_case(case: PenCase, echo: Callable[[str], Any]) -> dict[str, Any]:
    """Every method's mask on one thumbnail, scored on and off its human marks."""
    marks = load_mask(case.marks)
    shape = (int(marks.shape[0]), int(marks.shape[1]))
    masks: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    for name, params in (
        ("clam_otsu", ClamParams(a_t=1.0, ref_patch_size=THUMB_PATCH)),
        ("clam_sthresh8", ClamParams(use_otsu=False, a_t=1.0, ref_patch_size=THUMB_PATCH)),
    ):
        mask, _, _, seconds[name] = clam_slide_mask(case.path, params)
        masks[name] = _resized(mask, shape)
    for name in PEER_ENVS:
        got = peer_mask(name, case.path, scale=1.0)
        if isinstance(got, str):
            notes[name] = got
        else:
            masks[name], seconds[name] = _resized(got[0], shape), got[1]
    ours, seconds["ours"], scope = _ours_pixels(case.path)
    masks["ours"] = _resized(ours, shape)
    grown = ndi.binary_dilation(marks, iterations=max(1, round(MARK_MARGIN * max(shape))))
    voters = [masks[n] for n in VOTERS if n in masks]
    majority = np.sum(voters, axis=0) * 2 > len(voters)
    off = ~grown
    called = {n: float(m[marks].mean()) for n, m in masks.items()}
    agreement = (
        {n: mask_dice(m & off, majority & off) for n, m in masks.items()} if (majority & off).any() else {}
    )
    row: dict[str, Any] = {
        "image": case.name,
        "what": case.what,
        "marked_share": float(marks.mean()),
        "marks_called": called,
        "off_marks_agreement": agreement,
        "image_called": {n: float(m.mean()) for n, m in masks.items()},
        "seconds": seconds,
        "ours_scope": scope,
        "notes": notes,
    }
    echo(f"{case.name}: " + ", ".join(f"{n} marks {v:.3f}" for n, v in called.items()))
    return row


def pen_markdown(rows: list[dict]) -> list[str]:
    """The pen group's section of ``peers.md``."""
    if not rows:
        return []
    head = "| image | marks | " + " | ".join(METHODS) + " | ours' scope |"
    lines = [
        "",
        "## pen (real thumbnails, HUMAN pen / coverslip-edge masks)",
        "",
        "Each cell: share of the human-marked pixels called tissue (lower is better on glass) / Dice "
        f"against the majority of {', '.join(VOTERS)} (those that ran) off the marks (agreement, "
        "not accuracy; n/a where that majority finds no tissue off the marks). Means over the images "
        "scored. pen_black's stroke and the coverslip edges lie on glass; pen_green's loop and "
        "pen_red's strokes partly touch tissue. Ours reads the thumbnails at 32 px patches; "
        "tiatoolbox reads them whole.",
        "",
        head,
        "|" + "---|" * (len(METHODS) + 3),
    ]
    for r in rows:
        cells = [_cell(r, m) for m in METHODS]
        lines.append(f"| {r['image']} | {r['what']} | " + " | ".join(cells) + f" | {r['ours_scope']} |")
    means = []
    for m in METHODS:
        called = [r["marks_called"][m] for r in rows if m in r["marks_called"]]
        agree = [r["off_marks_agreement"][m] for r in rows if m in r["off_marks_agreement"]]
        means.append(f"{np.mean(called):.3f} / {np.mean(agree):.3f}" if called and agree else "-")
    lines.append("| **mean** | | " + " | ".join(means) + " | |")
    return lines


def _cell(row: dict, method: str) -> str:
    if method not in row["marks_called"]:
        return "-"
    agree = row["off_marks_agreement"].get(method)
    return f"{row['marks_called'][method]:.3f} / " + ("n/a" if agree is None else f"{agree:.3f}")
