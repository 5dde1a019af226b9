"""A patch-grid tissue mask as QuPath-importable GeoJSON, and back.

Polygons are traced exactly along patch edges: the union of the tissue cells' squares gives
one Polygon (with holes) per 4-connected component; cells touching only at a corner become
separate polygons. Coordinates are level-0 pixels, clipped to
the slide (the grid's last row and column may run past its edge).

Each polygon is one Feature with ``{"objectType": "annotation", "classification": {"name":
"Tissue", "color": [r, g, b]}}``, so QuPath (File > Import objects) makes one annotation per
tissue piece.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon, box, mapping, shape
from shapely.geometry.polygon import orient

from tissue_oracle.tools.schemas import PatchGrid

TISSUE_CLASS = "Tissue"
#: QuPath's colour for the Tissue class (RGB 0-255).
TISSUE_COLOUR = (0, 160, 60)


def mask_polygons(tissue: np.ndarray, grid: PatchGrid) -> list[Polygon]:
    """The tissue cells of ``tissue`` (bool, ``grid.shape``) as level-0 polygons, largest first."""
    _check_mask(tissue, grid)
    rows, cols = np.nonzero(tissue)
    if rows.size == 0:
        return []
    size = grid.patch_size
    cells = shapely.box(cols * size, rows * size, (cols + 1) * size, (rows + 1) * size)
    # cell squares share whole edges and never overlap: a coverage union is exact, and ~4x faster
    merged = shapely.coverage_union_all(cells).intersection(box(0, 0, grid.slide_width, grid.slide_height))
    polygons = [
        orient(p, sign=1.0) for p in shapely.get_parts(merged) if isinstance(p, Polygon) and not p.is_empty
    ]
    return sorted(polygons, key=lambda p: p.area, reverse=True)


def contour_polygons(
    mask: np.ndarray, downsample: float, slide_width: int, slide_height: int
) -> list[Polygon]:
    """Pixel-accurate level-0 polygons of a ``thumb_xy`` mask at ``downsample``, largest first.

    Pixel ``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``; each row's runs of
    tissue pixels become boxes, unioned (runs of adjacent rows share only parts of edges, so the
    union is a full one, not a coverage union). Clipped to the slide.
    """
    m = np.asarray(mask, dtype=bool)
    step = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    if rows.size == 0:
        return []
    runs = shapely.box(starts * downsample, rows * downsample, ends * downsample, (rows + 1) * downsample)
    merged = shapely.unary_union(runs).intersection(box(0, 0, slide_width, slide_height))
    polygons = [
        orient(p, sign=1.0) for p in shapely.get_parts(merged) if isinstance(p, Polygon) and not p.is_empty
    ]
    return sorted(polygons, key=lambda p: p.area, reverse=True)


def mask_to_geojson(tissue: np.ndarray, grid: PatchGrid) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (level-0 px) with one Tissue annotation per patch-grid polygon."""
    return polygons_to_geojson(mask_polygons(tissue, grid))


def polygons_to_geojson(polygons: list[Polygon]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (level-0 px) with one Tissue annotation per polygon."""
    features = [
        {
            "type": "Feature",
            "geometry": _int_coordinates(mapping(polygon)),
            "properties": {
                "objectType": "annotation",
                "classification": {"name": TISSUE_CLASS, "color": list(TISSUE_COLOUR)},
            },
        }
        for polygon in polygons
    ]
    return {"type": "FeatureCollection", "features": features}


def geojson_to_mask(source: str | Path | dict[str, Any] | list[Any], grid: PatchGrid) -> np.ndarray:
    """Rasterise GeoJSON (a file, or parsed) onto ``grid``: bool of ``grid.shape``.

    A cell is tissue when the centre of its in-slide part lies inside a feature. Features
    classified as anything but Tissue are ignored; unclassified ones count. Accepts a
    FeatureCollection, a list of Features (as QuPath exports), one Feature, or a geometry.
    """
    data = json.loads(Path(source).read_text()) if isinstance(source, str | Path) else source
    geometries = [shapely.make_valid(shape(g)) for g in _tissue_geometries(data)]
    mask = np.zeros(grid.shape, dtype=bool)
    if not geometries:
        return mask
    union = shapely.unary_union(geometries)
    size = grid.patch_size
    xs = (np.arange(grid.cols) * size + np.minimum((np.arange(grid.cols) + 1) * size, grid.slide_width)) / 2
    ys = (np.arange(grid.rows) * size + np.minimum((np.arange(grid.rows) + 1) * size, grid.slide_height)) / 2
    centre_x, centre_y = np.meshgrid(xs, ys)
    return np.asarray(shapely.contains_xy(union, centre_x, centre_y), dtype=bool)


def _tissue_geometries(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return [g for item in data for g in _tissue_geometries(item)]
    kind = data.get("type")
    if kind == "FeatureCollection":
        return _tissue_geometries(data.get("features", []))
    if kind == "Feature":
        classification = (data.get("properties") or {}).get("classification") or {}
        name = classification.get("name") if isinstance(classification, dict) else classification
        keep = data.get("geometry") is not None and name in (None, TISSUE_CLASS)
        return [data["geometry"]] if keep else []
    return [data] if kind in ("Polygon", "MultiPolygon") else []


def _int_coordinates(geometry: Any) -> dict[str, Any]:
    """Polygon coordinates as nested lists of ints (all vertices lie on whole pixels)."""
    rings = [[[round(x), round(y)] for x, y in ring] for ring in geometry["coordinates"]]
    return {"type": geometry["type"], "coordinates": rings}


def _check_mask(tissue: np.ndarray, grid: PatchGrid) -> None:
    if tissue.shape != grid.shape or tissue.dtype != np.bool_:
        raise ValueError(
            f"tissue must be bool of the grid's shape {grid.shape}, got {tissue.dtype} {tissue.shape}"
        )
