"""A student's input pixels for every patch of a slide's grid, read as whole images and cut into tiles.

A student sees each grid patch at ``patch_px`` pixels a side, i.e. at downsample
``patch_size / patch_px`` (8x for 512 px patches at 64 px). Reading that one low-resolution image
of the slide (from the best pyramid level, as ``Slide.thumbnail`` and the classical map do) and
cutting it along the grid gives the same pixels as ``read_patch(ref, out_size=patch_px)`` per
patch, at the cost of one read instead of one per patch. Training (``tools.distil_data``) and
inference (the dense student path) both take their pixels from here, so the student is never
served pixels made differently from the ones it learned on.

Frames: tile ``(r, c)`` covers level-0 ``[c*ps, (c+1)*ps) x [r*ps, (r+1)*ps)`` like
``PatchGrid.ref(r, c)``; the last row and column of the grid run past the slide's edge, and
what lies outside the slide is glass-white (255), exactly as ``read_patch`` pads a partial patch.

The image is read in bands of grid rows (``iter_tile_bands``) so that peak memory stays bounded
on a 100k-pixel slide; ``grid_tiles`` concatenates the bands (or reads only some rows).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tissue_oracle.tools.schemas import Box, PatchGrid
from tissue_oracle.tools.slide_base import Slide

#: Most tile pixels (per channel) read in one band: 16 Mpx, about 48 MB of RGB.
BAND_PIXELS = 4096 * 4096


def tile_downsample(grid: PatchGrid, patch_px: int) -> float:
    """Level-0 pixels per tile pixel: ``patch_size / patch_px``."""
    if patch_px < 1:
        raise ValueError(f"patch_px must be positive, got {patch_px}")
    return grid.patch_size / patch_px


def cut_tiles(image: np.ndarray, patch_px: int, rows: int, cols: int) -> np.ndarray:
    """``(rows*cols, px, px, 3)`` tiles, row-major, from an image at the tile scale.

    ``image`` may be smaller than ``rows*px x cols*px`` (the slide ends inside the last row or
    column): the rest is glass-white. Larger is cropped.
    """
    px = patch_px
    height, width = rows * px, cols * px
    canvas = image[:height, :width]
    if canvas.shape[:2] != (height, width):
        full = np.full((height, width, 3), 255, dtype=np.uint8)
        full[: canvas.shape[0], : canvas.shape[1]] = canvas
        canvas = full
    tiles = canvas.reshape(rows, px, cols, px, 3).swapaxes(1, 2)
    return np.ascontiguousarray(tiles).reshape(rows * cols, px, px, 3)


def band_rows(grid: PatchGrid, patch_px: int, max_pixels: int = BAND_PIXELS) -> int:
    """Grid rows per band so that one band's image holds at most ``max_pixels`` (at least one row)."""
    per_row = grid.cols * patch_px * patch_px
    return max(1, min(grid.rows, max_pixels // max(per_row, 1)))


def band_ranges(grid: PatchGrid, patch_px: int, max_pixels: int = BAND_PIXELS) -> list[tuple[int, int]]:
    """``[first, stop)`` grid rows of each band, top to bottom (``band_rows`` rows each)."""
    step = band_rows(grid, patch_px, max_pixels)
    return [(first, min(grid.rows, first + step)) for first in range(0, grid.rows, step)]


def read_tile_rows(slide: Slide, grid: PatchGrid, patch_px: int, first: int, stop: int) -> np.ndarray:
    """Tiles of grid rows ``[first, stop)``: ``((stop-first)*cols, px, px, 3)`` uint8, row-major."""
    if not 0 <= first < stop <= grid.rows:
        raise ValueError(f"grid rows [{first}, {stop}) are outside the grid's {grid.rows} rows")
    size, downsample = grid.patch_size, tile_downsample(grid, patch_px)
    if (first, stop) == (0, grid.rows):  # the whole slide: the same image as thumbnail(downsample)
        image = slide.thumbnail(downsample)
    else:
        image = slide.read_box(Box(x0=0, y0=first * size, x1=grid.cols * size, y1=stop * size), downsample)
    return cut_tiles(image, patch_px, stop - first, grid.cols)


def iter_tile_bands(
    slide: Slide, grid: PatchGrid, patch_px: int, max_pixels: int = BAND_PIXELS
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, tiles)`` per band of whole grid rows, top to bottom (see ``band_rows``)."""
    for first, stop in band_ranges(grid, patch_px, max_pixels):
        yield first, read_tile_rows(slide, grid, patch_px, first, stop)


def grid_tiles(slide: Slide, grid: PatchGrid, patch_px: int) -> np.ndarray:
    """Every patch of ``grid`` at ``patch_px``: ``(rows*cols, px, px, 3)`` uint8, row-major.

    Tile ``i`` is patch ``divmod(i, grid.cols)``; it matches ``slide.read_patch(grid.ref(r, c),
    out_size=patch_px)``: identical on in-memory slides and power-of-two pyramids (fractional
    downsamples included), and within resampling rounding where a level is not an exact power of
    two (mean absolute difference 0.88 of 255 on the real Aperio SVS, whose level 1 is 2.0005x).
    """
    bands = [tiles for _, tiles in iter_tile_bands(slide, grid, patch_px)]
    return bands[0] if len(bands) == 1 else np.concatenate(bands)
