"""Ground truth beside synthetic slides: loading, and patch-level truth from the masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tissue_oracle.bench.synth.generate import generate_slide
from tissue_oracle.bench.synth.truth import find_truth, load_truth
from tissue_oracle.tools.errors import SlideError
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS
from tissue_oracle.tools.schemas import PatchGrid


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_slide(
        tmp_path_factory.mktemp("truth") / "t.tiff", preset="tiny", seed=7, width=1600, height=1200
    )


def test_truth_loads_with_stated_resolution(slide: Path) -> None:
    truth = load_truth(slide)
    assert truth.mask_downsample == 16
    assert truth.tissue.shape == (75, 100) and truth.tissue.dtype == bool
    assert truth.stain in {"he", "jones", "evg"}
    assert truth.tissue.any() and not truth.tissue.all()
    assert set(truth.artefacts) == set(truth.meta["artefact_types"])
    assert truth.focus.shape == truth.tissue.shape


def test_patch_labels_agree_with_the_mask(slide: Path) -> None:
    truth = load_truth(slide)
    labels = truth.patch_labels(512)
    assert labels.shape == PatchGrid(slide_width=1600, slide_height=1200, patch_size=512).shape
    # Brute force: blow the mask up to level-0 px (padded with background) and average per patch.
    full = np.zeros((3 * 512, 4 * 512))
    full[:1200, :1600] = np.kron(truth.tissue, np.ones((16, 16)))[:1200, :1600]
    fraction = full.reshape(3, 512, 4, 512).mean(axis=(1, 3))
    np.testing.assert_allclose(truth.tissue_fraction(512), fraction, atol=1e-9)
    np.testing.assert_array_equal(labels, fraction >= 0.5)
    np.testing.assert_array_equal(truth.patch_labels(512, threshold=0.1), fraction >= 0.1)


def test_patch_size_not_a_multiple_of_the_mask_and_other_levels(slide: Path) -> None:
    truth = load_truth(slide)
    full = np.zeros((6 * 200, 8 * 200))
    full[:1200, :1600] = np.kron(truth.tissue, np.ones((16, 16)))[:1200, :1600]
    expect = full.reshape(6, 200, 8, 200).mean(axis=(1, 3))
    np.testing.assert_allclose(truth.tissue_fraction(200), expect, atol=1e-9)
    np.testing.assert_allclose(truth.tissue_fraction(50, downsample=4), expect, atol=1e-9)


def test_patch_focus_and_artefacts(slide: Path) -> None:
    truth = load_truth(slide)
    focus = truth.patch_focus(256)
    has_tissue = truth.tissue_fraction(256) > 0
    assert np.all((focus == NO_FOCUS) == ~has_tissue)
    assert set(np.unique(focus)) <= {*FOCUS_CODES.values(), NO_FOCUS}
    arts = truth.patch_artefacts(256)
    for name, grid in arts.items():
        assert grid.shape == focus.shape
        assert grid.any() == truth.artefacts[name].any()


def test_missing_truth_raises_and_find_returns_none(tmp_path: Path) -> None:
    assert find_truth(tmp_path / "real.svs") is None
    with pytest.raises(SlideError, match="no ground truth"):
        load_truth(tmp_path / "real.svs")
