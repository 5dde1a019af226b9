"""The three Slide readers: OpenSlide files, flat image files, and in-memory arrays.

Each translates its library's errors into the tools.errors family at the boundary. None of them
opens associated images (label, macro, thumbnail): see ``slide_base``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image, UnidentifiedImageError

from tissue_oracle.tools.errors import (
    CorruptSlideError,
    SlideError,
    SlideTooLargeError,
    UnsupportedSlideError,
)
from tissue_oracle.tools.slide_base import Slide, check_dimensions
from tissue_oracle.tools.slide_pixels import build_pyramid, plausible_mpp, to_rgb_uint8

# tifffile logs a damaged file's fault ("invalid offset to first page") before it raises. With no
# handler anywhere, Python's last-resort handler printed that line to the console beside our own
# error, which names the file and says what to do. A NullHandler keeps it off the console; an
# application that configures logging still receives it.
logging.getLogger("tifffile").addHandler(logging.NullHandler())

#: Flat images are decoded whole into memory; past this they must be converted to a pyramid.
FLAT_MAX_PIXELS = 1 << 28
_CONVERT_ADVICE = (
    "Convert it to a pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`"
)
_RECOPY_ADVICE = "The file is damaged or truncated: copy it again from the scanner or archive"
_WHITE = (255, 255, 255)


class OpenSlideSlide(Slide):
    """A slide OpenSlide reads (svs, ndpi, mrxs, scn, bif, generic tiled tiff, dicom...).

    One handle serves every thread: OpenSlide's C library is thread-safe per handle and runs
    concurrent reads in parallel (ctypes releases the GIL); ``close()`` waits for reads in flight.
    """

    def __init__(self, handle: openslide.OpenSlide, *, path: Path, name: str, mpp: float | None) -> None:
        super().__init__(path=path, name=name, mpp_override=mpp)
        self._handle = handle
        props = handle.properties
        self._vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self._level_dimensions = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        self._downsamples = tuple(float(d) for d in handle.level_downsamples)
        self._mpp = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
        self._magnification = _positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    @property
    def vendor(self) -> str | None:
        return self._vendor

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def downsamples(self) -> tuple[float, ...]:
        return self._downsamples

    @property
    def recorded_mpp(self) -> float | None:
        return self._mpp

    @property
    def magnification(self) -> float | None:
        return self._magnification

    def _read_region(self, level0_x: int, level0_y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            rgba = self._handle.read_region((level0_x, level0_y), level, (width, height))
        except openslide.OpenSlideError as exc:
            raise CorruptSlideError(
                self.path,
                f"the region at level-0 ({level0_x}, {level0_y}), level {level}, {width}x{height} px "
                f"won't decode ({exc})",
                _RECOPY_ADVICE,
            ) from exc
        rgb = Image.new("RGB", rgba.size, _WHITE)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(rgb)

    def _release(self) -> None:
        self._handle.close()


class ArraySlide(Slide):
    """An in-memory image as a virtual slide, with a 2x pyramid built on open.

    Level ``k`` has downsample exactly ``2**k`` and size ``ceil(level0 / 2**k)``. The pixel
    arrays are read-only after construction, so reads need no lock.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        path: Path | None,
        name: str,
        mpp: float | None,
        recorded_mpp: float | None = None,
    ) -> None:
        super().__init__(path=path, name=name, mpp_override=mpp)
        if image.ndim not in (2, 3):
            raise UnsupportedSlideError(
                path,
                f"pixel array of shape {image.shape} is not an image",
                "Give an (H, W) or (H, W, C) array",
            )
        check_dimensions(path, int(image.shape[1]), int(image.shape[0]))
        rgb = to_rgb_uint8(image, path).view()
        rgb.flags.writeable = False
        self._pyramid = build_pyramid(rgb)
        for level in self._pyramid:
            level.flags.writeable = False
        self._recorded_mpp = recorded_mpp
        self._level_dimensions = tuple((int(a.shape[1]), int(a.shape[0])) for a in self._pyramid)

    @property
    def vendor(self) -> str | None:
        return None

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def downsamples(self) -> tuple[float, ...]:
        return tuple(float(2**k) for k in range(len(self._level_dimensions)))

    @property
    def recorded_mpp(self) -> float | None:
        return self._recorded_mpp

    @property
    def magnification(self) -> float | None:
        return None

    def _read_region(self, level0_x: int, level0_y: int, level: int, width: int, height: int) -> np.ndarray:
        pixels = self._pyramid[level]
        factor = 2**level
        x0, y0 = level0_x // factor, level0_y // factor
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + width, pixels.shape[1]), min(y0 + height, pixels.shape[0])
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
        return out

    def _release(self) -> None:
        self._pyramid = [level[:0, :0] for level in self._pyramid]


class FlatImageSlide(ArraySlide):
    """A single-resolution image file (png, jpeg, flat tiff...) decoded once into memory."""

    def __init__(self, path: Path, *, name: str, mpp: float | None) -> None:
        image, fmt, recorded = _decode_flat(path)
        super().__init__(image, path=path, name=name, mpp=mpp, recorded_mpp=recorded)
        self._vendor = f"flat-{fmt}"

    @property
    def vendor(self) -> str | None:
        return self._vendor


def _positive_float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _check_flat_size(path: Path, width: int, height: int) -> None:
    check_dimensions(path, width, height)
    if width * height > FLAT_MAX_PIXELS:
        raise SlideTooLargeError(
            path,
            f"a flat (single-resolution) image of {width}x{height} px is too large to decode whole",
            _CONVERT_ADVICE,
        )


def _decode_flat(path: Path) -> tuple[np.ndarray, str, float | None]:
    """(pixels, format name, recorded mpp) of a flat image file; TIFF via tifffile, else PIL."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _decode_tiff(path), "tiff", _tiff_mpp(path)
    return _decode_pil(path)


def _decode_tiff(path: Path) -> np.ndarray:
    """The first page only: later pages of a flat TIFF may be labels or macros."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            axes, shape = page.axes, page.shape
            _check_flat_size(path, int(shape[axes.index("X")]), int(shape[axes.index("Y")]))
            photometric = page.photometric
            pixels = page.asarray()
            colormap = page.colormap if photometric == tifffile.PHOTOMETRIC.PALETTE else None
    except SlideError:
        raise
    except Exception as exc:  # tifffile and each imagecodecs codec raise their own types
        raise CorruptSlideError(
            path, f"looks like a TIFF but can't be decoded ({exc})", _RECOPY_ADVICE
        ) from exc
    if axes.startswith("S"):
        pixels = np.moveaxis(pixels, 0, -1)
    if colormap is not None:
        pixels = np.moveaxis(colormap, 0, -1)[pixels]
    elif photometric == tifffile.PHOTOMETRIC.MINISWHITE and pixels.dtype.kind == "u":
        pixels = np.iinfo(pixels.dtype).max - pixels
    elif photometric not in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.MINISBLACK):
        raise UnsupportedSlideError(
            path,
            f"TIFF colour model {tifffile.PHOTOMETRIC(photometric).name} is not supported",
            _CONVERT_ADVICE,
        )
    return pixels


def _tiff_mpp(path: Path) -> float | None:
    """Microns per pixel from XResolution + ResolutionUnit (inch or cm), if plausible."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        resolution, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if resolution is None or unit is None or unit.value not in (2, 3):
            return None
        numerator, denominator = resolution.value
    if numerator <= 0 or denominator <= 0:
        return None
    microns_per_unit = 25_400.0 if unit.value == 2 else 10_000.0
    return plausible_mpp(microns_per_unit * denominator / numerator)


def _decode_pil(path: Path) -> tuple[np.ndarray, str, float | None]:
    try:
        with Image.open(path) as image:
            _check_flat_size(path, image.width, image.height)
            image.load()
            fmt = (image.format or "image").lower()
            dpi = image.info.get("dpi")
            pixels = _pil_pixels(image, path)
    except UnidentifiedImageError as exc:
        raise UnsupportedSlideError(
            path,
            "not an image: neither OpenSlide nor the flat-image readers recognise it",
            "Pass a slide (svs, ndpi, mrxs, scn, bif, tiff, dcm) or an image (png, jpg, tif)",
        ) from exc
    except Image.DecompressionBombError as exc:
        raise SlideTooLargeError(
            path, f"the image is too large to decode whole ({exc})", _CONVERT_ADVICE
        ) from exc
    except SlideError:
        raise
    except Exception as exc:  # PIL's plugins raise OSError, SyntaxError, ValueError, struct.error...
        raise CorruptSlideError(path, f"the image won't decode ({exc})", _RECOPY_ADVICE) from exc
    mpp = plausible_mpp(25_400.0 / float(dpi[0])) if dpi and float(dpi[0]) > 0 else None
    return pixels, fmt, mpp


def _pil_pixels(image: Image.Image, path: Path) -> np.ndarray:
    """PIL modes to arrays that ``to_rgb_uint8`` understands (16-bit kept as uint16)."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("I", "F"):
        raise UnsupportedSlideError(
            path, f"32-bit pixels (PIL mode {image.mode!r}) have no agreed scale", "Save it as 8- or 16-bit"
        )
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
