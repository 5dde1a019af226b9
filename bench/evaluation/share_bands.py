"""Patch label errors by how much of the patch is tissue: where on the truth's scale each method errs.

A patch is tissue when at least half of it is (the CLAM/TRIDENT convention), so a patch whose
true tissue share is 0.49 or 0.52 is decided by a pixel or two of edge. On a small biopsy one such
patch is 0.04-0.07 of a slide's Dice, and "never more than 0.02 below the best threshold on every
slide" then turns on coin flips that the best of four thresholds wins more often than any one
method. Counting each method's wrong patches per band of the truth's share, summed over a group of
slides, separates those flips (the half-line band) from real misses (tissue wholly missed, glass
or artefacts kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

SHARE_EDGES = (0.3, 0.45, 0.55, 0.7)
"""Inner edges of the bands of true tissue share; patches with no tissue at all are a band of their own."""
BAND_NAMES = ("0 (glass)", "(0, 0.3)", "[0.3, 0.45)", "[0.45, 0.55)", "[0.55, 0.7)", "[0.7, 1]")
HALF_LINE_BAND = 3
"""The band ``[0.45, 0.55)``: patches a pixel or two of edge decides."""


def share_band(share: np.ndarray) -> np.ndarray:
    """Band index (0-5, as ``BAND_NAMES``) of each patch's true tissue share."""
    share = np.asarray(share, dtype=np.float64)
    band = np.searchsorted(np.asarray(SHARE_EDGES), share, side="right") + 1
    return np.where(share <= 0.0, 0, band)


def errors_by_share(
    share: np.ndarray, labels: Mapping[str, np.ndarray], threshold: float = 0.5
) -> dict[str, Any]:
    """Patches per band, and each method's wrong labels per band, against ``share >= threshold``.

    ``labels`` maps a method to its boolean patch grid, the shape of ``share``; a grid of another
    shape is an error (the methods must be scored on one grid).
    """
    share = np.asarray(share, dtype=np.float64)
    truth = share >= threshold
    band = share_band(share).ravel()
    patches = np.bincount(band, minlength=len(BAND_NAMES))
    wrong: dict[str, list[int]] = {}
    for name, pred in labels.items():
        pred = np.asarray(pred, dtype=bool)
        if pred.shape != share.shape:
            raise ValueError(f"{name}: patch grid {pred.shape} is not the truth's {share.shape}")
        miss = (pred != truth).ravel()
        wrong[name] = np.bincount(band[miss], minlength=len(BAND_NAMES)).tolist()
    return {"patches": patches.tolist(), "wrong": wrong}


def summed(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The band counts of several slides added up.

    A method that did not run on a slide (a peer that could not open it) is summed over the slides it
    ran on: ``seen`` holds, per method, the patches per band and the number of those slides.
    """
    zeros = np.zeros(len(BAND_NAMES), dtype=np.int64)
    patches, count = zeros.copy(), 0
    wrong: dict[str, np.ndarray] = {}
    seen: dict[str, np.ndarray] = {}
    slides: dict[str, int] = {}
    for row in rows:
        here = np.asarray(row["patches"], dtype=np.int64)
        patches += here
        count += 1
        for name, counts in dict(row["wrong"]).items():
            wrong[name] = wrong.get(name, zeros) + np.asarray(counts, dtype=np.int64)
            seen[name] = seen.get(name, zeros) + here
            slides[name] = slides.get(name, 0) + 1
    return {
        "patches": patches.tolist(),
        "slides": count,
        "wrong": {n: v.tolist() for n, v in wrong.items()},
        "seen": {n: {"patches": seen[n].tolist(), "slides": slides[n]} for n in wrong},
    }


def bands_table(total: Mapping[str, Any], methods: Iterable[str]) -> list[str]:
    """Markdown rows: one per method, wrong patches per band and their share of the band's patches
    on the slides the method ran on (named when that is not every slide)."""
    patches = list(total["patches"])
    head = "| method | " + " | ".join(f"{b}: {n} patches" for b, n in zip(BAND_NAMES, patches, strict=True))
    lines = [head + " | all wrong |", "|" + "---|" * (len(BAND_NAMES) + 2)]
    for name in methods:
        counts = total["wrong"].get(name)
        if counts is None:
            continue
        seen = total["seen"][name]
        cells = [
            f"{c} ({100 * c / n:.0f}%)" if n else str(c) for c, n in zip(counts, seen["patches"], strict=True)
        ]
        label = (
            name
            if seen["slides"] == total["slides"]
            else f"{name} ({seen['slides']} of {total['slides']} slides)"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sum(counts)} |")
    return lines
