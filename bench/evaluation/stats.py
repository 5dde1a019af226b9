"""Paired comparisons between methods: Wilcoxon signed-rank with Bonferroni correction.

The test pairs two methods' per-slide scores on the same slides. It is honest about what it
can say: pairs where either score is undefined are dropped, zero differences are dropped (the
classic Wilcoxon treatment), and with no non-zero difference left the p-value is "n/a" with
the reason, never a made-up 1.0. ``n`` is always the number of pairs actually tested.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(kw_only=True, frozen=True)
class PairedTest:
    """One Wilcoxon signed-rank comparison of method ``a`` against method ``b``."""

    a: str
    b: str
    metric: str
    n_pairs: int
    """Pairs with both scores defined."""
    n_nonzero: int
    """Pairs whose difference is not zero: the sample the test actually ranks."""
    median_diff: float
    """Median of ``a - b`` over the defined pairs."""
    statistic: float
    p_value: float
    p_adjusted: float
    """Bonferroni-adjusted p-value: ``min(1, p * comparisons)``."""
    comparisons: int
    note: str = ""
    """Why the p-value is n/a, when it is."""

    @property
    def significant(self) -> bool:
        """True when the adjusted p-value is below 0.05."""
        return not math.isnan(self.p_adjusted) and self.p_adjusted < 0.05

    def as_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "n_pairs": self.n_pairs,
            "n_nonzero": self.n_nonzero,
            "median_diff": self.median_diff,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "comparisons": self.comparisons,
            "significant": self.significant,
            "note": self.note,
        }


def wilcoxon_pair(
    a: Sequence[float], b: Sequence[float], *, name_a: str, name_b: str, metric: str, comparisons: int = 1
) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of paired scores ``a`` and ``b`` (same slide order)."""
    if len(a) != len(b):
        raise ValueError(f"{name_a!r} has {len(a)} scores but {name_b!r} has {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    defined = ~(np.isnan(x) | np.isnan(y))
    diff = x[defined] - y[defined]
    nonzero = int(np.count_nonzero(diff))
    median = float(np.median(diff)) if diff.size else math.nan
    stat, p, note = math.nan, math.nan, ""
    if nonzero == 0:
        note = "no pairs" if diff.size == 0 else "all differences are zero"
    else:
        result = sps.wilcoxon(diff[diff != 0], zero_method="wilcox", alternative="two-sided")
        stat, p = float(result.statistic), float(result.pvalue)
        if nonzero < 6:
            # With fewer than 6 non-zero pairs even a perfect split can't reach p < 0.05 two-sided.
            note = f"only {nonzero} non-zero pairs: cannot reach p<0.05"
    return PairedTest(
        a=name_a,
        b=name_b,
        metric=metric,
        n_pairs=int(diff.size),
        n_nonzero=nonzero,
        median_diff=median,
        statistic=stat,
        p_value=p,
        p_adjusted=min(1.0, p * comparisons) if not math.isnan(p) else math.nan,
        comparisons=comparisons,
        note=note,
    )


def compare_methods(
    scores: Mapping[str, Sequence[float]], *, metric: str, reference: str | None = None
) -> list[PairedTest]:
    """All pairwise tests (or each method against ``reference``), Bonferroni over that family."""
    names = list(scores)
    if reference is not None:
        if reference not in scores:
            raise ValueError(f"reference method {reference!r} not among {names!r}")
        pairs = [(reference, other) for other in names if other != reference]
    else:
        pairs = list(itertools.combinations(names, 2))
    m = max(1, len(pairs))
    return [
        wilcoxon_pair(scores[a], scores[b], name_a=a, name_b=b, metric=metric, comparisons=m)
        for a, b in pairs
    ]
