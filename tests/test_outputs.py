"""Output writers: GeoJSON round trip, CLAM-style HDF5, Parquet, images, atomic writes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tissue_oracle.agent.geojson import geojson_to_mask, mask_polygons, mask_to_geojson
from tissue_oracle.agent.outputs import (
    FOCUS_COLOURS,
    OVERLAY_FILL,
    SlideOutputs,
    mask_at_thumbnail,
    overlay_image,
    write_patches_h5,
    write_patches_parquet,
    write_slide_outputs,
    write_summary_json,
)
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS
from tissue_oracle.tools.schemas import PatchGrid, PatchLabel
from tissue_oracle.tools.slides import open_slide

# 3 px short of 9 columns and 60 px into a 7th row: the last cells are clipped by the slide edge
GRID = PatchGrid(slide_width=512 * 8 + 3, slide_height=512 * 6 + 60, patch_size=512)


def ring_and_blobs() -> np.ndarray:
    """A ring with a hole, a separate blob touching the far edges, and a corner-touching pair."""
    mask = np.zeros(GRID.shape, dtype=bool)
    mask[0:4, 0:4] = True
    mask[1:3, 1:3] = False  # hole
    mask[5:7, 7:9] = True  # in the clipped last row and column
    mask[4, 5] = mask[5, 4] = True  # touch only at a corner: two pieces under 4-connectivity
    return mask


def test_polygons_have_holes_and_follow_patch_edges() -> None:
    polygons = mask_polygons(ring_and_blobs(), GRID)
    assert len(polygons) == 4
    ring = polygons[0]
    assert len(ring.interiors) == 1
    assert ring.area == (16 - 4) * 512**2
    assert ring.interiors[0].bounds == (512, 512, 1536, 1536)
    assert polygons[1].bounds == (512 * 7, 512 * 5, GRID.slide_width, GRID.slide_height)  # clipped


def test_geojson_is_qupath_shaped() -> None:
    collection = mask_to_geojson(ring_and_blobs(), GRID)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 4
    for feature in collection["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"]["name"] == "Tissue"
        assert len(feature["properties"]["classification"]["color"]) == 3
        for ring in feature["geometry"]["coordinates"]:
            assert ring[0] == ring[-1]
            for x, y in ring:
                assert isinstance(x, int) and 0 <= x <= GRID.slide_width and 0 <= y <= GRID.slide_height
    assert mask_to_geojson(np.zeros(GRID.shape, bool), GRID) == {"type": "FeatureCollection", "features": []}


@pytest.mark.parametrize("seed", range(6))
def test_geojson_round_trip_gives_the_same_patches(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(GRID.shape) < [0.2, 0.5, 0.8, 0.5, 0.3, 0.95][seed]
    if seed == 5:
        mask[2, 3] = mask[4, 6] = False  # single-cell holes
    path = tmp_path / "tissue.geojson"
    path.write_text(json.dumps(mask_to_geojson(mask, GRID)))
    assert np.array_equal(geojson_to_mask(path, GRID), mask)


def test_round_trip_of_shapes_with_holes_and_components(tmp_path: Path) -> None:
    mask = ring_and_blobs()
    assert np.array_equal(geojson_to_mask(mask_to_geojson(mask, GRID), GRID), mask)


def test_geojson_to_mask_reads_qupath_lists_and_skips_other_classes() -> None:
    features = mask_to_geojson(ring_and_blobs(), GRID)["features"]
    other = json.loads(json.dumps(features[0]))
    other["properties"]["classification"]["name"] = "Pen"
    unclassified = {"type": "Feature", "geometry": features[1]["geometry"], "properties": {}}
    mask = geojson_to_mask([other, unclassified], GRID)
    assert mask.sum() == 4 and mask[5:7, 7:9].all()


def test_patches_h5_reads_the_clam_way(tmp_path: Path) -> None:
    mask = ring_and_blobs()
    path = tmp_path / "patches.h5"
    write_patches_h5(
        path, mask, GRID, level_dim=(GRID.slide_width, GRID.slide_height), name="s1", magnification=40
    )
    with h5py.File(path, "r") as f:  # as CLAM's dataset_h5 and create_heatmaps read it
        coords = f["coords"][:]
        patch_level = f["coords"].attrs["patch_level"]
        patch_size = f["coords"].attrs["patch_size"]
        attrs = dict(f["coords"].attrs)
    assert coords.dtype == np.int64 and coords.shape == (mask.sum(), 2)
    expected = {(c * 512, r * 512) for r, c in zip(*np.nonzero(mask), strict=True)}
    assert {tuple(xy) for xy in coords.tolist()} == expected
    assert (patch_level, patch_size) == (0, 512)
    assert list(attrs["level_dim"]) == [GRID.slide_width, GRID.slide_height]
    assert list(attrs["downsample"]) == [1.0, 1.0]
    assert attrs["name"] == "s1" and attrs["patch_size_level0"] == 512 and attrs["level0_magnification"] == 40
    write_patches_h5(path, np.zeros(GRID.shape, bool), GRID, level_dim=(10, 10), name="empty")
    with h5py.File(path, "r") as f:
        assert f["coords"].shape == (0, 2) and "level0_magnification" not in f["coords"].attrs


def labels_for(mask: np.ndarray) -> list[PatchLabel]:
    focus_cycle = ["sharp", "mild_blur", "out_of_focus", None]
    out = []
    for index, (row, col) in enumerate(GRID.cells()):
        tissue = bool(mask[row, col])
        out.append(
            PatchLabel(
                ref=GRID.ref(row, col),
                label="tissue" if tissue else "background",
                focus=focus_cycle[index % 4] if tissue else None,  # type: ignore[arg-type]
                confidence=0.5 + 0.5 * tissue,
                source="zero_shot" if tissue else "coarse",
            )
        )
    return out


def test_patches_parquet_columns(tmp_path: Path) -> None:
    labels = labels_for(ring_and_blobs())
    path = tmp_path / "patches.parquet"
    write_patches_parquet(path, labels)
    table = pq.read_table(path)
    assert table.column_names == ["x", "y", "size", "label", "focus", "confidence", "stage"]
    assert table.num_rows == len(labels)
    rows = table.to_pylist()
    assert rows[0] == {
        "x": 0, "y": 0, "size": 512, "label": "tissue", "focus": "sharp",
        "confidence": 1.0, "stage": "zero_shot",
    }  # fmt: skip
    assert {r["stage"] for r in rows} == {"zero_shot", "coarse"}
    assert any(r["focus"] is None for r in rows)
    write_patches_parquet(path, [])
    assert pq.read_table(path).num_rows == 0


def test_mask_at_thumbnail_and_overlay() -> None:
    grid = PatchGrid(slide_width=2000, slide_height=1100, patch_size=512)
    mask = np.zeros(grid.shape, bool)
    mask[0, 1] = mask[2, 3] = True
    thumb_mask = mask_at_thumbnail(mask, grid, (math.ceil(1100 / 64), math.ceil(2000 / 64)), 64)
    assert thumb_mask.shape == (18, 32)
    assert thumb_mask[0:8, 8:16].all() and thumb_mask.sum() == 64 + 2 * 8  # the last row is cut by the edge
    thumbnail = np.full((18, 32, 3), 250, np.uint8)
    drawn = overlay_image(thumbnail, thumb_mask)
    assert np.array_equal(drawn[~thumb_mask], thumbnail[~thumb_mask])
    centre = drawn[4, 12].astype(int)
    assert centre[1] > centre[0] and abs(int(centre[1]) - round(250 * 0.65 + OVERLAY_FILL[1] * 0.35)) <= 1


def test_write_slide_outputs_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = np.full((GRID.slide_height, GRID.slide_width, 3), 240, np.uint8)
    image[:1500, :1500] = rng.integers(100, 180, (1500, 1500, 3), dtype=np.uint8)
    mask = ring_and_blobs()
    with open_slide(image, name="synthetic") as slide:
        thumb = slide.thumbnail(64)
    out = tmp_path / "OUT" / "synthetic"
    summary = {"dice": np.float64(0.9), "patches": np.int64(42), "nan": float("nan"), "path": out, "a": [1]}
    records = write_slide_outputs(
        out, SlideOutputs(run_id="r1", slide_id="synthetic", grid=GRID, tissue=mask, labels=labels_for(mask),
        thumbnail=thumb, thumb_downsample=64, focus=None, summary=summary,
        level_dim=(GRID.slide_width, GRID.slide_height)),
    )  # fmt: skip
    names = [Path(r.path).name for r in records]
    assert names == [
        "mask.png", "mask.npy", "mask_thumb.png", "tissue.geojson", "patches.h5", "patches.parquet",
        "focus.png", "overlay.png", "summary.json",
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files left
    for record in records:
        data = Path(record.path).read_bytes()
        assert record.bytes == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()
        assert (record.run_id, record.slide_id) == ("r1", "synthetic")
    png = np.asarray(Image.open(out / "mask.png"))
    assert png.shape == GRID.shape and set(np.unique(png)) == {0, 255}
    assert np.array_equal(png == 255, mask) and np.array_equal(np.load(out / "mask.npy"), mask)
    assert np.asarray(Image.open(out / "mask_thumb.png")).shape == thumb.shape[:2]
    assert np.asarray(Image.open(out / "overlay.png")).shape == thumb.shape
    focus = np.asarray(Image.open(out / "focus.png"))
    assert focus.shape == (*GRID.shape, 3)
    assert tuple(focus[0, 0]) == FOCUS_COLOURS[FOCUS_CODES["sharp"]] == (26, 152, 80)
    assert tuple(focus[0, 1]) == FOCUS_COLOURS[FOCUS_CODES["mild_blur"]] == (254, 196, 79)
    assert tuple(focus[1, 1]) == FOCUS_COLOURS[NO_FOCUS] == (230, 230, 230)  # background: not graded
    assert np.array_equal(geojson_to_mask(out / "tissue.geojson", GRID), mask)
    text = (out / "summary.json").read_text()
    loaded = json.loads(text)
    assert loaded == {"a": [1], "dice": 0.9, "nan": None, "path": str(out), "patches": 42}
    assert text.index('"a"') < text.index('"dice"') < text.index('"path"')


def test_overlay_drawn_on_a_finer_picture_when_given(tmp_path: Path) -> None:
    mask = ring_and_blobs()
    image = np.full((GRID.slide_height, GRID.slide_width, 3), 240, np.uint8)
    with open_slide(image, name="synthetic") as slide:
        thumb, picture = slide.thumbnail(64), slide.thumbnail(8)
    out = tmp_path / "synthetic"
    write_slide_outputs(
        out, SlideOutputs(run_id="r1", slide_id="synthetic", grid=GRID, tissue=mask, labels=labels_for(mask),
        thumbnail=thumb, thumb_downsample=64, focus=None, summary={},
        level_dim=(GRID.slide_width, GRID.slide_height), picture=(picture, 8.0)),
    )  # fmt: skip
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == picture.shape
    # The mask thumbnail stays at the grounding thumbnail's resolution.
    assert np.asarray(Image.open(out / "mask_thumb.png")).shape == thumb.shape[:2]
    # Tissue cells are tinted: the overlay differs from the plain grey picture exactly there.
    tinted = np.any(overlay != picture, axis=2)
    row, col = np.argwhere(mask)[0]
    size = GRID.patch_size // 8
    assert tinted[row * size + size // 2, col * size + size // 2]
    assert not tinted[~mask_at_thumbnail(mask, GRID, picture.shape[:2], 8.0)].any()


def test_focus_array_given_by_name_or_code(tmp_path: Path) -> None:
    mask = np.zeros(GRID.shape, bool)
    names = np.full(GRID.shape, None, dtype=object)
    names[0, 0] = "out_of_focus"
    common = {
        "run_id": "r", "slide_id": "s", "grid": GRID, "tissue": mask, "labels": [],
        "thumbnail": np.full((50, 65, 3), 255, np.uint8), "thumb_downsample": 64.0, "summary": {},
        "level_dim": (GRID.slide_width, GRID.slide_height),
    }  # fmt: skip
    write_slide_outputs(tmp_path / "a", SlideOutputs(focus=names, **common))  # type: ignore[arg-type]
    drawn = np.asarray(Image.open(tmp_path / "a" / "focus.png"))
    assert tuple(drawn[0, 0]) == FOCUS_COLOURS[FOCUS_CODES["out_of_focus"]]
    with pytest.raises(ValueError, match="focus codes"):
        write_slide_outputs(tmp_path / "b", SlideOutputs(focus=np.full(GRID.shape, 9), **common))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tissue must be bool"):
        write_slide_outputs(tmp_path / "c", SlideOutputs(**{**common, "tissue": mask[:2]}))  # type: ignore[arg-type]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_summary_json(path, {"ok": True})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        write_summary_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
