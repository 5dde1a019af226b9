"""The abstract ``Slide``: metadata, and every derived read built on one primitive.

A reader implements ``read_region`` (level-0 origin, pixels of one pyramid level) and its
metadata; this base class builds ``thumbnail``, ``read_patch`` and ``read_box`` on top of it by
reading the best pyramid level in bounded chunks and area-averaging (PIL ``BOX``) each chunk to
the output scale. Level 0 is therefore never decoded whole when a coarser level exists, and peak
memory is bounded by ``_CHUNK_PIXELS`` whatever the slide size.

Frames: ``level0_xy`` are full-resolution pixels. An output taken at downsample ``ds`` maps its
pixel ``(i, j)`` to level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` from the output's level-0
origin, exactly; parts outside the slide are white.

Privacy: the interface has no way to reach associated images (label, macro, thumbnail pages).
They carry patient identifiers, so no reader opens them and no method returns them.
"""

from __future__ import annotations

import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from tissue_oracle.tools.errors import CorruptSlideError, SlideError, SlideTooLargeError
from tissue_oracle.tools.file_hash import content_hash
from tissue_oracle.tools.schemas import Box, PatchGrid, PatchRef

#: Most level pixels decoded at once by the chunked reads (about 48 MB as RGBA + RGB).
_CHUNK_PIXELS = 2048 * 2048
#: A pyramid level is used for a wanted downsample when it is at most this much coarser: SVS
#: levels are e.g. 2.0005x, and reading level 0 for a 2x request would cost 4x the pixels.
_LEVEL_TOLERANCE = 1.01
#: Whole-slide images ``thumbnail`` keeps per slide, and the largest it keeps (12 MB as RGB).
_THUMBS_KEPT = 2
_THUMB_KEEP_PIXELS = 2048 * 2048
#: No real slide comes near these (the largest scans are ~200k px a side): a header claiming
#: more is corrupt or hostile, and trusting it would make later allocations explode.
MAX_SIDE = 500_000
MAX_PIXELS = 2e11


def check_dimensions(path: Path | None, width: int, height: int) -> None:
    """Reject level-0 dimensions no real slide has, before anything is decoded."""
    if width < 1 or height < 1:
        raise CorruptSlideError(
            path, f"the image header says it is {width}x{height} pixels", "The file is damaged: copy it again"
        )
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise SlideTooLargeError(
            path,
            f"the image claims {width}x{height} pixels, beyond any real slide "
            f"(limits: {MAX_SIDE} px a side, {MAX_PIXELS:.0e} px in all)",
            "Check that this is a slide file and not damaged; re-export it from the scanner software",
        )


class Slide(ABC):
    """One whole-slide image, read-only. Use as a context manager, or call ``close()``.

    Every image returned is RGB ``uint8`` of shape ``(height, width, 3)``; transparency is
    composited onto white, and pixels outside the slide are white. Reads are thread-safe.
    """

    def __init__(self, *, path: Path | None, name: str, mpp_override: float | None) -> None:
        self._path = path
        self._name = name
        self._mpp_override = mpp_override
        self._closed = False
        self._readers = 0
        self._state = threading.Condition()
        self._thumbs: dict[float, np.ndarray] = {}
        """The last few whole-slide images by downsample (``thumbnail``), read-only."""

    # ------------------------------------------------------------------ metadata

    @property
    def path(self) -> Path | None:
        """The file read, or None for an in-memory slide."""
        return self._path

    @property
    def name(self) -> str:
        """The slide id: the file stem, or the name given to ``open_slide``."""
        return self._name

    @property
    @abstractmethod
    def vendor(self) -> str | None:
        """OpenSlide's vendor (``aperio``, ``hamamatsu``...), ``flat-<format>``, or None."""

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) in pixels of each pyramid level, finest (level 0) first."""

    @property
    @abstractmethod
    def downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel, for each level (1.0 first, increasing)."""

    @property
    @abstractmethod
    def recorded_mpp(self) -> float | None:
        """Microns per level-0 pixel as the file records it; None when it records none."""

    @property
    @abstractmethod
    def magnification(self) -> float | None:
        """Objective power the file records (e.g. 40.0), or None."""

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel: the ``mpp=`` override, else the file's, else None (never guessed)."""
        return self._mpp_override if self._mpp_override is not None else self.recorded_mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def levels(self) -> int:
        return len(self.level_dimensions)

    def best_level_for(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (1% tolerance)."""
        best = 0
        for level, ds in enumerate(self.downsamples):
            if ds <= downsample * _LEVEL_TOLERANCE:
                best = level
        return best

    def patch_grid(self, patch_size: int = 512) -> PatchGrid:
        """The regular level-0 grid of ``patch_size`` patches from (0, 0)."""
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        width, height = self.dimensions
        return PatchGrid(slide_width=width, slide_height=height, patch_size=patch_size)

    def file_hash(self) -> str | None:
        """The file's content hash (``tools.file_hash.content_hash``), or None for an in-memory slide."""
        if self._path is None:
            return None
        return content_hash(self._path)

    # ------------------------------------------------------------------ reading

    @abstractmethod
    def _read_region(self, level0_x: int, level0_y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of ``level``, origin in level-0 pixels; caller holds a read slot."""

    def read_region(self, level0_x: int, level0_y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of pyramid ``level``: ``size`` = (width, height) in that level's pixels.

        The origin ``(level0_x, level0_y)`` is in level-0 pixels, as in OpenSlide. Areas
        outside the slide come back white. A tile that won't decode raises CorruptSlideError.
        """
        width, height = int(size[0]), int(size[1])
        if not 0 <= level < self.levels:
            raise ValueError(f"level {level} out of range: {self.name!r} has {self.levels} levels")
        if width < 1 or height < 1:
            raise ValueError(f"region size must be positive, got {width}x{height}")
        if width * height > 16 * _CHUNK_PIXELS:
            raise ValueError(f"region {width}x{height} too large to read at once; read it in tiles")
        with self._reading():
            return self._read_region(int(level0_x), int(level0_y), level, width, height)

    def thumbnail(self, downsample: float = 64) -> np.ndarray:
        """The whole slide at ``downsample`` (level-0 px per thumbnail px).

        Shape ``(ceil(height/ds), ceil(width/ds), 3)``; thumbnail pixel ``(i, j)`` covers
        level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` (thumb_xy * ds = level0_xy).

        The last ``_THUMBS_KEPT`` downsamples read are kept, so stages asking for the same image
        (a student's tiles and the overlay's picture of an 8k slide are both 8x) read it once;
        each call returns its own copy.
        """
        key = float(downsample)
        with self._state:
            kept = self._thumbs.get(key)
        if kept is not None:
            return kept.copy()
        width, height = self.dimensions
        out_w, out_h = math.ceil(width / downsample), math.ceil(height / downsample)
        image = self._render(0, 0, out_w, out_h, downsample)
        if out_w * out_h <= _THUMB_KEEP_PIXELS:
            with self._state:
                self._thumbs[key] = image.copy()
                while len(self._thumbs) > _THUMBS_KEPT:
                    del self._thumbs[next(iter(self._thumbs))]
        return image

    def read_patch(self, ref: PatchRef, out_size: int | None = None) -> np.ndarray:
        """The level-0 patch ``ref`` as ``out_size`` x ``out_size`` (default ``ref.size``).

        A smaller ``out_size`` is read from the best pyramid level and area-averaged.
        """
        size = ref.size if out_size is None else out_size
        if size < 1:
            raise ValueError(f"out_size must be positive, got {size}")
        return self._render(ref.x, ref.y, size, size, ref.size / size)

    def read_box(self, box: Box, downsample: float) -> np.ndarray:
        """The level-0 ``box`` at ``downsample``: shape ``(ceil(h/ds), ceil(w/ds), 3)``."""
        out_w, out_h = math.ceil(box.width / downsample), math.ceil(box.height / downsample)
        return self._render(box.x0, box.y0, out_w, out_h, downsample)

    def _render(self, level0_x: int, level0_y: int, out_w: int, out_h: int, downsample: float) -> np.ndarray:
        """An ``out_h`` x ``out_w`` image at ``downsample`` from level-0 origin, read in chunks."""
        if not (math.isfinite(downsample) and downsample > 0):
            raise ValueError(f"downsample must be a positive number, got {downsample}")
        level = self.best_level_for(downsample)
        level_ds = self.downsamples[level]
        scale = downsample / level_ds  # level pixels per output pixel
        step = max(1, min(4096, int(math.sqrt(_CHUNK_PIXELS) / max(scale, 1e-9))))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        with self._reading():
            for r0 in range(0, out_h, step):
                for c0 in range(0, out_w, step):
                    r1, c1 = min(out_h, r0 + step), min(out_w, c0 + step)
                    out[r0:r1, c0:c1] = self._render_chunk(
                        level, level0_x / level_ds + c0 * scale, level0_y / level_ds + r0 * scale,
                        (c1 - c0, r1 - r0), scale,
                    )  # fmt: skip
        return out

    def _render_chunk(
        self, level: int, lx: float, ly: float, out_size: tuple[int, int], scale: float
    ) -> np.ndarray:
        """Output pixels ``out_size`` (w, h) whose level-frame origin is ``(lx, ly)``."""
        out_w, out_h = out_size
        ix0, iy0 = math.floor(lx), math.floor(ly)
        ix1, iy1 = math.ceil(lx + out_w * scale), math.ceil(ly + out_h * scale)
        level_ds = self.downsamples[level]
        pixels = self._read_region(round(ix0 * level_ds), round(iy0 * level_ds), level, ix1 - ix0, iy1 - iy0)
        if (ix1 - ix0, iy1 - iy0) == (out_w, out_h) and lx == ix0 and ly == iy0:
            return pixels
        box = (lx - ix0, ly - iy0, lx - ix0 + out_w * scale, ly - iy0 + out_h * scale)
        image = Image.fromarray(pixels).resize((out_w, out_h), Image.Resampling.BOX, box=box)
        return np.asarray(image)

    # ------------------------------------------------------------------ lifecycle

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A read slot: many threads read at once, and ``close()`` waits for them to finish."""
        with self._state:
            if self._closed:
                raise SlideError(self._path, "the slide is closed", "Open it again with open_slide()")
            self._readers += 1
        try:
            yield
        finally:
            with self._state:
                self._readers -= 1
                self._state.notify_all()

    @abstractmethod
    def _release(self) -> None:
        """Free the reader's handles; called once, with no read in flight."""

    def close(self) -> None:
        """Release the file; later reads raise SlideError. Safe to call twice."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.wait_for(lambda: self._readers == 0)
            self._thumbs.clear()
            self._release()

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = self.dimensions
        where = os.fspath(self._path) if self._path is not None else "memory"
        return f"<{type(self).__name__} {self._name!r} {width}x{height} levels={self.levels} at {where}>"
