"""tools.student_tiles: the whole grid's student pixels from one read match per-patch read_patch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_slides import write_pyramid_tiff

from tissue_oracle.tools.schemas import PatchGrid
from tissue_oracle.tools.slides import open_slide
from tissue_oracle.tools.student_tiles import (
    band_rows,
    cut_tiles,
    grid_tiles,
    iter_tile_bands,
    read_tile_rows,
)


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus blocky noise: tiles differ and resampling errors show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // width, yy * 200 // height, (xx // 7 + yy // 5) % 120], -1)
    blocks = rng.integers(0, 56, size=(height // 8 + 1, width // 8 + 1, 3))
    noise = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:height, :width]
    return (base + noise).clip(0, 255).astype(np.uint8)


def per_patch(slide, grid: PatchGrid, px: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([slide.read_patch(grid.ref(r, c), out_size=px) for r, c in grid.cells()])


# A slide whose sides are not multiples of the patch: the last row and column are partial.
HEIGHT, WIDTH = 1000, 1300


@pytest.mark.parametrize(
    ("patch_size", "patch_px"),
    [
        (128, 32),  # downsample 4 is a pyramid level
        (128, 64),  # downsample 2, likewise
        (128, 24),  # downsample 5.33: resampled from level 2
        (100, 16),  # 6.25, and patch edges off the pyramid's pixel grid
    ],
)
def test_tiles_are_read_patch_pixels_on_an_array_slide(patch_size: int, patch_px: int) -> None:
    with open_slide(textured_image(HEIGHT, WIDTH)) as slide:
        grid = slide.patch_grid(patch_size)
        tiles = grid_tiles(slide, grid, patch_px)
        expected = per_patch(slide, grid, patch_px)
    assert tiles.shape == (grid.rows * grid.cols, patch_px, patch_px, 3) == expected.shape
    assert tiles.dtype == np.uint8
    assert np.array_equal(tiles, expected)  # measured: identical, even where the downsample is fractional


def test_tiles_match_read_patch_on_an_openslide_pyramid(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "slide.tif", textured_image(HEIGHT, WIDTH, seed=3))
    with open_slide(path) as slide:
        assert slide.vendor is not None  # OpenSlide reads it, not the flat reader
        grid = slide.patch_grid(256)
        tiles = grid_tiles(slide, grid, 64)  # downsample 4: level 2 of the file
        expected = per_patch(slide, grid, 64)
    assert np.array_equal(tiles, expected)


@pytest.mark.real
def test_tiles_match_read_patch_on_the_real_svs(real_data: Path) -> None:
    """An Aperio level at 2.0005x: both reads resample, with origins a fraction of a pixel apart."""
    path = real_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    if not path.is_file():
        pytest.skip(f"{path.name} is absent")
    with open_slide(path) as slide:
        grid = slide.patch_grid(512)
        tiles = grid_tiles(slide, grid, 64)
        expected = per_patch(slide, grid, 64)
    diff = np.abs(tiles.astype(np.int16) - expected.astype(np.int16))
    assert diff.mean() < 1.5  # measured 0.88 (max 16, at sharp edges)


def test_partial_patches_are_padded_with_glass_white() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)  # black tissue everywhere on the slide
    with open_slide(image) as slide:
        grid = slide.patch_grid(128)  # 1300 = 10*128 + 20: last column holds 20 px of slide
        tiles = grid_tiles(slide, grid, 32).reshape(grid.rows, grid.cols, 32, 32, 3)
    last = tiles[0, -1]
    assert (last[:, :5] == 0).all()  # 20 level-0 px = 5 tile px of slide
    assert (last[:, 5:] == 255).all()
    bottom = tiles[-1, 0]  # 1000 = 7*128 + 104: 26 tile px of slide
    assert (bottom[:26] == 0).all() and (bottom[26:] == 255).all()


def test_bands_cover_the_grid_in_order_and_give_the_same_tiles() -> None:
    with open_slide(textured_image(HEIGHT, WIDTH, seed=1)) as slide:
        grid = slide.patch_grid(128)
        whole = grid_tiles(slide, grid, 32)
        small = 3 * grid.cols * 32 * 32  # three grid rows per band
        assert band_rows(grid, 32, small) == 3
        bands = list(iter_tile_bands(slide, grid, 32, max_pixels=small))
        some = read_tile_rows(slide, grid, 32, 2, 5)
    assert [first for first, _ in bands] == [0, 3, 6]
    assert np.array_equal(np.concatenate([t for _, t in bands]), whole)
    assert np.array_equal(some, whole[2 * grid.cols : 5 * grid.cols])


def test_cut_tiles_orders_row_major() -> None:
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    for r in range(2):
        for c in range(3):
            image[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 10 * r + c
    tiles = cut_tiles(image, 2, 2, 3)
    assert [int(t[0, 0, 0]) for t in tiles] == [0, 1, 2, 10, 11, 12]
    assert all((t == t[0, 0, 0]).all() for t in tiles)


def test_rows_outside_the_grid_are_refused() -> None:
    with open_slide(textured_image(200, 200)) as slide:
        grid = PatchGrid(slide_width=200, slide_height=200, patch_size=100)
        with pytest.raises(ValueError, match="outside the grid"):
            read_tile_rows(slide, grid, 16, 1, 3)
