"""Write a pyramidal, tiled, JPEG-compressed TIFF that OpenSlide reads as an Aperio slide.

OpenSlide's aperio backend claims a TIFF whose first image is tiled and whose ImageDescription
starts with ``Aperio``; every tiled page then becomes a level, in file order (largest first).
``|MPP = x`` and ``|AppMag = y`` in that first description become ``openslide.mpp-x/-y`` and
``openslide.objective-power``. We write no thumbnail, label or macro pages: associated images are
never read by tissue-oracle (they carry patient identifiers on real slides).

Every level is rendered natively by ``tile_source`` (never by downsampling level 0), and tiles are
streamed to tifffile one tile row at a time, so memory stays bounded by a row of tiles.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from tissue_oracle.tools.errors import ConfigError

#: tile_source(level0_x, level0_y, level0_w, level0_h, downsample) -> uint8 RGB array of shape
#: (ceil(level0_h / downsample), ceil(level0_w / downsample), 3); pixel (i, j) covers level-0
#: [level0_x + j*ds, level0_x + (j+1)*ds) x [level0_y + i*ds, level0_y + (i+1)*ds).
TileSource = Callable[[int, int, int, int, int], np.ndarray]

#: progress(tiles_done, tiles_total), counted over all levels.
Progress = Callable[[int, int], None]

# Widest block (in level pixels) asked of tile_source at once: wide enough for numpy to be
# efficient, narrow enough that a renderer's float temporaries stay small on a 100k-px slide.
_MAX_BLOCK_WIDTH = 2048


def aperio_description(
    width: int, height: int, tile_size: int, jpeg_quality: int, mpp: float | None, magnification: float | None
) -> str:
    """The first page's ImageDescription, in the layout Aperio ImageScope writes."""
    fields = [
        f"Aperio Image Library v12.0.0 tissue-oracle synthetic\r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile_size}x{tile_size}) JPEG/RGB Q={jpeg_quality}"
    ]
    if magnification is not None:
        fields.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    fields.append("Filename = synthetic")
    return "|".join(fields)


def level_shapes(width: int, height: int, downsamples: Sequence[int]) -> list[tuple[int, int]]:
    """(width, height) in level pixels for each downsample: ceil(level0 / downsample)."""
    return [(math.ceil(width / ds), math.ceil(height / ds)) for ds in downsamples]


def write_pyramidal_tiff(
    path: str | Path,
    width: int,
    height: int,
    tile_source: TileSource,
    *,
    tile_size: int = 256,
    downsamples: Sequence[int] = (1, 4, 16, 64),
    mpp: float | None = 0.25,
    magnification: float | None = 40.0,
    jpeg_quality: int = 85,
    progress: Progress | None = None,
    workers: int = 2,
) -> None:
    """Write ``width`` x ``height`` (level-0 px) as a tiled JPEG pyramid at ``path``.

    ``downsamples`` must start at 1 and increase; each must be an integer. ``mpp`` (microns per
    level-0 pixel) and ``magnification`` go into the Aperio description; ``None`` leaves the key
    out, so OpenSlide reports no ``openslide.mpp-x`` / ``objective-power``. ``workers`` threads
    render blocks ahead of the encoder; ``tile_source`` must then be thread-safe (pure).
    """
    _check_args(width, height, downsamples, tile_size)
    shapes = level_shapes(width, height, downsamples)
    total = sum(math.ceil(w / tile_size) * math.ceil(h / tile_size) for w, h in shapes)
    counter = [0, total]
    description = aperio_description(width, height, tile_size, jpeg_quality, mpp, magnification)
    bigtiff = width * height > 2**28  # JPEG at q85 on big slides can pass 4 GiB; OpenSlide reads both
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for index, (ds, (lw, lh)) in enumerate(zip(downsamples, shapes, strict=True)):
            tiles = _level_tiles(width, height, int(ds), tile_size, tile_source, progress, counter, workers)
            tif.write(
                tiles,
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": jpeg_quality},
                description=description if index == 0 else f"Aperio Image Library level ds={ds}",
                subfiletype=0 if index == 0 else 1,
                metadata=None,
                software=False,
            )


def _check_args(width: int, height: int, downsamples: Sequence[int], tile_size: int) -> None:
    if width < 1 or height < 1:
        raise ConfigError(f"slide size must be positive, got {width}x{height}")
    if tile_size % 16 or tile_size < 16:
        raise ConfigError(f"tile_size must be a positive multiple of 16 (TIFF tiles), got {tile_size}")
    ds = list(downsamples)
    if not ds or ds[0] != 1 or any(b <= a for a, b in itertools.pairwise(ds)):
        raise ConfigError(f"downsamples must start at 1 and increase, got {ds!r}")
    if any(int(d) != d for d in ds):
        raise ConfigError(f"downsamples must be integers, got {ds!r}")


def _level_tiles(
    width: int,
    height: int,
    ds: int,
    tile_size: int,
    tile_source: TileSource,
    progress: Progress | None,
    counter: list[int],
    workers: int,
) -> Iterator[np.ndarray]:
    """Yield one level's tiles in row-major order, rendering blocks of tiles on ``workers`` threads.

    At most ``workers + 1`` blocks are in flight, so memory stays bounded by a few tile rows.
    """
    lw, lh = math.ceil(width / ds), math.ceil(height / ds)
    cols = math.ceil(lw / tile_size)
    per_block = max(1, _MAX_BLOCK_WIDTH // tile_size)
    jobs = iter(
        (col0 * tile_size * ds, row * tile_size * ds, min(per_block, cols - col0))
        for row in range(math.ceil(lh / tile_size))
        for col0 in range(0, cols, per_block)
    )

    def render(job: tuple[int, int, int]) -> np.ndarray:
        x0, y0, ncols = job
        w0, h0 = min(ncols * tile_size * ds, width - x0), min(tile_size * ds, height - y0)
        return _padded(tile_source(x0, y0, w0, h0, ds), math.ceil(h0 / ds), math.ceil(w0 / ds), tile_size)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[tuple[tuple[int, int, int], Future[np.ndarray]]] = deque(
            (job, pool.submit(render, job)) for job in itertools.islice(jobs, max(1, workers) + 1)
        )
        while pending:
            job, future = pending.popleft()
            upcoming = next(jobs, None)
            if upcoming is not None:
                pending.append((upcoming, pool.submit(render, upcoming)))
            block = future.result()
            counter[0] += job[2]  # counted before yielding: tifffile stops pulling after the last tile
            if progress is not None:
                progress(counter[0], counter[1])
            for k in range(job[2]):
                yield block[:, k * tile_size : (k + 1) * tile_size]


def _padded(block: np.ndarray, want_h: int, want_w: int, tile_size: int) -> np.ndarray:
    """Check the renderer's block, then pad it with white to whole tiles."""
    if block.shape != (want_h, want_w, 3) or block.dtype != np.uint8:
        raise ConfigError(
            f"tile_source returned {block.dtype} {block.shape}, expected uint8 {(want_h, want_w, 3)}"
        )
    pad_h = tile_size - want_h
    pad_w = -want_w % tile_size
    if pad_h == 0 and pad_w == 0:
        return block
    return np.pad(block, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
