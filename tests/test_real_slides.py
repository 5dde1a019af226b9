"""The three real slides in ../shared/data/real/slides (skipped where the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from tissue_oracle.tools.errors import SlideError
from tissue_oracle.tools.schemas import PatchRef
from tissue_oracle.tools.slides import FlatImageSlide, OpenSlideSlide, open_slide, require_mpp

pytestmark = pytest.mark.real

SVS = "tcga-cr-7395-01a-01-ts1.svs"
FLAT_TIFF = "kidney-48-5.tif"
NDPI = "test3-DAPI-2-387.ndpi"


def slide_path(real_data: Path, name: str) -> Path:
    path = real_data / "slides" / name
    if not path.is_file():
        pytest.skip(f"{name} is absent from {str(real_data)!r}")
    return path


def test_tcga_svs_jpeg2000_without_mpp(real_data: Path) -> None:
    with open_slide(slide_path(real_data, SVS)) as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert (slide.vendor, slide.dimensions, slide.levels) == ("aperio", (4443, 3567), 2)
        assert slide.level_dimensions[1] == (2221, 1783)
        assert slide.mpp is None and slide.magnification is None
        with pytest.raises(SlideError, match="Suggestions:"):
            require_mpp(slide)
        thumb = slide.thumbnail(64)
        assert thumb.shape == (56, 70, 3) and thumb.dtype == np.uint8
        assert 120 < thumb.mean() < 240  # ~70% H&E tissue on a white background
        patch = slide.read_patch(PatchRef(x=2048, y=1536, size=512), out_size=128)
        assert patch.shape == (128, 128, 3) and patch.std() > 5
    with open_slide(slide_path(real_data, SVS), mpp=0.5) as slide:
        assert require_mpp(slide) == 0.5


def test_kidney_flat_tiff(real_data: Path) -> None:
    path = slide_path(real_data, FLAT_TIFF)
    reference = tifffile.imread(path)
    with open_slide(path) as slide:
        assert isinstance(slide, FlatImageSlide)
        assert (slide.vendor, slide.dimensions, slide.mpp) == ("flat-tiff", (1493, 901), None)
        assert np.array_equal(slide.read_region(0, 0, 0, (1493, 901)), reference)
        thumb = slide.thumbnail(8)
    assert thumb.shape == (113, 187, 3)
    blocks = reference[:896, :1488].reshape(112, 8, 186, 8, 3).mean(axis=(1, 3))
    assert np.abs(thumb[:112, :186] - blocks).max() <= 2


def test_ndpi_pyramid_and_mpp(real_data: Path) -> None:
    path = slide_path(real_data, NDPI)
    with open_slide(path) as slide:
        assert (slide.vendor, slide.dimensions, slide.levels) == ("hamamatsu", (3968, 4864), 7)
        assert slide.downsamples == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
        assert slide.mpp == pytest.approx(0.228, abs=1e-3)
        assert slide.magnification == 40.0
        thumb = slide.thumbnail(64)
    # level 6 is exactly 64x: the thumbnail is that level, composited onto white
    with openslide.OpenSlide(path) as raw:
        level6 = np.asarray(raw.read_region((0, 0), 6, raw.level_dimensions[6]).convert("RGB"))
    assert thumb.shape == level6.shape == (76, 62, 3)
    assert np.array_equal(thumb, level6)


def test_real_slides_hide_associated_images_and_hash(real_data: Path) -> None:
    hashes = set()
    for name in (SVS, FLAT_TIFF, NDPI):
        with open_slide(slide_path(real_data, name)) as slide:
            public = [n for n in dir(slide) if not n.startswith("_")]
            assert not [n for n in public if "associated" in n or "macro" in n or "label" in n]
            digest = slide.file_hash()
            assert digest is not None and digest == slide.file_hash()
            hashes.add(digest)
    assert len(hashes) == 3
