"""The Slide interface on virtual slides and on pyramidal TIFFs written here; every bad input."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tissue_oracle.tools.errors import (
    ConfigError,
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    SlideTooLargeError,
    UnsupportedSlideError,
)
from tissue_oracle.tools.schemas import Box, PatchRef
from tissue_oracle.tools.slide_readers import ArraySlide
from tissue_oracle.tools.slides import Slide, open_slide, require_mpp


def gradient_image(height: int, width: int) -> np.ndarray:
    """A smooth RGB test image: block means of it are easy to check to +-2."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack(
        [xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1
    ).astype(np.uint8)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block, cropping the ragged edge (reference for downsampling)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).astype(float)
    return blocks.mean(axis=(1, 3))


def write_pyramid_tiff(path: Path, image: np.ndarray, levels: int = 3, mpp: float | None = 0.5) -> Path:
    """A tiled, zlib-compressed pyramid, one page per level: OpenSlide's generic-tiff reads it."""
    resolution = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            pixels = image[:: 2**level, :: 2**level]
            tif.write(
                pixels, tile=(256, 256), compression="zlib", photometric="rgb",
                subfiletype=0 if level == 0 else 1, **resolution,  # type: ignore[arg-type]
            )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return gradient_image(1300, 1700)


@pytest.fixture(scope="module")
def tiff_slide_path(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    return write_pyramid_tiff(tmp_path_factory.mktemp("tiff") / "pyramid.tif", image)


# --------------------------------------------------------------------------- virtual slides


def test_array_slide_metadata(image: np.ndarray) -> None:
    with open_slide(image) as slide:
        assert slide.dimensions == (1700, 1300)
        assert slide.level_dimensions == ((1700, 1300), (850, 650), (425, 325))
        assert slide.downsamples == (1.0, 2.0, 4.0)
        assert slide.levels == 3
        assert (slide.name, slide.path, slide.vendor, slide.mpp, slide.magnification) == (
            "array", None, None, None, None
        )  # fmt: skip
        assert slide.file_hash() is None
    with open_slide(image, mpp=0.25, name="case-7") as slide:
        assert (slide.name, slide.mpp, slide.recorded_mpp) == ("case-7", 0.25, None)


def test_thumbnail_shape_and_values_match_block_means(image: np.ndarray) -> None:
    with open_slide(image) as slide:
        thumb = slide.thumbnail(8)
    assert thumb.shape == (math.ceil(1300 / 8), math.ceil(1700 / 8), 3) and thumb.dtype == np.uint8
    expected = block_mean(image, 8)
    assert np.abs(thumb[: expected.shape[0], : expected.shape[1]] - expected).max() <= 2


def test_thumbnail_edge_pixels_blend_with_white_outside_the_slide() -> None:
    black = np.zeros((10, 10, 3), dtype=np.uint8)
    with open_slide(black) as slide:
        thumb = slide.thumbnail(4)
    assert thumb.shape == (3, 3, 3)
    assert thumb[0, 0].tolist() == [0, 0, 0]
    # the last column covers level-0 x 8..12, half of it outside the slide (white)
    assert abs(int(thumb[0, 2, 0]) - 128) <= 2
    assert abs(int(thumb[2, 2, 0]) - 191) <= 2


def test_thumbnail_never_reads_level_zero_when_a_coarser_level_exists() -> None:
    reads: list[int] = []
    lock = threading.Lock()

    class CountingSlide(ArraySlide):
        def _read_region(
            self, level0_x: int, level0_y: int, level: int, width: int, height: int
        ) -> np.ndarray:
            with lock:
                reads.append(level)
            return super()._read_region(level0_x, level0_y, level, width, height)

    slide = CountingSlide(gradient_image(2048, 1600), path=None, name="count", mpp=None)
    slide.thumbnail(64)
    slide.read_patch(PatchRef(x=0, y=0, size=1024), out_size=128)
    assert reads and 0 not in reads
    assert slide.best_level_for(64) == slide.levels - 1 == 2


def test_read_region_level_and_outside_is_white(image: np.ndarray) -> None:
    with open_slide(image) as slide:
        inside = slide.read_region(100, 200, 0, (30, 20))
        assert np.array_equal(inside, image[200:220, 100:130])
        level1 = slide.read_region(200, 400, 1, (10, 10))
        assert np.abs(level1.astype(int) - block_mean(image[400:420, 200:220], 2)).max() <= 1
        corner = slide.read_region(-5, -5, 0, (10, 10))
        assert (corner[:5] == 255).all() and (corner[:, :5] == 255).all()
        assert np.array_equal(corner[5:, 5:], image[:5, :5])
        assert (slide.read_region(5000, 5000, 2, (8, 8)) == 255).all()
        with pytest.raises(ValueError, match="level 3 out of range"):
            slide.read_region(0, 0, 3, (8, 8))


def test_read_patch_and_read_box(image: np.ndarray) -> None:
    with open_slide(image) as slide:
        ref = PatchRef(x=512, y=256, size=256)
        full = slide.read_patch(ref)
        assert np.array_equal(full, image[256:512, 512:768])
        small = slide.read_patch(ref, out_size=64)
        assert small.shape == (64, 64, 3)
        assert np.abs(small - block_mean(full, 4)).max() <= 2
        crop = slide.read_box(Box(x0=100, y0=100, x1=612, y1=400), downsample=2)
        assert crop.shape == (150, 256, 3)
        assert np.abs(crop - block_mean(image[100:400, 100:612], 2)).max() <= 2


def test_patch_grid_and_best_level(image: np.ndarray) -> None:
    with open_slide(image) as slide:
        grid = slide.patch_grid(512)
        assert grid.shape == (3, 4) and (grid.slide_width, grid.slide_height) == (1700, 1300)
        assert slide.patch_grid(256).shape == (6, 7)
        assert [slide.best_level_for(d) for d in (0.5, 1, 1.9, 2, 3.99, 64)] == [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.full((4, 4), 100, np.uint8), [100, 100, 100]),
        (np.full((4, 4, 4), [0, 0, 0, 0], np.uint8), [255, 255, 255]),  # transparent -> white
        (np.full((4, 4, 4), [0, 0, 0, 255], np.uint8), [0, 0, 0]),
        (np.full((4, 4, 2), [0, 128], np.uint8), [127, 127, 127]),  # grey + half alpha over white
        (np.full((4, 4, 3), 65535, np.uint16), [255, 255, 255]),
        (np.full((4, 4), 257 * 10, np.uint16), [10, 10, 10]),
        (np.ones((4, 4), bool), [255, 255, 255]),
        (np.full((4, 4, 3), 0.5, np.float32), [128, 128, 128]),
    ],
)
def test_pixel_formats_become_rgb_uint8(pixels: np.ndarray, expected: list[int]) -> None:
    with open_slide(pixels) as slide:
        out = slide.read_region(0, 0, 0, (4, 4))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    assert np.abs(out[0, 0].astype(int) - expected).max() <= 1


def test_closed_slide_refuses_reads(image: np.ndarray) -> None:
    with open_slide(image) as slide:
        pass
    with pytest.raises(SlideError, match="closed"):
        slide.thumbnail(16)
    slide.close()  # twice is fine


def test_no_way_to_reach_associated_images(tiff_slide_path: Path, image: np.ndarray) -> None:
    forbidden = ("associated", "label", "macro", "properties", "handle")
    for slide in (open_slide(tiff_slide_path), open_slide(image)):
        with slide:
            public = [n for n in dir(slide) if not n.startswith("_")]
            assert not [n for n in public if any(word in n.lower() for word in forbidden)]
    public_api = [n for n in dir(Slide) if not n.startswith("_")]
    assert not [n for n in public_api if any(word in n.lower() for word in forbidden)]


# --------------------------------------------------------------------------- pyramidal TIFF via OpenSlide


def test_pyramidal_tiff_opens_through_openslide(tiff_slide_path: Path, image: np.ndarray) -> None:
    with open_slide(tiff_slide_path) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.level_dimensions == ((1700, 1300), (850, 650), (425, 325))
        assert slide.mpp == pytest.approx(0.5)
        assert slide.name == "pyramid"
        assert np.array_equal(slide.read_region(300, 400, 0, (64, 32)), image[400:432, 300:364])
        thumb = slide.thumbnail(16)
        digest = slide.file_hash()
    assert thumb.shape == (82, 107, 3)
    # level 2 is a decimation here (not a mean), so compare coarsely with the true block means
    assert np.abs(thumb[:81, :106] - block_mean(image, 16)).mean() < 6
    assert digest is not None and digest.startswith("sha256:") and len(digest) == 7 + 64
    with open_slide(tiff_slide_path, mpp=0.3) as slide:
        assert slide.mpp == 0.3 and slide.recorded_mpp == pytest.approx(0.5)
        assert slide.file_hash() == digest


def test_concurrent_reads_equal_serial(tiff_slide_path: Path) -> None:
    refs = [PatchRef(x=x, y=y, size=256) for x in range(0, 1700, 200) for y in range(0, 1300, 200)]
    with open_slide(tiff_slide_path) as slide:
        serial = [slide.read_patch(ref, out_size=128) for ref in refs]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(lambda ref: slide.read_patch(ref, out_size=128), refs * 3))
    for index, patch in enumerate(parallel):
        assert np.array_equal(patch, serial[index % len(refs)])


def test_close_waits_for_reads_in_flight(tiff_slide_path: Path) -> None:
    slide = open_slide(tiff_slide_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(slide.thumbnail, 2) for _ in range(4)]
        slide.close()
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result().shape)
            except SlideError as exc:
                outcomes.append(str(exc))
    assert all(o == (650, 850, 3) or "closed" in str(o) for o in outcomes)


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError) as info:
        open_slide(tmp_path / "nope.svs")
    assert "nope.svs" in str(info.value) and "Check the path" in str(info.value)


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(CorruptSlideError, match=r"empty.svs.*0 bytes.*Copy it again"):
        open_slide(path)


def test_folder(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedSlideError, match="folder"):
        open_slide(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.svs"
    path.write_text("patient notes, not pixels\n" * 50)
    with pytest.raises(UnsupportedSlideError, match=r"notes.svs.*not an image"):
        open_slide(path)


def test_unsupported_format(tmp_path: Path) -> None:
    path = tmp_path / "scan.vsi"
    path.write_bytes(b"\x00\x01vsi-ish" * 100)
    with pytest.raises(UnsupportedSlideError, match=r"scan.vsi.*Olympus VSI.*Convert"):
        open_slide(path)


def test_truncated_png(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(image).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSlideError, match=r"cut.png.*copy it again"):
        open_slide(path)


def test_truncated_pyramid_tiff(tmp_path: Path, image: np.ndarray) -> None:
    path = write_pyramid_tiff(tmp_path / "cut.tif", image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptSlideError, match=r"cut\.tif"), open_slide(path) as slide:
        slide.read_region(0, 0, 0, (1700, 1300))


def test_a_tiff_cut_before_its_first_page_says_so_once(tmp_path: Path) -> None:
    """A scan copied only in part (the first 5000 bytes of TCGA's svs): tifffile's own log line,
    "invalid offset to first page", reached the console beside our error, which names the file
    and what to do. Run as a user runs it, in a process of its own."""
    path = tmp_path / "head.svs"
    path.write_bytes(b"II*\x00" + (2_769_012).to_bytes(4, "little") + bytes(4992))
    with pytest.raises(CorruptSlideError, match=r"head\.svs.*copy it again"):
        open_slide(path)
    code = (
        "import sys\nfrom tissue_oracle.tools.slides import open_slide\n"
        "try:\n    open_slide(sys.argv[1])\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "CorruptSlideError", run.stdout + run.stderr
    assert "invalid offset" not in run.stderr, run.stderr


def test_unreadable_tile_raises_at_read_time(tmp_path: Path, image: np.ndarray) -> None:
    path = write_pyramid_tiff(tmp_path / "bad-tile.tif", image)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[7], tif.pages[0].databytecounts[7]  # row 1, col 0
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)
    with open_slide(path) as slide:
        slide.read_region(0, 0, 0, (256, 256))  # an intact tile still reads
        with pytest.raises(CorruptSlideError, match=r"bad-tile.tif.*won't decode.*copy it again"):
            slide.read_region(0, 256, 0, (256, 256))


def test_absurd_dimensions(tmp_path: Path) -> None:
    huge = np.broadcast_to(np.zeros(3, np.uint8), (600_000, 4, 3))  # no memory behind it
    with pytest.raises(SlideTooLargeError, match="600000"):
        open_slide(huge)
    tiled = tmp_path / "wide.tif"  # OpenSlide path: tiled, so generic-tiff claims it
    tifffile.imwrite(tiled, np.broadcast_to(np.uint8(0), (256, 520_000)), tile=(256, 256), compression="zlib")
    with pytest.raises(SlideTooLargeError, match=r"wide.tif.*520000x256"):
        open_slide(tiled)
    strips = tmp_path / "tall.tif"  # flat path: strips, which OpenSlide doesn't claim
    tifffile.imwrite(
        strips, np.broadcast_to(np.uint8(0), (510_000, 8)), compression="zlib", rowsperstrip=65536
    )
    with pytest.raises(SlideTooLargeError, match=r"tall.tif.*8x510000"):
        open_slide(strips)


def test_bad_arrays_and_options() -> None:
    with pytest.raises(UnsupportedSlideError, match="shape"):
        open_slide(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(UnsupportedSlideError, match="int32"):
        open_slide(np.zeros((8, 8), np.int32))
    with pytest.raises(ConfigError, match="mpp"):
        open_slide(np.zeros((8, 8), np.uint8), mpp=-1.0)


def test_require_mpp(image: np.ndarray) -> None:
    with open_slide(image, name="nompp") as slide, pytest.raises(SlideError) as info:
        require_mpp(slide)
    assert "'nompp'" in str(info.value) and "Suggestions:" in str(info.value) and "--mpp" in str(info.value)
    with open_slide(image, mpp=0.5) as slide:
        assert require_mpp(slide) == 0.5


def test_flat_png_with_alpha_and_dpi(tmp_path: Path) -> None:
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[:, :30] = [200, 0, 0, 255]
    path = tmp_path / "flat.png"
    Image.fromarray(rgba).save(path, dpi=(25_400 / 0.5, 25_400 / 0.5))
    with open_slide(path) as slide:
        assert (slide.vendor, slide.dimensions, slide.name) == ("flat-png", (60, 40), "flat")
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)
        pixels = slide.read_region(0, 0, 0, (60, 40))
    assert pixels[0, 0].tolist() == [200, 0, 0] and pixels[0, 59].tolist() == [255, 255, 255]
    Image.fromarray(rgba).save(path, dpi=(72, 72))  # a photographic default is no microscope scale
    with open_slide(path) as slide:
        assert slide.mpp is None


def test_a_thumbnail_is_read_once_per_downsample_and_each_caller_gets_its_own_copy(image: np.ndarray) -> None:
    reads = []
    with open_slide(image) as slide:
        inner = slide._read_region

        def counted(*args: int) -> np.ndarray:
            reads.append(args)
            return inner(*args)

        slide._read_region = counted  # type: ignore[method-assign]
        first = slide.thumbnail(4)
        decoded = len(reads)
        first[:] = 0  # a caller scribbling on its copy changes nothing kept
        again = slide.thumbnail(4)
        assert len(reads) == decoded > 0
        assert again.max() > 0 and not np.shares_memory(first, again)
        slide.thumbnail(8), slide.thumbnail(16)  # two more downsamples: 4 is no longer kept
        before = len(reads)
        assert np.array_equal(slide.thumbnail(4), again) and len(reads) > before
