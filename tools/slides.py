"""One Slide interface over every format: ``open_slide`` dispatches on what it is given.

    open_slide(source) ── numpy array ──────────────► ArraySlide      (virtual slide, 2x pyramid)
                       ├─ file OpenSlide recognises ─► OpenSlideSlide  (svs ndpi mrxs scn bif tiff dcm...)
                       └─ other image file ──────────► FlatImageSlide  (png jpg flat tiff, via tifffile/PIL)

Every failure is one of the tools.errors slide errors, naming the file and saying what to do;
no OpenSlide, PIL or tifffile traceback escapes. Label and macro images are never read (see
``slide_base``). Usage::

    with open_slide("case.svs", mpp=None) as slide:
        thumb = slide.thumbnail(64)              # thumb_xy * 64 = level0_xy
        grid = slide.patch_grid(512)
        patch = slide.read_patch(grid.ref(3, 4), out_size=224)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide

from tissue_oracle.tools.errors import (
    ConfigError,
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from tissue_oracle.tools.slide_base import MAX_PIXELS, MAX_SIDE, Slide, check_dimensions
from tissue_oracle.tools.slide_readers import ArraySlide, FlatImageSlide, OpenSlideSlide

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "ArraySlide",
    "FlatImageSlide",
    "OpenSlideSlide",
    "Slide",
    "open_slide",
    "require_mpp",
]

#: Slide formats that neither OpenSlide nor the flat readers handle, with what to do instead.
_FOREIGN_FORMATS = {
    ".vsi": "Olympus VSI",
    ".lif": "Leica LIF",
    ".isyntax": "Philips iSyntax",
    ".kfb": "KFBio KFB",
    ".sdpc": "SQRAY SDPC",
    ".mds": "3DHistech MDS",
    ".nd2": "Nikon ND2",
}


def open_slide(
    source: str | Path | np.ndarray, *, mpp: float | None = None, name: str | None = None
) -> Slide:
    """Open a slide file or wrap an RGB/grey array as a virtual slide.

    ``mpp`` (microns per level-0 pixel) overrides what the file records; without it, ``mpp``
    is the file's value or None. ``name`` is the slide id (default: the file stem, or "array").
    """
    _check_mpp(mpp)
    if isinstance(source, np.ndarray):
        return ArraySlide(source, path=None, name=name or "array", mpp=mpp)
    path = Path(source).expanduser()
    _check_file(path)
    slide_name = name or path.stem
    vendor = _detect_openslide(path)
    if vendor is None:
        _reject_foreign(path)
        return FlatImageSlide(path, name=slide_name, mpp=mpp)
    try:
        handle = openslide.OpenSlide(path)
    except openslide.OpenSlideError as exc:
        raise CorruptSlideError(
            path, f"OpenSlide recognises it as {vendor!r} but can't open it ({exc})",
            "The file is damaged or truncated (or, for MIRAX, its data folder is missing): copy it again",
        ) from exc  # fmt: skip
    try:
        check_dimensions(path, *(int(v) for v in handle.dimensions))
    except SlideError:
        handle.close()
        raise
    return OpenSlideSlide(handle, path=path, name=slide_name, mpp=mpp)


def require_mpp(slide: Slide) -> float:
    """The slide's mpp, or a SlideError with suggestions when it records none and none was given."""
    if slide.mpp is not None:
        return slide.mpp
    raise SlideError(
        slide.path,
        f"slide {slide.name!r} records no microns-per-pixel (mpp), and this step needs a physical scale",
        "Suggestions: pass --mpp with the scanner's value (e.g. --mpp 0.25 for 40x, --mpp 0.5 for 20x); "
        "or re-export the slide with its resolution metadata",
    )


def _check_mpp(mpp: float | None) -> None:
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SlideNotFoundError(path, "no such file", "Check the path (and that the disk is mounted)")
    if path.is_dir():
        raise UnsupportedSlideError(
            path,
            "is a folder, not a slide file",
            "Pass the slide file itself (for DICOM, one .dcm of the series)",
        )
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        raise SlideNotFoundError(path, f"can't be read ({exc.strerror})", "Check its permissions") from exc
    if size == 0:
        raise CorruptSlideError(
            path, "the file is empty (0 bytes)", "Copy it again: the transfer likely failed"
        )


def _detect_openslide(path: Path) -> str | None:
    """OpenSlide's vendor name for the file, or None when no OpenSlide driver claims it."""
    try:
        return openslide.OpenSlide.detect_format(path)
    except openslide.OpenSlideError as exc:
        raise CorruptSlideError(path, f"OpenSlide can't inspect it ({exc})", "Copy the file again") from exc


def _reject_foreign(path: Path) -> None:
    kind = _FOREIGN_FORMATS.get(path.suffix.lower())
    if kind is not None:
        raise UnsupportedSlideError(
            path,
            f"{kind} files are not supported (OpenSlide can't read them)",
            "Convert it to a pyramidal OME-TIFF, e.g. "
            "`bfconvert -pyramid-resolutions 6 -tilex 512 -tiley 512 IN OUT.ome.tif`, then open that",
        )
