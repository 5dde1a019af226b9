"""The classical oracle answers all five questions from image evidence, through the audit and cache path."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tissue_oracle.bench.fakes import images
from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import ReplayMissError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import (
    Box,
    BoxesRequest,
    Exemplar,
    PatchLabelsRequest,
    PatchRef,
    PointsRequest,
    RerankRequest,
    ReviewRequest,
    Stage,
)


def ctx(recorder: MemoryRecorder, stage: Stage = "classify_patches", **kw: bool) -> CallContext:
    return CallContext(run_id="r", slide_id="s", stage=stage, role="oracle", recorder=recorder, **kw)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture()
def oracle() -> ClassicalOracle:
    return ClassicalOracle()


def test_is_an_honestly_labelled_oracle(oracle: ClassicalOracle) -> None:
    assert isinstance(oracle, Oracle)
    assert (oracle.backend, oracle.model, oracle.is_vlm) == ("classical", "classical-v1", False)
    assert len(oracle.questions) == 5


def test_patch_labels_tissue_background_speckle_and_pen(oracle: ClassicalOracle) -> None:
    blank = np.zeros((512, 512), bool)
    pictures = {
        "tissue": images.compose(images.disc_mask((512, 512), (256, 256), 240)),
        "glass": images.compose(blank),
        "speckle": images.speckle((512, 512)),
        "blue_pen": images.pen_stroke(images.compose(blank), (30, 60, 200), width=60),
        "black_pen": images.pen_stroke(images.compose(blank), (20, 20, 25), width=60),
    }
    refs = [PatchRef(x=512 * i, y=0) for i in range(len(pictures))]
    rec = MemoryRecorder()
    answer = run(
        oracle.patch_labels(PatchLabelsRequest(patches=refs, images=list(pictures.values())), ctx(rec))
    )
    got = dict(zip(pictures, (lab.label for lab in answer.labels), strict=True))
    assert got == {
        "tissue": "tissue",
        "glass": "background",
        "speckle": "background",
        "blue_pen": "background",
        "black_pen": "background",
    }
    assert answer.labels[0].focus == "sharp" and answer.labels[0].source == "zero_shot"
    assert [lab.ref for lab in answer.labels] == refs
    assert len(rec.calls) == 1 and rec.calls[0].ok and rec.calls[0].backend == "classical"
    assert answer.usage.calls == 1 and answer.usage.usd == 0.0


@pytest.mark.parametrize(("sigma", "focus"), [(0.0, "sharp"), (3.5, "mild_blur"), (8.0, "out_of_focus")])
def test_focus_follows_known_blur(oracle: ClassicalOracle, sigma: float, focus: str) -> None:
    image = images.compose(images.disc_mask((512, 512), (256, 256), 240), seed=3, blur_sigma=sigma)
    answer = run(
        oracle.patch_labels(
            PatchLabelsRequest(patches=[PatchRef(x=0, y=0)], images=[image]), ctx(MemoryRecorder())
        )
    )
    assert answer.labels[0].label == "tissue"
    assert answer.labels[0].focus == focus


def test_few_shot_exemplars_rescue_pale_tissue(oracle: ClassicalOracle) -> None:
    disc = images.disc_mask((256, 256), (128, 128), 110)
    full = images.compose(disc, seed=5).astype(np.float32)
    pale = np.clip(images.BACKGROUND + 0.08 * (full - images.BACKGROUND), 0, 255).astype(np.uint8)
    glass = images.compose(np.zeros((256, 256), bool), seed=6)
    req = PatchLabelsRequest(patches=[PatchRef(x=0, y=0, size=256)], images=[pale])
    zero = run(oracle.patch_labels(req, ctx(MemoryRecorder())))
    shots = [
        Exemplar(ref=PatchRef(x=256, y=0, size=256), label="tissue", image=pale.copy()),
        Exemplar(ref=PatchRef(x=512, y=0, size=256), label="background", image=glass),
    ]
    few = run(oracle.patch_labels(req.model_copy(update={"exemplars": shots}), ctx(MemoryRecorder())))
    assert zero.labels[0].label == "background"
    assert few.labels[0].label == "tissue" and few.labels[0].source == "few_shot"


def test_boxes_find_each_section_in_level0(oracle: ClassicalOracle) -> None:
    mask = images.disc_mask((200, 300), (60, 100), 40) | images.disc_mask((200, 300), (220, 90), 45)
    req = BoxesRequest(
        thumbnail=images.compose(mask), downsample=64.0, slide_width=300 * 64, slide_height=200 * 64
    )
    answer = run(oracle.boxes(req, ctx(MemoryRecorder(), stage="ground_boxes")))
    assert len(answer.boxes) == 2
    centres = sorted(((b.x0 + b.x1) / 2 / 64, (b.y0 + b.y1) / 2 / 64) for b in answer.boxes)
    assert centres[0] == pytest.approx((60, 100), abs=4)
    assert centres[1] == pytest.approx((220, 90), abs=4)
    assert all(b.x1 <= req.slide_width and b.y1 <= req.slide_height for b in answer.boxes)


def test_points_land_on_their_class(oracle: ClassicalOracle) -> None:
    mask = images.disc_mask((256, 256), (80, 128), 60)
    region = Box(x0=1000, y0=2000, x1=1000 + 1024, y1=2000 + 1024)
    answer = run(
        oracle.points(
            PointsRequest(crop=images.compose(mask), region=region, max_points_per_class=3),
            ctx(MemoryRecorder(), stage="point_ground"),
        )
    )
    labels = [p.label for p in answer.points]
    assert labels.count("tissue") == 3 and labels.count("background") == 3
    for p in answer.points:
        assert region.x0 <= p.x < region.x1 and region.y0 <= p.y < region.y1
        inside = bool(mask[(p.y - region.y0) // 4, (p.x - region.x0) // 4])
        assert inside == (p.label == "tissue")


def test_rerank_prefers_sharp_clean_tissue(oracle: ClassicalOracle) -> None:
    full = images.disc_mask((256, 256), (128, 128), 150)
    candidates = [
        images.compose(full, seed=1, blur_sigma=3.0),
        images.compose(full, seed=2),
        images.speckle((256, 256)),
        images.compose(np.zeros((256, 256), bool)),
    ]
    refs = [PatchRef(x=256 * i, y=0, size=256) for i in range(4)]
    req = RerankRequest(
        candidates=refs,
        candidate_labels=["tissue", "tissue", "background", "background"],
        images=candidates,
        top_k=1,
    )
    rec = MemoryRecorder()
    answer = run(oracle.rerank(req, ctx(rec, stage="rerank_exemplars")))
    picked = {ex.label: ex.ref for ex in answer.exemplars}
    assert picked == {"tissue": refs[1], "background": refs[3]}
    again = run(oracle.rerank(req, ctx(rec, stage="rerank_exemplars")))
    assert again.usage.cache_hit and [e.ref for e in again.exemplars] == [e.ref for e in answer.exemplars]
    assert np.array_equal(again.exemplars[0].image, candidates[1])


def test_review_grades_a_good_and_a_bad_mask(oracle: ClassicalOracle) -> None:
    truth = images.disc_mask((256, 256), (128, 128), 80)
    crop = images.compose(truth)
    region = Box(x0=0, y0=0, x1=1024, y1=1024)
    good = run(
        oracle.review(
            ReviewRequest(crop=crop, overlay=crop, mask=truth, region=region),
            ctx(MemoryRecorder(), stage="review_mask"),
        )
    )
    half = truth & (np.arange(256)[None, :] < 128)
    bloated = images.disc_mask((256, 256), (128, 128), 125)
    low_recall = run(
        oracle.review(
            ReviewRequest(crop=crop, overlay=crop, mask=half, region=region),
            ctx(MemoryRecorder(), stage="review_mask"),
        )
    )
    low_precision = run(
        oracle.review(
            ReviewRequest(crop=crop, overlay=crop, mask=bloated, region=region),
            ctx(MemoryRecorder(), stage="review_mask"),
        )
    )
    assert (good.grades.precision, good.grades.recall) == (1, 1)
    assert low_recall.grades.precision <= 2 and low_recall.grades.recall == 3
    assert low_precision.grades.precision >= 3 and low_precision.grades.recall == 1
    assert good.grades.notes.startswith("classical:")


def test_cache_hit_and_replay_miss(oracle: ClassicalOracle) -> None:
    image = images.compose(images.disc_mask((128, 128), (64, 64), 50))
    req = PatchLabelsRequest(patches=[PatchRef(x=0, y=0, size=128)], images=[image])
    rec = MemoryRecorder()
    first = run(oracle.patch_labels(req, ctx(rec)))
    second = run(oracle.patch_labels(req, ctx(rec)))
    assert second.labels == first.labels and second.usage.cache_hit and second.usage.calls == 0
    assert [c.cache_hit for c in rec.calls] == [False, True]
    assert rec.calls[0].request_hash == rec.calls[1].request_hash
    other = PatchLabelsRequest(patches=req.patches, images=[255 - image])
    with pytest.raises(ReplayMissError):
        run(oracle.patch_labels(other, ctx(rec, replay_only=True)))
    assert rec.calls[-1].ok is False and len(rec.calls) == 3


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.real
def test_real_tiles_agree_with_their_labels(oracle: ClassicalOracle, real_data: Path) -> None:
    """histolab's tile labels: clear tissue tiles are tissue, clear glass tiles are background."""
    tissue_like = {"tissue", "all_tissue", "mostly_tissue", "all_tissue(pen)"}
    glass_like = {"no_tissue", "almost_white", "no_tissue(pen)"}
    with (real_data / "tiles" / "LABELS.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rows = [r for r in rows if r["label"] in tissue_like | glass_like]
    pics = [_read_rgb(real_data / "tiles" / r["file"]) for r in rows]
    refs = [PatchRef(x=i, y=0, size=max(p.shape[:2])) for i, p in enumerate(pics)]
    answer = run(oracle.patch_labels(PatchLabelsRequest(patches=refs, images=pics), ctx(MemoryRecorder())))
    wrong = [
        r["file"]
        for r, lab in zip(rows, answer.labels, strict=True)
        if (lab.label == "tissue") != (r["label"] in tissue_like)
    ]
    assert len(wrong) <= 2, wrong
