"""Patch metrics, focus agreement and paired statistics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tissue_oracle.bench.evaluation.metrics import (
    fmt,
    focus_scores,
    seg_scores,
    stain_table,
    summarise,
    weighted_kappa,
)
from tissue_oracle.bench.evaluation.stats import compare_methods, wilcoxon_pair


def test_seg_scores_hand_computed() -> None:
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    pred = np.array([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=bool)
    s = seg_scores(pred, truth)
    assert (s.tp, s.fp, s.fn, s.tn) == (3, 1, 1, 3)
    assert s.dice == pytest.approx(6 / 8)
    assert s.precision == pytest.approx(3 / 4)
    assert s.recall == pytest.approx(3 / 4)
    assert s.accuracy == pytest.approx(6 / 8)


def test_seg_scores_undefined_is_nan_not_zero() -> None:
    empty = np.zeros((3, 3), dtype=bool)
    s = seg_scores(empty, empty)
    assert math.isnan(s.dice) and math.isnan(s.precision) and math.isnan(s.recall)
    assert s.accuracy == 1.0
    assert fmt(s.dice) == "n/a"


def test_seg_scores_valid_mask_and_shape_check() -> None:
    truth = np.array([[1, 0]], dtype=bool)
    pred = np.array([[1, 1]], dtype=bool)
    assert seg_scores(pred, truth, valid=np.array([[1, 0]], dtype=bool)).dice == 1.0
    with pytest.raises(ValueError, match="differs"):
        seg_scores(pred, truth.T)


def test_stain_table_cross_stain_std_and_worst() -> None:
    table = stain_table([0.9, 0.7, 0.6, 0.8, math.nan], ["HE", "HE", "EVG", "EVG", "EVG"])
    assert table.per_stain["HE"].mean == pytest.approx(0.8)
    assert table.per_stain["EVG"].n == 2  # nan left out, not counted
    assert table.per_stain["HE"].std == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert table.cross_stain_std == pytest.approx(np.std([0.8, 0.7]))
    assert table.worst == pytest.approx(0.6)
    assert summarise([]).fmt() == "n/a"


def test_weighted_kappa_known_values() -> None:
    a = np.array([0, 1, 2, 0, 1, 2])
    assert weighted_kappa(a, a, 3) == pytest.approx(1.0)
    # Swapping the extremes is worse than swapping neighbours under quadratic weights.
    near = weighted_kappa(a, np.array([1, 1, 2, 0, 1, 2]), 3)
    far = weighted_kappa(a, np.array([2, 1, 2, 0, 1, 2]), 3)
    assert far < near < 1.0
    # Unweighted binary kappa by hand: po=0.75, pe=0.5 -> 0.5.
    assert weighted_kappa(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2, "unweighted") == pytest.approx(
        (0.75 - 0.5) / 0.5
    )
    assert math.isnan(weighted_kappa(np.zeros(4, int), np.zeros(4, int), 3))


def test_focus_scores_sensitivity_specificity() -> None:
    truth = np.array([0, 0, 0, 1, 2, 2, 255])
    pred = np.array([0, 0, 1, 1, 2, 0, 0])
    f = focus_scores(pred, truth)
    assert f.n == 6  # the 255 cell has no truth focus
    assert f.sensitivity == pytest.approx(2 / 3)  # blurred truth: 1, 2, 2 -> flagged 1, 2
    assert f.specificity == pytest.approx(2 / 3)  # sharp truth: 0, 0, 0 -> kept 0, 0
    assert f.accuracy == pytest.approx(4 / 6)


def test_wilcoxon_clear_difference_is_significant_after_bonferroni() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, 20)
    better = base + rng.uniform(0.02, 0.08, 20)
    t = wilcoxon_pair(better, base, name_a="a", name_b="b", metric="dice", comparisons=3)
    assert t.n_pairs == 20 and t.n_nonzero == 20
    assert t.p_value < 1e-4
    assert t.p_adjusted == pytest.approx(min(1.0, t.p_value * 3))
    assert t.significant and t.median_diff > 0


def test_wilcoxon_ties_and_too_few_pairs_are_honest() -> None:
    same = wilcoxon_pair([0.5, 0.6], [0.5, 0.6], name_a="a", name_b="b", metric="dice")
    assert math.isnan(same.p_value) and same.note == "all differences are zero" and not same.significant
    few = wilcoxon_pair([0.9, 0.8, 0.7], [0.5, 0.6, 0.7], name_a="a", name_b="b", metric="dice")
    assert few.n_pairs == 3 and few.n_nonzero == 2 and "cannot reach" in few.note
    undefined = wilcoxon_pair([math.nan], [0.3], name_a="a", name_b="b", metric="dice")
    assert undefined.n_pairs == 0 and undefined.note == "no pairs"


def test_compare_methods_family_size() -> None:
    scores = {"x": [0.1, 0.2, 0.3], "y": [0.2, 0.3, 0.4], "z": [0.3, 0.3, 0.3]}
    assert [t.comparisons for t in compare_methods(scores, metric="dice")] == [3, 3, 3]
    ref = compare_methods(scores, metric="dice", reference="z")
    assert [(t.a, t.b, t.comparisons) for t in ref] == [("z", "x", 2), ("z", "y", 2)]
    with pytest.raises(ValueError, match="reference"):
        compare_methods(scores, metric="dice", reference="nope")
