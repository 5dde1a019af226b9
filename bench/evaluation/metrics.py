"""Patch-level segmentation and focus metrics, and their per-stain summaries.

Every mask here is a boolean array on one patch grid, shape ``(rows, cols)``, True for tissue.
Metrics are computed per slide from the confusion counts; a metric whose denominator is zero
is ``nan`` (reported as "n/a"), never silently 0 or 1. Summaries give mean ± std over slides
per stain, the cross-stain standard deviation of the stain means, and the worst slide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS

#: Focus codes on a patch grid (``tools.focus``, as ``Truth.patch_focus`` gives them).
SHARP = FOCUS_CODES["sharp"]


@dataclass(kw_only=True, frozen=True)
class SegScores:
    """One slide's patch-level scores against its reference mask."""

    tp: int
    """Patches tissue in both prediction and reference."""
    fp: int
    """Patches tissue in the prediction only."""
    fn: int
    """Patches tissue in the reference only."""
    tn: int
    """Patches background in both."""

    @property
    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn)

    def as_dict(self) -> dict[str, float]:
        return {
            "dice": self.dice,
            "precision": self.precision,
            "recall": self.recall,
            "accuracy": self.accuracy,
        }


SEG_METRICS = ("dice", "precision", "recall", "accuracy")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def seg_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> SegScores:
    """Confusion counts of ``pred`` against ``truth`` (same patch-grid shape), over ``valid`` cells."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction grid {pred.shape} differs from truth grid {truth.shape}")
    if valid is not None:
        keep = np.asarray(valid, dtype=bool)
        pred, truth = pred[keep], truth[keep]
    return SegScores(
        tp=int(np.sum(pred & truth)),
        fp=int(np.sum(pred & ~truth)),
        fn=int(np.sum(~pred & truth)),
        tn=int(np.sum(~pred & ~truth)),
    )


# --------------------------------------------------------------------------- summaries


@dataclass(kw_only=True, frozen=True)
class Summary:
    """Mean ± sample std (ddof=1; 0 for a single value) and minimum of one metric over slides."""

    n: int
    mean: float
    std: float
    min: float

    def fmt(self, digits: int = 3) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarise(values: Iterable[float]) -> Summary:
    """Summary of the finite values; nan entries (undefined metrics) are left out and not counted."""
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return Summary(n=0, mean=math.nan, std=math.nan, min=math.nan)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return Summary(n=int(arr.size), mean=float(arr.mean()), std=std, min=float(arr.min()))


@dataclass(kw_only=True, frozen=True)
class StainTable:
    """One method's metric per stain, plus the across-stain view the paper reports."""

    per_stain: dict[str, Summary]
    overall: Summary
    cross_stain_std: float
    """Standard deviation (ddof=0) of the per-stain means: how much the method depends on stain."""
    worst: float
    """The minimum over all slides."""


def stain_table(values: Sequence[float], stains: Sequence[str]) -> StainTable:
    """Group one metric's per-slide ``values`` by ``stains`` (aligned lists)."""
    if len(values) != len(stains):
        raise ValueError(f"{len(values)} values but {len(stains)} stains")
    groups: dict[str, list[float]] = {}
    for value, stain in zip(values, stains, strict=True):
        groups.setdefault(stain, []).append(value)
    per_stain = {stain: summarise(group) for stain, group in sorted(groups.items())}
    means = [s.mean for s in per_stain.values() if s.n]
    overall = summarise(values)
    return StainTable(
        per_stain=per_stain,
        overall=overall,
        cross_stain_std=float(np.std(means)) if means else math.nan,
        worst=overall.min,
    )


# --------------------------------------------------------------------------- focus


@dataclass(kw_only=True, frozen=True)
class FocusScores:
    """Agreement of predicted focus codes with truth on the patches both label."""

    n: int
    kappa_quadratic: float
    """3-class Cohen's kappa with quadratic weights (sharp < mild_blur < out_of_focus)."""
    kappa_binary: float
    """Cohen's kappa of sharp against not sharp."""
    sensitivity: float
    """Blurred (not sharp) truth patches flagged as not sharp."""
    specificity: float
    """Sharp truth patches kept as sharp."""
    accuracy: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "kappa_quadratic": self.kappa_quadratic,
            "kappa_binary": self.kappa_binary,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "accuracy": self.accuracy,
        }


def weighted_kappa(a: np.ndarray, b: np.ndarray, n_classes: int, weights: str = "quadratic") -> float:
    """Cohen's kappa of two integer ratings in ``0..n_classes-1``; nan when chance agreement is total."""
    a, b = np.asarray(a, dtype=int).ravel(), np.asarray(b, dtype=int).ravel()
    if a.size == 0:
        return math.nan
    observed = np.zeros((n_classes, n_classes), dtype=float)
    np.add.at(observed, (a, b), 1.0)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((n_classes, n_classes))
    if weights == "quadratic":
        w = (i - j) ** 2 / max(1, (n_classes - 1) ** 2)
    elif weights == "linear":
        w = np.abs(i - j) / max(1, n_classes - 1)
    else:
        w = (i != j).astype(float)
    denom = float((w * expected).sum())
    # Both raters constant and equal: kappa is undefined, not perfect.
    return math.nan if denom == 0 else 1.0 - float((w * observed).sum()) / denom


def focus_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> FocusScores:
    """Focus agreement on cells where truth and prediction both carry a code (not 255)."""
    pred, truth = np.asarray(pred).ravel().astype(int), np.asarray(truth).ravel().astype(int)
    keep = (pred != NO_FOCUS) & (truth != NO_FOCUS)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).ravel()
    p, t = pred[keep], truth[keep]
    p_blur, t_blur = p != SHARP, t != SHARP
    return FocusScores(
        n=int(p.size),
        kappa_quadratic=weighted_kappa(p, t, 3, "quadratic"),
        kappa_binary=weighted_kappa(p_blur, t_blur, 2, "unweighted"),
        sensitivity=_ratio(np.sum(p_blur & t_blur), np.sum(t_blur)),
        specificity=_ratio(np.sum(~p_blur & ~t_blur), np.sum(~t_blur)),
        accuracy=_ratio(np.sum(p == t), p.size),
    )


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table cell; nan and None print as "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{value:.{digits}f}"


def mean_by(rows: Iterable[Mapping[str, object]], key: str, metric: str) -> dict[str, float]:
    """Mean of ``metric`` per value of ``key`` over result rows (nan values left out)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        value = row.get(metric)
        if isinstance(value, int | float):
            groups.setdefault(str(row[key]), []).append(float(value))
    return {k: summarise(v).mean for k, v in groups.items()}
