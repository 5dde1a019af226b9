"""Distillation: data from a real DuckDB audit file, split by slide, caps, cache, training, model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.reads import StoreReads
from tissue_oracle.tools import distil_data as data
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.distil import CARD_NAME, ModelCard, distil
from tissue_oracle.tools.errors import ConfigError, StoreError
from tissue_oracle.tools.schemas import (
    CallRecord,
    PatchRecord,
    RunRecord,
    SlideRecord,
    StudentSpec,
)
from tissue_oracle.tools.slides import open_slide

SIZE = 64  # level-0 patch side in these tiny slides
GRID = 8  # patches per side: slides are 512 x 512 level-0 pixels


def synthetic_slide(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 512 px RGB slide with a pink tissue rectangle on near-white glass, and its patch truth."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((GRID, GRID), bool)
    r0, c0 = rng.integers(0, 3, size=2)
    truth[r0 : r0 + 4, c0 : c0 + 4 + seed % 2] = True
    img = rng.normal(238, 6, size=(GRID * SIZE, GRID * SIZE, 3))
    tissue = np.kron(truth, np.ones((SIZE, SIZE), bool))
    img[tissue] = rng.normal((200, 110, 170), 18, size=(int(tissue.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def write_audit(tmp: Path, n_slides: int, run_id: str = "run-a", backend: str = "classical") -> Path:
    """A real audit.duckdb (the store's own schema) with one run of pseudo-labels over PNG slides."""
    from PIL import Image

    audit = tmp / "audit.duckdb"
    with AuditStore.open(audit) as store:
        store.begin_run(
            RunRecord(
                run_id=run_id,
                policy_name="default",
                policy_yaml="",
                policy_hash="h",
                tool_version="t",
                command_line="test",
            )
        )
        for k in range(n_slides):
            img, truth = synthetic_slide(k)
            path = tmp / f"slide{k}.png"
            Image.fromarray(img).save(path)
            slide_id = f"s{k}"
            store.begin_slide(SlideRecord(run_id=run_id, slide_id=slide_id, path=str(path)))
            rows = [
                PatchRecord(
                    run_id=run_id,
                    slide_id=slide_id,
                    x=c * SIZE,
                    y=r * SIZE,
                    size=SIZE,
                    label="tissue" if truth[r, c] else "background",
                    # the corner rows were decided by the coarse mask alone: never learnt from
                    source="coarse" if (r, c) == (GRID - 1, GRID - 1) else "zero_shot",
                )
                for r in range(GRID)
                for c in range(GRID)
            ]
            store.record_patches(rows)
            store.record_call(
                CallRecord(
                    run_id=run_id,
                    slide_id=slide_id,
                    stage="classify_patches",
                    role="oracle",
                    backend=backend,
                    model=f"{backend}-v1",
                    request_hash=f"h{k}",
                    ok=True,
                )
            )
            store.finish_slide(run_id, slide_id, status="done")
    return audit


def tiny_cfg(seed: int = 0, epochs: int = 1) -> fit.TrainConfig:
    return fit.TrainConfig(epochs=epochs, batch_size=16, seed=seed, patience=1)


SPEC = StudentSpec(patch_px=32)


# --------------------------------------------------------------------------- split and sampling


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (5, (3, 1, 1)), (10, (7, 1, 2)), (20, (14, 2, 4))],
)
def test_split_is_by_slide_disjoint_and_about_70_10_20(n: int, sizes: tuple[int, int, int]) -> None:
    ids = [f"s{i}" for i in range(n)]
    split = data.split_slides(ids, seed=3)
    assert tuple(len(split[k]) for k in data.SPLITS) == sizes
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)


def test_split_depends_on_seed_only() -> None:
    ids = [f"s{i}" for i in range(10)]
    assert data.split_slides(ids, 1) == data.split_slides(list(reversed(ids)), 1)
    assert any(data.split_slides(ids, 1) != data.split_slides(ids, s) for s in range(2, 6))


def test_sampling_follows_the_data_class_ratio_without_duplicates() -> None:
    slides = [
        data.SlideLabels(
            slide_id=f"s{k}",
            path="-",
            key="k",
            size=SIZE,
            xy=np.zeros((50, 2), np.int64),
            labels=np.r_[np.ones(40), np.zeros(10)].astype(np.int64),
            tissue_prob=np.r_[np.ones(40), np.zeros(10)].astype(np.float32),
        )
        for k in range(2)
    ]
    by_id = {s.slide_id: s for s in slides}
    sample = data.sample_following_data(slides, 50, np.random.default_rng(0), exclude={"s0": np.arange(5)})
    assert sample.count(by_id, 1) == 39 and sample.count(by_id, 0) == 11  # 95 left, 75 tissue: the same ratio
    assert not set(sample.picks["s0"].tolist()) & set(range(5))
    assert all(len(set(i.tolist())) == len(i) for i in sample.picks.values())
    everything = data.sample_following_data(slides, 1000, np.random.default_rng(0), exclude={})
    assert everything.count(by_id, 1) == 80 and everything.count(by_id, 0) == 20  # under the cap: all


def test_too_little_data_is_refused_and_small_splits_warned() -> None:
    small = {"train": {"background": 5, "tissue": 6}, "val": {"background": 1, "tissue": 1}, "test": {}}
    with pytest.raises(StoreError, match=r"too little data.*11 training patches"):
        data.check_enough(small, data.DataFloor(), "r")
    one_class = {"train": {"background": 0, "tissue": 900}, "val": {}, "test": {}}
    with pytest.raises(StoreError, match="of each class"):
        data.check_enough(one_class, data.DataFloor(), "r")
    warnings = data.check_enough(small, data.DataFloor(train_patches=10, per_class=5), "r")
    assert len(warnings) == 2 and "2 val patches" in warnings[0] and "0 test patches" in warnings[1]


def test_temperature_scaling_lowers_nll_and_calibration_error() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    right = rng.random(2000) < 0.8  # 80 % right, but logits claim ~99 %: over-confident
    pred = np.where(right, labels, 1 - labels)
    logits = np.zeros((2000, 2))
    logits[np.arange(2000), pred] = 5.0
    t = fit.fit_temperature(logits, labels)
    assert t > 1.5
    before = fit.expected_calibration_error(fit.softmax(logits), labels)
    after = fit.expected_calibration_error(fit.softmax(logits, t), labels)
    assert before > 0.15 and after < 0.03
    assert fit.nll(logits, labels, t) < fit.nll(logits, labels)
    assert fit.fit_temperature(logits[:0], labels[:0]) == 1.0


def test_hed_jitter_changes_stain_but_keeps_white_glass_white() -> None:
    import torch

    x = torch.ones(4, 3, 8, 8)
    x[:, :, :4] = torch.tensor([0.6, 0.3, 0.5]).view(3, 1, 1)  # stained top half, white bottom half
    out = fit.hed_jitter(x, torch.Generator().manual_seed(0), 0.1)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[:, :, 4:], x[:, :, 4:], atol=1e-3)
    assert not torch.allclose(out[:, :, :4], x[:, :, :4], atol=1e-3)
    assert not torch.allclose(out[0], out[1])  # each image its own stain draw


def test_labels_come_from_oracle_decided_rows_only(tmp_path: Path) -> None:
    audit = write_audit(tmp_path, 2)
    labels = data.load_pseudo_labels(StoreReads.open_read_only(audit))
    assert labels.run_id == "run-a" and labels.coarse_fill == []
    assert [len(s.labels) for s in labels.slides] == [GRID * GRID - 1] * 2
    with pytest.raises(ConfigError, match="run-b"):
        data.load_pseudo_labels(StoreReads.open_read_only(audit), "run-b")
    with pytest.raises(StoreError, match="does not exist"):
        data.load_pseudo_labels(StoreReads.open_read_only(tmp_path / "nope.duckdb"))


@pytest.mark.slow
def test_a_classical_map_run_labels_every_grid_patch_for_distillation(tmp_path: Path) -> None:
    """The default policy's classical whole-slide map (no call rows) is a teacher distil learns from."""
    from typer.testing import CliRunner

    from tissue_oracle.agent.cli import app
    from tissue_oracle.bench.synth.generate import generate_set
    from tissue_oracle.tools.distil import teacher_identity

    (slide,) = generate_set(tmp_path / "slides", preset="tiny", count=1, seed=3)
    out = tmp_path / "teacher"
    done = CliRunner().invoke(app, ["segment", str(slide), "--out", str(out)])
    assert done.exit_code == 0, done.output
    reads = StoreReads.open_read_only(out / "audit.duckdb")
    labels = data.load_pseudo_labels(reads)
    (got,) = labels.slides
    rows, cols = -(-1536 // got.size), -(-2048 // got.size)
    assert len(got.labels) == rows * cols  # every grid patch, not just the gated ones
    assert labels.sources == data.ORACLE_SOURCES and labels.coarse_fill == []
    assert 0 < got.labels.sum() < len(got.labels)
    assert reads.labelling_calls(labels.run_id) == []  # the map makes no calls ...
    teacher = teacher_identity(reads, labels.run_id)  # ... its policy names the labeller
    assert (teacher.kind, teacher.backends, teacher.is_vlm) == ("classical", ["classical"], False)
    assert teacher.models == ["classical-map"]


def test_training_pixels_are_the_student_tiles_and_refuse_off_grid_corners(tmp_path: Path) -> None:
    from tissue_oracle.tools.schemas import PatchGrid, PatchRef
    from tissue_oracle.tools.student_tiles import grid_tiles

    labels = data.load_pseudo_labels(StoreReads.open_read_only(write_audit(tmp_path, 1)))
    (s,) = labels.slides
    idx = np.array([0, 9, 62, 5])
    got = data.read_patches(s, idx, 32, tmp_path / "cache", open_slide)
    with open_slide(s.path) as wsi:
        tiles = grid_tiles(wsi, PatchGrid(slide_width=512, slide_height=512, patch_size=SIZE), 32)
        for j, (x, y) in enumerate(s.xy[idx].tolist()):
            assert np.array_equal(got[j], tiles[(y // SIZE) * GRID + x // SIZE])
            assert np.array_equal(got[j], wsi.read_patch(PatchRef(x=x, y=y, size=SIZE), out_size=32))
    shifted = data.SlideLabels(
        slide_id=s.slide_id,
        path=s.path,
        key=s.key,
        xy=s.xy + 8,
        size=SIZE,
        labels=s.labels,
        tissue_prob=s.tissue_prob,
    )
    with pytest.raises(ConfigError, match="off its 64 px grid"):
        data.read_patches(shifted, idx, 32, tmp_path / "cache", open_slide)


def test_val_comes_from_train_patches_when_no_val_slide(tmp_path: Path) -> None:
    labels = data.load_pseudo_labels(StoreReads.open_read_only(write_audit(tmp_path, 2)))
    split, samples, val_from_train = data.sample_splits(labels, seed=0, max_patches=20)
    assert val_from_train and len(split["train"]) == 1 and len(split["test"]) == 1
    (slide,) = split["train"]
    assert set(samples["val"].picks) == {slide}
    assert not set(samples["val"].picks[slide].tolist()) & set(samples["train"].picks[slide].tolist())


# --------------------------------------------------------------------------- augmentation and training


@pytest.mark.slow
def test_augment_keeps_shape_range_and_pixels_without_jitter() -> None:
    import torch

    x = torch.rand(6, 3, 16, 16)
    out = fit.augment(x, torch.Generator().manual_seed(0), jitter=0.0)
    assert out.shape == x.shape
    for a, b in zip(x, out, strict=True):  # rotations and flips only permute pixels
        assert torch.allclose(a.flatten(1).sort(1).values, b.flatten(1).sort(1).values, atol=1e-6)
    jittered = fit.augment(x, torch.Generator().manual_seed(0), jitter=0.5)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.equal(jittered, out)


@pytest.mark.parametrize(
    ("epochs", "limit", "first", "planned"),
    [(30, 600, 50, 12), (30, 600, 10, 30), (30, 600, 900, 1), (5, 100, 0.0, 5)],
)
def test_a_time_limit_plans_the_epochs_that_fit(
    epochs: int, limit: float, first: float, planned: int
) -> None:
    assert fit.fitting_epochs(epochs, limit, first) == planned


def test_binary_metrics_table() -> None:
    m = fit.binary_metrics(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert (m["precision"], m["recall"], m["f1"], m["iou"]) == (2 / 3, 2 / 3, 2 / 3, 0.5)


@pytest.mark.slow
def test_training_is_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(24, 32, 32, 3), dtype=np.uint8)
    y = np.r_[np.zeros(12), np.ones(12)].astype(np.int64)
    runs = [fit.train(SPEC, tiny_cfg(seed=s), (x, y), (x[:6], y[:6])) for s in (7, 7, 8)]
    a, b, c = (r.state_dict for r in runs)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in runs[:2]]
    assert untimed[0] == untimed[1]
    assert not all(np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)


@pytest.mark.slow
def test_soft_targets_equal_hard_ones_on_sure_labels_and_teach_the_teacher_probability() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, size=(24, 32, 32, 3), dtype=np.uint8)
    y = np.r_[np.zeros(12), np.ones(12)].astype(np.int64)
    soft = fit.TrainConfig(epochs=1, batch_size=16, seed=3, patience=1, soft_targets=True)
    hard = fit.train(SPEC, tiny_cfg(seed=3), (x, y), (x[:6], y[:6])).state_dict
    sure = fit.train(SPEC, soft, (x, y), (x[:6], y[:6]), train_prob=y.astype(np.float32)).state_dict
    assert all(np.allclose(hard[k].numpy(), sure[k].numpy(), atol=1e-6) for k in hard)  # one-hot = hard
    unsure = fit.train(SPEC, soft, (x, y), (x[:6], y[:6]), train_prob=np.full(24, 0.5, np.float32))
    assert not all(np.allclose(hard[k].numpy(), unsure.state_dict[k].numpy(), atol=1e-6) for k in hard)
    with pytest.raises(ValueError, match="one teacher tissue probability per training patch"):
        fit.train(SPEC, soft, (x, y), (x[:6], y[:6]))


def test_tissue_probability_comes_from_the_label_and_its_recorded_confidence(tmp_path: Path) -> None:
    import duckdb

    audit = write_audit(tmp_path, 1)
    with duckdb.connect(str(audit)) as con:  # the classical map records 0.5 + |coverage - 0.5|
        con.execute("UPDATE patches SET confidence = 0.7 WHERE x = 0")
        con.execute("UPDATE patches SET confidence = NULL WHERE x = ?", [SIZE])
        con.execute("UPDATE patches SET confidence = 0.3 WHERE x = ?", [2 * SIZE])
    (s,) = data.load_pseudo_labels(StoreReads.open_read_only(audit)).slides
    first, second, third = (s.xy[:, 0] == k * SIZE for k in range(3))
    rest = s.xy[:, 0] > 2 * SIZE
    assert np.allclose(s.tissue_prob[first], np.where(s.labels[first] == 1, 0.7, 0.3))
    assert np.array_equal(s.tissue_prob[second | rest], s.labels[second | rest].astype(np.float32))
    assert np.allclose(s.tissue_prob[third], 0.5)  # less sure than a coin: undecided, not sure
    sample = data.Sample(picks={s.slide_id: np.array([3, 0, 1])})
    assert np.array_equal(
        data.gather_tissue_prob(
            data.PseudoLabels(run_id="r", slides=[s], sources=(), coarse_fill=[]), sample
        ),
        s.tissue_prob[[3, 0, 1]],
    )


# --------------------------------------------------------------------------- end to end


FLOOR = data.DataFloor(train_patches=10, per_class=2)


@pytest.mark.slow
def test_distil_writes_checkpoint_card_and_cache(tmp_path: Path) -> None:
    audit = write_audit(tmp_path, 4)
    truth = {str(tmp_path / f"slide{k}.png"): synthetic_slide(k)[1] for k in range(4)}

    def lookup(path: str, xy: np.ndarray, size: int) -> np.ndarray:
        return truth[path][xy[:, 1] // size, xy[:, 0] // size].astype(np.int64)

    opened: list[str] = []

    def opener(path: str):  # the real reader, counting opens to prove the cache works
        opened.append(path)
        return open_slide(path)

    out = tmp_path / "student"
    reads = StoreReads.open_read_only(audit)
    result = distil(
        audit,
        out,
        spec=SPEC,
        cfg=tiny_cfg(),
        max_patches=40,
        floor=FLOOR,
        open_slide=opener,
        truth=lookup,
        source=reads,
    )
    card = ModelCard.model_validate(json.loads((out / CARD_NAME).read_text()))
    assert result.checkpoint.is_file() and card.checkpoint == str(result.checkpoint)
    assert card.teacher.kind == "classical" and card.teacher.is_vlm is False
    assert card.teacher.models == ["classical-v1"]
    assert card.spec.patch_size == SIZE and card.spec.patch_px == 32
    assert sum(map(len, card.slides.values())) == 4 and not card.val_from_train
    assert all(sum(split.values()) <= 40 for split in card.counts.values())
    assert card.calibration["temperature"] is not None and card.calibration["temperature"] > 0
    assert {"ece_val_before", "ece_val_after", "ece_test_before", "ece_test_after"} <= set(card.calibration)
    assert round(card.spec.temperature, 4) == card.calibration["temperature"]
    assert card.speed["forward_patches_per_s"] > 0 and card.warnings  # val and test splits are tiny here
    for metrics in (card.metrics_vs_teacher, card.metrics_vs_truth, card.teacher_vs_truth):
        assert metrics is not None and {"f1", "iou", "precision", "recall"} <= set(metrics)
    assert card.teacher_vs_truth is not None and card.teacher_vs_truth["f1"] == 1.0  # teacher = truth here
    assert card.hyper["max_patches"] == 40 and card.hyper["seed"] == 0
    assert opened and list((out / "cache").glob("*.npy"))
    opened.clear()
    again = distil(
        audit,
        tmp_path / "again",
        spec=SPEC,
        cfg=tiny_cfg(),
        max_patches=40,
        floor=FLOOR,
        open_slide=opener,
        cache_dir=out / "cache",
        source=reads,
    )
    assert opened == []  # every patch came from the cache
    assert again.card.metrics_vs_teacher == card.metrics_vs_teacher


@pytest.mark.slow
def test_cli_distils_a_real_audit_file_and_reports_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tissue_oracle.agent.cli import app

    audit = write_audit(tmp_path, 3)
    out = tmp_path / "student"
    args = ["distil", "--audit", str(audit), "--out", str(out), "--epochs", "1", "--patch-px", "32"]
    refused = CliRunner().invoke(app, [*args, "--seed", "1"])  # 189 patches: under the default floor
    assert refused.exit_code == 1 and "too little data" in " ".join(refused.output.split())
    assert not (out / CARD_NAME).exists()
    args += ["--min-patches", "10"]
    result = CliRunner().invoke(app, [*args, "--max-patches", "24", "--seed", "1"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / CARD_NAME).read_text())
    assert card["run_id"] == "run-a" and card["hyper"]["seed"] == 1 and card["spec"]["patch_px"] == 32
    text = " ".join(result.output.split())
    assert "not a VLM" in text and "F1" in text
    warm = CliRunner().invoke(
        app, [*args[:4], str(tmp_path / "warm"), *args[5:], "--init", str(out / "student.pt")]
    )
    assert warm.exit_code == 0, warm.output
    assert json.loads((tmp_path / "warm" / CARD_NAME).read_text())["init"] == str(out / "student.pt")
    missing = CliRunner().invoke(app, ["distil", "--audit", str(tmp_path / "none.duckdb"), "--out", str(out)])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())
