"""The classical whole-slide map (``oracles.tissue_map``) and the stage built on it (``classify_dense``).

Real images: the two-core virtual slide, its fluorescence-like inversion, plain glass, and the
shared fluorescence slide (skipped when ../shared is absent). The controller test checks the
default policy labels every patch from the map without one per-patch oracle call.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from shapely.geometry import shape
from stage_support import core_slide_pixels, dice, granule_haze_on_glass

from tissue_oracle.agent.controller import segment_slide
from tissue_oracle.agent.oracle_setup import build_oracles
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.oracles.classical_dense import ClassifyDenseInput, dense_labels
from tissue_oracle.oracles.map_params import MapParams
from tissue_oracle.oracles.precipitate import _line_share
from tissue_oracle.oracles.tissue_map import percent, tissue_map
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.focus import NO_FOCUS
from tissue_oracle.tools.slides import open_slide

PATCH = 256


def patch_truth(truth: np.ndarray, patch: int = PATCH) -> np.ndarray:
    rows, cols = -(-truth.shape[0] // patch), -(-truth.shape[1] // patch)
    padded = np.zeros((rows * patch, cols * patch), dtype=bool)
    padded[: truth.shape[0], : truth.shape[1]] = truth
    return padded.reshape(rows, patch, cols, patch).mean(axis=(1, 3)) >= 0.5


def test_dense_labels_follow_the_half_patch_rule_on_the_two_cores() -> None:
    image, truth = core_slide_pixels()
    with open_slide(image, name="two-cores") as slide:
        out = dense_labels(ClassifyDenseInput(patch_size=PATCH), slide)
    assert out.scope_kind == "brightfield" and out.scope_message is None
    assert out.scope.all() and len(out.labels) == out.grid.rows * out.grid.cols
    assert dice(out.tissue, patch_truth(truth)) >= 0.95
    # focus is graded on tissue patches only, and the sharp virtual cores read as sharp
    graded = out.focus != NO_FOCUS
    assert graded.any() and not (graded & ~out.tissue).any()
    assert (out.focus[graded] == 0).mean() >= 0.8


def test_a_pale_piece_and_glass_seams_are_told_apart() -> None:
    image, truth = core_slide_pixels()
    img = image.astype(np.int16).copy()
    # the second core faded to a quarter of its stain, and a 3% darker "tile" of glass
    cx, cy, r = 2900, 1900, 650
    ys, xs = np.ogrid[: img.shape[0], : img.shape[1]]
    second = ((xs - cx) ** 2 + (ys - cy) ** 2 <= r * r)[..., None]
    img = np.where(second, 238 - (238 - img) // 4, img)
    img[:800, 2200:3400] = (img[:800, 2200:3400] * 0.97).astype(np.int16)
    thumb = np.clip(img, 0, 255).astype(np.uint8)[::8, ::8]
    tmap = tissue_map(thumb, PATCH / 8)
    small_truth = truth[::8, ::8]
    assert dice(tmap.solid, small_truth) >= 0.9
    assert not tmap.solid[: 800 // 8, 2200 // 8 : 3400 // 8].any()


def test_the_map_edge_is_the_tissue_edge_not_growth_halo() -> None:
    image, truth = core_slide_pixels()
    tmap = tissue_map(image[::8, ::8], PATCH / 8)
    small_truth = truth[::8, ::8]
    assert abs(float(tmap.solid.sum()) / float(small_truth.sum()) - 1.0) < 0.03


def soft_edged_disc(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A map-scale image (10 x 10 patches of 32 px) of a stained disc whose rim is blurred over about
    a pixel (sigma 0.8 px, as a slide's low pyramid level shows it), and the truth: pixels at least
    half inside the disc (4x supersampled)."""
    rng = np.random.default_rng(seed)
    s, h = 4, 320
    ys, xs = np.mgrid[: h * s, : h * s] / s
    inside = ((xs - 150) ** 2 + (ys - 165) ** 2 <= 95**2).astype(np.float32)
    cover = inside.reshape(h, s, h, s).mean(axis=(1, 3))
    eosin, haem = np.array([0.05, 0.6, 0.15]), np.array([0.55, 0.6, 0.2])
    density = rng.uniform(0.5, 0.7, (h, h))
    density[rng.random((h, h)) < 0.1] += 1.0
    stain = eosin * density[..., None] + haem * (density[..., None] > 1.0)
    od = ndi.gaussian_filter(cover, 0.8)[..., None] * stain
    glass = np.array([236, 233, 238], np.float32) + rng.normal(0, 1.5, (h, h, 1))
    return np.clip(glass * 10 ** (-od), 0, 255).astype(np.uint8), cover >= 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_the_blurred_rim_outside_the_half_inside_edge_is_peeled(seed: int) -> None:
    rgb, truth = soft_edged_disc(seed)
    unpeeled = tissue_map(rgb, 32, MapParams(halo_passes=0)).solid
    solid = tissue_map(rgb, 32).solid
    # growth's means carry the map about a pixel into the rim all round ...
    assert unpeeled.sum() / truth.sum() > 1.02 and not (truth & ~unpeeled).sum() > 0.002 * truth.sum()
    # ... which the halo rule takes back (most of it) without eating into the tissue
    assert abs(solid.sum() / truth.sum() - 1.0) < 0.015
    assert (solid & ~truth).sum() < 0.5 * (unpeeled & ~truth).sum()
    assert (truth & ~solid).sum() < 0.01 * truth.sum()


def precipitate_beside_tissue(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A map-scale image (12 x 12 patches of 32 px): a stained disc, and touching it a zone of
    stain precipitate (dense dark granules on a patchy, faint eosin haze over glass)."""
    rng = np.random.default_rng(seed)
    h, w = 384, 384
    ys, xs = np.mgrid[:h, :w]
    glass = np.empty((h, w, 3), np.float32)
    glass[:] = (236, 233, 238)
    glass += rng.normal(0, 1.5, (h, w, 1))
    tissue = (xs - 110) ** 2 + (ys - 190) ** 2 <= 80**2
    od = np.zeros((h, w, 3), np.float32)
    eosin, haem = np.array([0.05, 0.6, 0.15]), np.array([0.55, 0.6, 0.2])
    od[tissue] += eosin * rng.uniform(0.5, 0.7, (int(tissue.sum()), 1))
    od[tissue & (rng.random((h, w)) < 0.12)] += haem * 1.2
    zone = ((xs - 280) / 90) ** 2 + ((ys - 190) / 120) ** 2 <= 1
    haze = ndi.gaussian_filter(rng.random((h, w)), 4)
    haze = np.clip((haze - haze.mean()) / haze.std() * 0.6 + 0.5, 0, 1)
    od[zone] += eosin * 0.2 * haze[zone, None]
    grains = zone & (rng.random((h, w)) < 0.12)
    od[grains] += np.array([0.6, 0.7, 0.5]) * rng.uniform(0.6, 1.2, (int(grains.sum()), 1))
    rgb = np.clip(glass * 10 ** (-od), 0, 255).astype(np.uint8)
    return rgb, tissue, zone & ~tissue


@pytest.mark.parametrize("seed", [0, 1])
def test_a_precipitate_zone_beside_tissue_is_not_grown_into(seed: int) -> None:
    rgb, tissue, zone = precipitate_beside_tissue(seed)
    tmap = tissue_map(rgb, 32)
    assert tmap.scope.kind == "brightfield"
    assert tmap.solid[zone].mean() < 0.05
    assert dice(tmap.solid, tissue) >= 0.95


def magenta_precipitate_beside_pale_tissue(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pale lilac tissue (a silver stain's counterstain) and, apart from it, a magenta precipitate
    haze dotted with dark granules: the haze is more saturated than the tissue, so it is strong stain."""
    rng = np.random.default_rng(seed)
    h, w = 384, 384
    ys, xs = np.mgrid[:h, :w]
    tissue = (xs - 110) ** 2 + (ys - 190) ** 2 <= 80**2
    od = np.zeros((h, w, 3), np.float32)
    od[tissue] += np.array([0.06, 0.10, 0.05]) * rng.uniform(0.8, 1.2, (int(tissue.sum()), 1))
    od[tissue & (rng.random((h, w)) < 0.04)] += (0.25, 0.3, 0.2)  # pale nuclei
    zone = ((xs - 290) / 70) ** 2 + ((ys - 190) / 110) ** 2 <= 1
    return granule_haze_on_glass(od, zone, (0.03, 0.22, 0.05), rng), tissue, zone


def test_a_saturated_precipitate_haze_is_dropped_though_it_is_strong_stain() -> None:
    rgb, tissue, zone = magenta_precipitate_beside_pale_tissue(0)
    kept = tissue_map(rgb, 32, MapParams(speckle_strong=False)).solid
    assert kept[zone].mean() > 0.5  # strong stain: the weak-piece test alone keeps it
    solid = tissue_map(rgb, 32).solid
    assert solid[zone].mean() < 0.05
    assert dice(solid, tissue) >= 0.9


def membranes_beside_precipitate(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pink piece with glomerulus-like rings of dark membrane (joined lines, a silver or PAS
    stain) and scattered nuclei on a pale substrate, and apart from it a precipitate zone of
    granules on a haze. Both pieces are dotted with isolated dark spikes on a faint median."""
    rng = np.random.default_rng(seed)
    h, w = 384, 448
    ys, xs = np.mgrid[:h, :w]
    tissue = (xs - 120) ** 2 + (ys - 190) ** 2 <= 95**2
    od = np.zeros((h, w, 3), np.float32)
    od[tissue] += np.array([0.02, 0.09, 0.03]) * rng.uniform(0.8, 1.2, (int(tissue.sum()), 1))
    centres = ((80, 150), (160, 150), (80, 235), (160, 235), (120, 110), (120, 275), (45, 190), (195, 190))
    for cx, cy in centres:
        ring = np.abs(np.hypot(xs - cx, ys - cy) - 17) <= 1.5
        od[ring & tissue] += (0.25, 0.5, 0.2)
    od[tissue & (rng.random((h, w)) < 0.04)] += (0.2, 0.25, 0.15)  # nuclei
    zone = ((xs - 340) / 80) ** 2 + ((ys - 190) / 120) ** 2 <= 1
    return granule_haze_on_glass(od, zone, (0.03, 0.09, 0.04), rng), tissue, zone


@pytest.mark.parametrize("seed", [0, 1])
def test_tissue_whose_dark_parts_are_joined_membranes_is_not_precipitate(seed: int) -> None:
    rgb, tissue, zone = membranes_beside_precipitate(seed)
    dropped = tissue_map(rgb, 32, MapParams(line_share=1.01)).solid  # without the joined-line test
    assert dropped[tissue].mean() < 0.05  # dots on a faint median: the precipitate test drops the piece
    solid = tissue_map(rgb, 32).solid
    assert solid[zone].mean() < 0.05
    assert dice(solid, tissue) >= 0.95


def test_joined_lines_count_up_to_a_patch_and_dots_never() -> None:
    """The joined-line share behind the test above: rings count, granules do not, and neither does one
    line longer than a patch (a coverslip edge merged into a precipitate haze, tuning slide hard_1 at
    12288 px)."""
    ys, xs = np.mgrid[:256, :384]
    pieces = np.zeros((256, 384), np.int32)
    pieces[:, :128], pieces[:, 128:256], pieces[:, 256:] = 1, 2, 3
    od = np.full((256, 384), 0.1, np.float32)
    rings = np.abs(np.hypot((xs % 64) - 32, (ys % 64) - 32) - 17) <= 1.5  # 16 rings of ~320 px
    od[rings & (pieces == 1)] = 0.5
    od[(pieces == 2) & (xs % 4 == 0) & (ys % 4 == 0)] = 0.5  # granules: single dots
    od[(pieces == 3) & (np.abs(xs - 320) <= 2)] = 0.5  # one line of 1280 px (1.25 patches of 1024)
    share = _line_share(pieces, 3, od, np.array([0.1, 0.1, 0.1]), MapParams(), 1024.0)
    assert share[0] == pytest.approx(1.0) and share[1] == 0.0 and share[2] == 0.0
    longer = _line_share(pieces, 3, od, np.array([0.1, 0.1, 0.1]), MapParams(line_max_area=2.0), 1024.0)
    assert longer[2] == pytest.approx(1.0)


def disc_and_stroke(
    tissue: np.ndarray, colour: tuple[int, int, int], stroke: np.ndarray, *, seed: int, nuclei: float = 0.0
) -> np.ndarray:
    """Glass with a tissue area of ``colour`` (purple nuclei at ``nuclei`` density), then a cyan-blue
    marker stroke drawn over both; sensor noise on top."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((*tissue.shape, 3), np.float32)
    rgb[:] = (236, 233, 238)
    rgb[tissue] = colour
    rgb[tissue & (rng.random(tissue.shape) < nuclei)] = (120, 70, 150)
    rgb[stroke] = (100, 128, 200)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_blue_stained_tissue_is_not_pen_but_blue_ink_is() -> None:
    """Aniline-blue collagen (Masson) and dense haematoxylin are violet-blue, green no higher than
    red; marker ink is cyan-blue, green well above red (the shared real pen images: 20-70 above)."""
    ys, xs = np.mgrid[:384, :384]
    tissue = (xs - 120) ** 2 + (ys - 190) ** 2 <= 70**2
    stroke = (np.abs(xs - 290) < 14) & (ys > 60) & (ys < 330)
    tmap = tissue_map(disc_and_stroke(tissue, (95, 90, 155), stroke, seed=3), 32)
    assert dice(tmap.solid, tissue) >= 0.95
    assert not tmap.solid[stroke].any() and tmap.ink[stroke].all()


def test_tissue_under_a_pen_stroke_is_tissue_and_the_stroke_on_glass_is_not() -> None:
    ys, xs = np.mgrid[:384, :384]
    tissue = (xs - 160) ** 2 + (ys - 190) ** 2 <= 90**2
    stroke = np.abs(xs - 160) < 7
    tmap = tissue_map(disc_and_stroke(tissue, (215, 140, 195), stroke, seed=4, nuclei=0.1), 32)
    assert tmap.ink[stroke].mean() > 0.9
    assert tmap.solid[stroke & tissue].mean() > 0.9
    on_glass = stroke & (ndi.distance_transform_edt(~tissue) > 4)
    assert not tmap.solid[on_glass].any()
    assert dice(tmap.solid, tissue) >= 0.95


def test_a_tinted_strip_along_the_slide_edge_is_not_tissue() -> None:
    rgb, tissue, _ = precipitate_beside_tissue(0)
    rgb = rgb.copy()
    rgb[:, 362:] = (224, 206, 205)  # beige mounting medium beyond the coverslip, the full height
    tmap = tissue_map(rgb, 32)
    assert not tmap.solid[:, 362:].any()
    assert dice(tmap.solid, tissue) >= 0.95


def test_fluorescence_is_named_and_mapped_on_the_inverted_image() -> None:
    image, truth = core_slide_pixels()
    dark = (255 - image)[::8, ::8]
    tmap = tissue_map(dark, PATCH / 8)
    assert tmap.scope.kind == "fluorescence" and tmap.scope.flag == "out_of_scope_fluorescence"
    assert "fluorescence" in (tmap.scope.message or "")
    assert dice(tmap.solid, truth[::8, ::8]) >= 0.8


def test_glass_and_all_tissue_slides_are_named() -> None:
    rng = np.random.default_rng(0)
    glass = rng.integers(232, 241, size=(300, 400, 3), dtype=np.uint8)
    tmap = tissue_map(glass, 32)
    assert tmap.scope.kind == "all_glass" and not tmap.solid.any()
    image, _ = core_slide_pixels()
    cx, cy = 1100, 1200
    inside = np.ascontiguousarray(image[cy - 400 : cy + 400, cx - 400 : cx + 400][::4, ::4])
    full = tissue_map(inside, 64)
    assert full.scope.kind == "nearly_all_tissue" and "tissue" in (full.scope.message or "")


def test_stain_without_a_tissue_patch_is_named_not_a_silent_zero() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(232, 241, size=(2400, 3200, 3), dtype=np.uint8)
    ys, xs = np.ogrid[:2400, :3200]
    for cx, cy in ((800, 700), (2400, 1700)):  # two stained crumbs, each under a tenth of a patch
        image[(xs - cx) ** 2 + (ys - cy) ** 2 <= 40**2] = (190, 110, 170)
    with open_slide(image, name="crumbs") as slide:
        out = dense_labels(ClassifyDenseInput(patch_size=PATCH, focus_crop=0), slide)
    assert not out.tissue.any()
    assert out.scope_kind == "no_tissue_kept"
    message = out.scope_message or ""
    assert message.startswith("no tissue patch kept")
    stain = re.search(r"\(([0-9.]+)% shows stain", message)
    assert stain is not None and float(stain.group(1)) > 0  # the crumbs' share, not a 0%
    with open_slide(np.full_like(image, 236), name="glass") as slide:
        glass = dense_labels(ClassifyDenseInput(patch_size=PATCH, focus_crop=0), slide)
    assert glass.scope_kind == "all_glass"


def test_shares_read_as_plain_percentages() -> None:
    assert [percent(x) for x in (1.0, 0.9996, 0.254, 0.023, 0.0004, 0.0)] == [
        "100",
        "100",
        "25.4",
        "2.3",
        "0.04",
        "0",
    ]


def test_a_tile_smaller_than_a_patch_is_told_to_use_a_smaller_patch() -> None:
    image, _ = core_slide_pixels()
    tile = np.ascontiguousarray(image[1100:1140, 1000:1040])  # 40 x 40 px inside one core: all tissue
    with open_slide(tile, name="tile") as slide:
        out = dense_labels(ClassifyDenseInput(patch_size=PATCH, focus_crop=0), slide)
    # not "clean glass": a few map pixels of tissue show no glass to compare with
    assert not out.tissue.any() and out.scope_kind == "image_too_small"
    message = out.scope_message or ""
    assert "40 x 40 px" in message and "classify.patch_size" in message, message
    assert "--patch-size 40 or less" in message, message
    with open_slide(tile, name="tile") as slide:
        fitted = dense_labels(ClassifyDenseInput(patch_size=32, focus_crop=0), slide)
    assert fitted.tissue.all(), fitted.scope_message
    with open_slide(tile[:20, :20].copy(), name="speck") as slide:
        speck = dense_labels(ClassifyDenseInput(patch_size=PATCH, focus_crop=0), slide)
    assert speck.scope_kind == "image_too_small" and "under 32 px" in (speck.scope_message or "")


def test_default_policy_labels_from_one_map_and_asks_no_patch_question(tmp_path: Path) -> None:
    image, truth = core_slide_pixels()
    policy = load_policy("default").with_updates({"classify.patch_size": PATCH})
    recorder = MemoryRecorder()

    async def main():  # type: ignore[no-untyped-def]
        oracles = build_oracles(policy)
        try:
            with open_slide(image, name="two-cores") as slide:
                settings = RunSettings(run_id="r", policy=policy, out_dir=tmp_path)
                deps = RunDeps.for_run(settings, oracles=oracles, store=recorder)
                return await segment_slide(slide, settings, deps)
        finally:
            await oracles.aclose()

    summary = asyncio.run(main())
    assert summary.labelled_as == "classical (no VLM)"
    assert summary.stages["classify_patches"].calls == 0
    assert all(r.final_action == "accept" for r in summary.regions)
    # regions are the map's pieces: one box per core, no grounding fallback
    assert len(summary.boxes) == 2 and not summary.boxes_fallback
    assert "ground_boxes" not in summary.stages
    assert not any(f.startswith("out_of_scope") for f in summary.flags)
    mask = np.load(tmp_path / "two-cores" / "mask.npy")
    assert dice(mask, patch_truth(truth)) >= 0.95
    # tissue.geojson traces the map cut to the accepted patches: close to the true area, and
    # never outside an accepted patch (which overshoot the round cores)
    doc = json.loads((tmp_path / "two-cores" / "tissue.geojson").read_text())
    shapes = shapely.unary_union([shape(f["geometry"]) for f in doc["features"]])
    assert len(doc["features"]) == 2
    squares = np.kron(mask, np.ones((PATCH, PATCH), dtype=bool))
    in_patches = truth & squares[: truth.shape[0], : truth.shape[1]]
    assert abs(shapes.area - in_patches.sum()) / in_patches.sum() < 0.05
    assert shapes.area < 0.97 * mask.sum() * PATCH * PATCH  # not the squares themselves
    rows, cols = np.nonzero(mask)
    patches = shapely.unary_union(
        shapely.box(cols * PATCH, rows * PATCH, (cols + 1) * PATCH, (rows + 1) * PATCH)
    )
    assert shapes.difference(patches).area < 1e-6
    assert summary.tissue_area_mm2 is None  # the virtual slide records no mpp


def test_the_fluorescence_slide_is_flagged_not_silently_empty(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "slides" / "test3-DAPI-2-387.ndpi"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with open_slide(path) as slide:
        out = dense_labels(ClassifyDenseInput(focus_crop=0), slide)
    assert out.scope_kind == "fluorescence" and out.scope_message
    assert out.tissue.any()


def test_a_real_fragment_smaller_than_a_patch_is_named_with_its_stain(real_data: Path) -> None:
    path = real_data / "slides" / "kidney-48-5.tif"  # 1493 x 901, one IHC fragment of ~2%, dust
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with open_slide(path) as slide:
        out = dense_labels(ClassifyDenseInput(focus_crop=0), slide)
    assert not out.tissue.any() and out.scope_kind == "no_tissue_kept"
    stain = re.search(r"\(([0-9.]+)% shows stain", out.scope_message or "")
    assert stain is not None and float(stain.group(1)) > 0


def test_a_real_tcga_slide_agrees_with_histolab(real_data: Path) -> None:
    from tissue_oracle.bench.evaluation.labelled import mask_to_patches

    path = real_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    reference = real_data / "masks" / "tissue-mask-tcga-cr-7395.npy"
    if not (path.is_file() and reference.is_file()):
        pytest.skip(f"{path} or its mask is absent")
    with open_slide(path) as slide:
        out = dense_labels(ClassifyDenseInput(focus_crop=0), slide)
        width, height = slide.dimensions
    theirs = mask_to_patches(np.load(reference), width, height, out.grid.patch_size, 0.5)
    assert out.scope_kind == "brightfield"
    assert dice(out.tissue, theirs) >= 0.95
