"""Patch label errors by the truth's tissue share (bench/evaluation/share_bands.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tissue_oracle.bench.evaluation.share_bands import (
    BAND_NAMES,
    bands_table,
    errors_by_share,
    share_band,
    summed,
)


def test_each_share_falls_in_its_band_and_glass_is_a_band_of_its_own() -> None:
    share = np.array([0.0, 0.01, 0.29, 0.3, 0.449, 0.45, 0.5, 0.549, 0.55, 0.69, 0.7, 1.0])
    assert share_band(share).tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5]
    assert len(BAND_NAMES) == 6


def test_wrong_labels_are_counted_in_the_band_of_their_true_share() -> None:
    share = np.array([[0.0, 0.0, 0.2, 0.48], [0.52, 0.6, 0.9, 1.0]])
    truth = share >= 0.5
    flip_edges = truth.copy()
    flip_edges[0, 3] = True  # 0.48 called tissue
    flip_edges[1, 0] = False  # 0.52 called glass
    keeps_glass = truth.copy()
    keeps_glass[0, 0] = True  # an artefact on glass
    keeps_glass[1, 3] = False  # a whole tissue patch missed
    got = errors_by_share(share, {"edges": flip_edges, "glass": keeps_glass, "right": truth})
    assert got["patches"] == [2, 1, 0, 2, 1, 2]
    assert got["wrong"] == {
        "edges": [0, 0, 0, 2, 0, 0],
        "glass": [1, 0, 0, 0, 0, 1],
        "right": [0, 0, 0, 0, 0, 0],
    }


def test_a_method_on_another_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="patch grid"):
        errors_by_share(np.zeros((2, 2)), {"m": np.zeros((3, 2), dtype=bool)})


def test_slides_add_up_and_the_table_gives_counts_and_shares_per_band() -> None:
    a = {
        "patches": [10, 0, 0, 4, 0, 2],
        "wrong": {"ours": [1, 0, 0, 1, 0, 0], "clam_otsu": [0, 0, 0, 2, 0, 1]},
    }
    b = {"patches": [6, 1, 0, 0, 0, 2], "wrong": {"ours": [0, 1, 0, 0, 0, 0]}}
    total = summed([a, b])
    assert total["patches"] == [16, 1, 0, 4, 0, 4] and total["slides"] == 2
    assert total["wrong"] == {"ours": [1, 1, 0, 1, 0, 0], "clam_otsu": [0, 0, 0, 2, 0, 1]}
    assert total["seen"]["clam_otsu"] == {"patches": [10, 0, 0, 4, 0, 2], "slides": 1}
    lines = bands_table(total, ["clam_otsu", "lazyslide", "ours"])
    assert lines[0].startswith("| method | 0 (glass): 16 patches |")
    # clam_otsu did not run on slide b: its shares are of slide a's patches, and the row says so
    assert lines[2] == "| clam_otsu (1 of 2 slides) | 0 (0%) | 0 | 0 | 2 (50%) | 0 | 1 (50%) | 3 |"
    assert lines[3].startswith("| ours | 1 (6%) | 1 (100%) |")
    assert len(lines) == 4  # lazyslide has no counts and gets no row
