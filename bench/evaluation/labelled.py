"""Reference masks from any labelled folder, resampled onto a patch grid.

A reference mask covers the whole slide at any resolution: a PNG or ``.npy`` array (any size;
its scale is ``slide_width / mask_width``), or a GeoJSON of polygons in level-0 pixels (as
QuPath exports). Pairing rules, tried in order for a slide ``X.ext``:

1. ``X.mask.png``, ``X.mask.npy``, ``X.mask.geojson`` or ``X_mask.png`` beside it;
2. a file in a ``masks/`` folder (beside it, or beside its folder) whose stem, after dropping
   the prefix ``tissue-mask-`` and a ``.mask``/``_mask``/``-mask`` suffix, is ``X`` or a
   ``-``-separated prefix of ``X`` (histolab names ``tissue-mask-tcga-cr-7395.npy`` for
   ``tcga-cr-7395-01a-01-ts1.svs``).

Patch truth follows the synthetic truth's rule: a cell is tissue when the mask covers at least
``threshold`` of its area; the part of an edge cell beyond the slide counts as background.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tissue_oracle.tools.errors import ConfigError

IMAGE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".npy", ".geojson", ".json")
_MASK_TAGS = (".mask", "_mask", "-mask")
#: Longest side of a rasterised GeoJSON mask, in pixels (the rest is resolution we don't need).
GEOJSON_RASTER_SIDE = 4096


@dataclass(kw_only=True)
class LabelledPair:
    """A slide file and the reference masks found for it."""

    image: Path
    tissue: Path | None = None
    """The tissue mask, when one was found."""
    artefacts: dict[str, Path] = field(default_factory=dict)
    """Artefact masks by name (``pen`` for histolab's ``*-pen-marks-mask.npy``)."""


def load_mask(path: Path, *, slide_width: int | None = None, slide_height: int | None = None) -> np.ndarray:
    """A boolean mask from PNG (nonzero is True), ``.npy`` or GeoJSON (needs the slide size)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False)).astype(bool)
        if suffix in (".geojson", ".json"):
            if slide_width is None or slide_height is None:
                raise ConfigError(f"{str(path)!r}: a GeoJSON mask needs the slide's size to be rasterised")
            return rasterise_geojson(json.loads(path.read_text()), slide_width, slide_height)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
        return arr > 0
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{str(path)!r}: can't read this mask ({exc}); give a PNG, .npy or GeoJSON"
        ) from exc


def rasterise_geojson(doc: dict, slide_width: int, slide_height: int) -> np.ndarray:
    """Polygons (level-0 pixels, holes honoured) to a mask whose long side is <= GEOJSON_RASTER_SIDE."""
    from skimage.draw import polygon as draw_polygon

    scale = min(1.0, GEOJSON_RASTER_SIDE / max(slide_width, slide_height))
    shape = (max(1, round(slide_height * scale)), max(1, round(slide_width * scale)))
    mask = np.zeros(shape, dtype=bool)
    for rings, is_hole in _rings(doc):
        ring = np.asarray(rings, dtype=float) * scale
        rr, cc = draw_polygon(ring[:, 1], ring[:, 0], shape=shape)
        mask[rr, cc] = not is_hole
    return mask


def _rings(doc: dict) -> list[tuple[list, bool]]:
    """Exterior rings first then holes, per polygon, from a Feature(Collection) or geometry."""
    if doc.get("type") == "FeatureCollection":
        return [r for feat in doc.get("features", []) for r in _rings(feat)]
    if doc.get("type") == "Feature":
        return _rings(doc.get("geometry") or {})
    polys = {"Polygon": [doc.get("coordinates", [])], "MultiPolygon": doc.get("coordinates", [])}
    out: list[tuple[list, bool]] = []
    for poly in polys.get(str(doc.get("type")), []):
        out.extend((ring, i > 0) for i, ring in enumerate(poly))
    return out


def mask_fraction(mask: np.ndarray, slide_width: int, slide_height: int, patch_size: int) -> np.ndarray:
    """Fraction of each patch-grid cell the mask covers, float (rows, cols), level-0 cell frame.

    The mask spans the slide; each cell is sampled on a regular sub-grid of level-0 points
    (finer than both the patch and the mask pixel), so the result is the area fraction.
    """
    rows, cols = math.ceil(slide_height / patch_size), math.ceil(slide_width / patch_size)
    mh, mw = mask.shape[:2]
    pixel = min(slide_width / mw, slide_height / mh)
    k = int(min(32, max(2, math.ceil(2 * patch_size / pixel))))
    offsets = (np.arange(k) + 0.5) * patch_size / k
    ys = (np.arange(rows)[:, None] * patch_size + offsets[None, :]).ravel()
    xs = (np.arange(cols)[:, None] * patch_size + offsets[None, :]).ravel()
    my = np.floor(ys * mh / slide_height).astype(int)
    mx = np.floor(xs * mw / slide_width).astype(int)
    inside_y, inside_x = my < mh, mx < mw
    sampled = mask[np.clip(my, 0, mh - 1)][:, np.clip(mx, 0, mw - 1)].astype(float)
    sampled *= inside_y[:, None] & inside_x[None, :]
    return sampled.reshape(rows, k, cols, k).mean(axis=(1, 3))


def mask_to_patches(
    mask: np.ndarray, slide_width: int, slide_height: int, patch_size: int, threshold: float = 0.5
) -> np.ndarray:
    """Boolean patch grid: cells whose mask coverage is at least ``threshold``."""
    return mask_fraction(mask, slide_width, slide_height, patch_size) >= threshold


def _mask_key(stem: str) -> tuple[str, str]:
    """(slide key, role) from a mask file's stem; role is ``tissue`` or an artefact name."""
    role = "tissue"
    if stem.endswith("-pen-marks-mask"):
        return stem[: -len("-pen-marks-mask")], "pen"
    if stem.startswith("tissue-mask-"):
        stem = stem[len("tissue-mask-") :]
    for tag in _MASK_TAGS:
        if stem.endswith(tag):
            stem = stem[: -len(tag)]
            break
    return stem, role


def _matches(key: str, slide_stem: str) -> bool:
    return slide_stem == key or slide_stem.startswith(key + "-")


def find_pairs(folder: Path, *, recursive: bool = True, beside_role: str = "tissue") -> list[LabelledPair]:
    """Every slide under ``folder`` with the masks found for it (slides without masks are kept).

    ``beside_role`` says what a ``X_mask.png`` beside its slide marks: ``tissue`` for a user's
    labelled set, or an artefact name (HistoQC's human masks mark pen and coverslip edges).
    """
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder; give a folder of slides with masks")
    walker = folder.rglob("*") if recursive else folder.glob("*")
    files = sorted(p for p in walker if p.is_file())
    masks = [p for p in files if p.suffix.lower() in MASK_SUFFIXES and _is_mask_name(p)]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p not in masks]
    pairs = []
    for image in images:
        pair = LabelledPair(image=image)
        for mask in masks:
            if not _near(mask, image):
                continue
            key, role = _mask_key(mask.name[: -len(mask.suffix)])
            if not _matches(key, image.stem):
                continue
            if mask.parent == image.parent and role == "tissue":
                role = beside_role
            if role == "tissue":
                pair.tissue = pair.tissue or mask
            else:
                pair.artefacts.setdefault(role, mask)
        pairs.append(pair)
    return pairs


def _is_mask_name(path: Path) -> bool:
    stem = path.name[: -len(path.suffix)]
    return path.parent.name == "masks" or any(stem.endswith(tag) for tag in _MASK_TAGS)


def _near(mask: Path, image: Path) -> bool:
    """A mask pairs with slides in its own folder, or (from a masks/ folder) in sibling folders."""
    if mask.parent == image.parent:
        return True
    return mask.parent.name == "masks" and mask.parent.parent in (image.parent, image.parent.parent)
