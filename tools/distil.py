"""Stage 8, distil: turn one run's pseudo-labels into a small, fast student (MobileNetV3-Large-100).

``distil(audit, out, ...)`` reads the labels (``distil_data``), refuses when there are too few
(``DataFloor``), trains (``distil_train``), fits a temperature on the validation split (the card
gives the calibration error before and after), scores the student on the held-out test slides
against the teacher's labels (and against ground truth when a ``truth`` lookup is given), times
its forward pass, and writes two files into ``out``:

- ``student.pt``: ``{"format", "spec" (StudentSpec), "state_dict"}``, loadable by ``student:PATH``;
- ``model_card.json``: a ``ModelCard`` (data seen, hyper-parameters, teacher identity, metrics).

The teacher is named as it was recorded: a classical or simulated teacher is never called a VLM.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from tissue_oracle.tools import distil_data as data
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.errors import ConfigError, StoreError
from tissue_oracle.tools.oracle_protocol import VLM_BACKENDS
from tissue_oracle.tools.schemas import STUDENT_CHECKPOINT_FORMAT, StudentSpec

CHECKPOINT_NAME = "student.pt"
CARD_NAME = "model_card.json"
#: Backends whose answers come from a real vision-language model.

TruthLookup = Callable[[str, np.ndarray, int], np.ndarray | None]
"""``(slide path, level0 xy (N, 2), patch size) -> truth labels (N,) with 1 = tissue``, or None."""
Progress = Callable[[str, int, int], None]
"""``(phase, advance, total)``: ``read`` counts patches read, ``train`` counts images seen."""


class Teacher(BaseModel):
    """Who produced the pseudo-labels, as the store recorded it."""

    backends: list[str]
    models: list[str]
    is_vlm: bool
    """True only when every labelling call came from a real VLM backend."""
    kind: str
    """``vlm``, ``classical``, ``simulated``, ``mixed`` or the backend name."""


class ModelCard(BaseModel):
    """Everything worth knowing about one student, written as ``model_card.json``."""

    created_at: datetime = Field(default_factory=datetime.now)
    checkpoint: str
    spec: StudentSpec
    audit: str
    run_id: str
    teacher: Teacher
    label_sources: list[str]
    coarse_fill: list[str]
    slides: dict[str, list[str]]
    """Slide ids per split (train/val/test); the split is by slide, never by patch."""
    counts: dict[str, dict[str, int]]
    """Patches per split per class (``background``/``tissue``) actually used."""
    val_from_train: bool
    """True when too few slides left none for validation, so train patches were held out."""
    hyper: dict[str, Any]
    init: str | None
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    stopped_by: str = "epochs"
    train_seconds: float
    calibration: dict[str, float | int | None] = Field(default_factory=dict)
    """``temperature`` fitted on val; ``ece_val``/``ece_test`` ``_before`` and ``_after`` (10 bins)."""
    speed: dict[str, float | int | str] = Field(default_factory=dict)
    """Forward-pass patches/s on this machine (the end-to-end figure is ``bench.perf.student_bench``'s)."""
    warnings: list[str] = Field(default_factory=list)
    """Small splits and anything else a reader of the figures should know."""
    metrics_vs_teacher: dict[str, float | int] | None
    """Test-slide precision/recall/F1/IoU against the teacher's labels (None without test slides)."""
    metrics_vs_truth: dict[str, float | int] | None
    """The same against ground truth on test slides that have it (None when none has)."""
    teacher_vs_truth: dict[str, float | int] | None
    """The teacher's own scores against truth on the same test patches, for comparison."""
    platform: str = Field(default_factory=platform.platform)


@dataclass(kw_only=True, frozen=True)
class DistilResult:
    checkpoint: Path
    card_path: Path
    card: ModelCard


#: The model name a card gives the classical whole-slide map (``classify.classical_map``), which
#: labels every grid patch without a call row.
CLASSICAL_MAP_MODEL = "classical-map"


def teacher_identity(source: data.LabelSource, run_id: str) -> Teacher:
    """The backends and models whose patch-label calls produced this run's labels.

    A run labelled by the classical whole-slide map (``classify.classical_map`` with the classical
    oracle classifying) makes no patch-label calls; its policy says who labelled it.
    """
    rows = source.labelling_calls(run_id) or _map_labeller(source.run_policy_yaml(run_id))
    backends = sorted({str(r[0]) for r in rows})
    is_vlm = bool(backends) and all(b in VLM_BACKENDS for b in backends)
    if is_vlm:
        kind = "vlm"
    elif len(backends) == 1:
        kind = backends[0]
    else:
        kind = "mixed" if backends else "unknown"
    return Teacher(backends=backends, models=sorted({str(r[1]) for r in rows}), is_vlm=is_vlm, kind=kind)


def _map_labeller(policy_yaml: str | None) -> list[tuple[str, str]]:
    """``[("classical", CLASSICAL_MAP_MODEL)]`` when the run's policy let the classical map label it."""
    import yaml

    policy = yaml.safe_load(policy_yaml or "") or {}
    roles = policy.get("roles") or {}
    classifier = roles.get("classifier") or roles.get("oracle")
    if (policy.get("classify") or {}).get("classical_map", False) and classifier == "classical":
        return [("classical", CLASSICAL_MAP_MODEL)]
    return []


def load_init(path: Path) -> dict[str, Any]:
    """Weights from a local checkpoint: a student.pt, or a bare state dict."""
    import torch

    if not path.is_file():
        raise ConfigError(f"--init checkpoint {str(path)!r} does not exist; pass a local .pt file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return dict(obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj)


def distil(
    audit: Path,
    out: Path,
    *,
    run_id: str | None = None,
    spec: StudentSpec | None = None,
    cfg: fit.TrainConfig | None = None,
    max_patches: int = 20000,
    floor: data.DataFloor | None = None,
    init: Path | None = None,
    open_slide: data.SlideOpener | None = None,
    truth: TruthLookup | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    source: data.LabelSource,
) -> DistilResult:
    """Distil the run's pseudo-labels into ``out/student.pt`` and ``out/model_card.json``.

    ``source`` reads the store's labels (``store.reads.StoreReads`` over ``AuditStore.query`` when
    the caller holds the store open, or ``StoreReads.open_read_only(audit)``); ``audit`` names it.
    """
    cfg = cfg or fit.TrainConfig()
    labels = data.load_pseudo_labels(source, run_id)
    if not labels.slides:
        raise StoreError(
            f"run {labels.run_id!r} in {str(audit)!r} has no oracle-decided patch labels to learn"
        )
    size = labels.slides[0].size
    spec = (spec or StudentSpec()).model_copy(update={"patch_size": size})
    split, samples, val_from_train = data.sample_splits(labels, cfg.seed, max_patches)
    slides = by_slide(labels)
    planned: dict[str, dict[str, int]] = {
        k: {c: samples[k].count(slides, i) for i, c in enumerate(data.CLASSES)} for k in data.SPLITS
    }
    warnings = data.check_enough(planned, floor or data.DataFloor(), labels.run_id)
    opener = open_slide or _default_opener()
    cache = cache_dir or out / "cache"
    arrays = {}
    total = sum(len(i) for s in samples.values() for i in s.picks.values())
    for name in data.SPLITS:
        tick = None if progress is None else (lambda n: progress("read", n, total))
        arrays[name] = data.gather(labels, samples[name], spec.patch_px, cache, opener, tick)
    steps = cfg.epochs * len(arrays["train"][1])
    on_step = None if progress is None else (lambda _e, n, _loss: progress("train", n, steps))
    started = time.perf_counter()
    result = fit.train(
        spec,
        cfg,
        arrays["train"][:2],
        arrays["val"][:2],
        init=load_init(init) if init else None,
        on_step=on_step,
        train_prob=data.gather_tissue_prob(labels, samples["train"]) if cfg.soft_targets else None,
    )
    seconds = time.perf_counter() - started
    model = fit.build_model(spec, result.state_dict).to(cfg.device)
    calibration, spec = _calibrate(model, spec, cfg.device, arrays["val"][:2], arrays["test"][:2])
    metrics = _score(model, spec, cfg.device, labels, samples["test"], arrays["test"], truth)
    speed = _forward_speed(
        model, spec, cfg.device, arrays["test"][0] if len(arrays["test"][0]) else arrays["val"][0]
    )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    save_checkpoint(checkpoint, spec, result.state_dict)
    card = ModelCard(
        checkpoint=str(checkpoint),
        spec=spec,
        audit=str(audit),
        run_id=labels.run_id,
        teacher=teacher_identity(source, labels.run_id),
        label_sources=list(labels.sources),
        coarse_fill=labels.coarse_fill,
        slides={k: list(v) for k, v in split.items()},
        counts={k: _counts(arrays[k][1]) for k in data.SPLITS},
        val_from_train=val_from_train,
        hyper={**asdict(cfg), "max_patches": max_patches, "optimiser": "AdamW", "schedule": "cosine"},
        init=None if init is None else str(init),
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        history=result.history,
        stopped_by=result.stopped_by,
        train_seconds=round(seconds, 2),
        calibration=calibration,
        speed=speed,
        warnings=warnings,
        **metrics,
    )
    card_path = out / CARD_NAME
    card_path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return DistilResult(checkpoint=checkpoint, card_path=card_path, card=card)


def _default_opener() -> data.SlideOpener:
    from tissue_oracle.tools.slides import open_slide

    return open_slide


def _counts(y: np.ndarray) -> dict[str, int]:
    return {name: int((y == k).sum()) for k, name in enumerate(data.CLASSES)}


def save_checkpoint(path: Path, spec: StudentSpec, state_dict: dict[str, Any]) -> None:
    """Write a ``student.pt`` that ``student:PATH`` loads."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": STUDENT_CHECKPOINT_FORMAT, "spec": spec.model_dump(mode="json"), "state_dict": state_dict},
        path,
    )


def by_slide(labels: data.PseudoLabels) -> dict[str, data.SlideLabels]:
    return {s.slide_id: s for s in labels.slides}


def _calibrate(
    model: Any,
    spec: StudentSpec,
    device: str,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> tuple[dict[str, float | int | None], StudentSpec]:
    """Temperature scaling on the validation split; ECE of val and test before and after."""
    raw = spec.model_copy(update={"temperature": 1.0})
    val_logits = fit.predict_logits(model, val[0], raw, device)
    temperature = fit.fit_temperature(val_logits, val[1])
    out: dict[str, float | int | None] = {"temperature": round(temperature, 4), "bins": 10}
    for name, (images, y) in (("val", val), ("test", test)):
        logits = val_logits if name == "val" else fit.predict_logits(model, images, raw, device)
        for when, t in (("before", 1.0), ("after", temperature)):
            ece = fit.expected_calibration_error(fit.softmax(logits, t), y) if len(y) else None
            out[f"ece_{name}_{when}"] = None if ece is None else round(ece, 4)
        out[f"n_{name}"] = len(y)
    return out, spec.model_copy(update={"temperature": temperature})


def _forward_speed(
    model: Any, spec: StudentSpec, device: str, images: np.ndarray
) -> dict[str, float | int | str]:
    """Patches/s of the forward pass alone, batches of 64, on the images given (no reads)."""
    import torch

    if len(images) == 0:
        return {}
    batch = np.resize(images, (max(256, len(images[:512])), *images.shape[1:]))[:512]
    fit.predict_logits(model, batch[:64], spec, device, batch_size=64)  # warm-up
    started = time.perf_counter()
    fit.predict_logits(model, batch, spec, device, batch_size=64)
    pps = len(batch) / (time.perf_counter() - started)
    return {
        "forward_patches_per_s": round(pps, 1),
        "patches": len(batch),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "what": "model forward only, batches of 64, at distil time; end to end: bench.perf.student_bench",
    }


def _score(
    model: Any,
    spec: StudentSpec,
    device: str,
    labels: data.PseudoLabels,
    sample: data.Sample,
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    truth: TruthLookup | None,
) -> dict[str, dict[str, float | int] | None]:
    """Test-slide metrics of the student vs the teacher, and of both vs truth where it exists."""
    images, teacher_y, owner = test
    none: dict[str, dict[str, float | int] | None] = {
        "metrics_vs_teacher": None,
        "metrics_vs_truth": None,
        "teacher_vs_truth": None,
    }
    if len(teacher_y) == 0:
        return none
    pred = fit.predict_logits(model, images, spec, device).argmax(1)
    out = dict(none, metrics_vs_teacher=fit.binary_metrics(pred, teacher_y))
    if truth is None:
        return out
    slides = by_slide(labels)
    keep, truth_y = [], []
    for k, (slide_id, idx) in enumerate(sample.picks.items()):
        s = slides[slide_id]
        t = truth(s.path, s.xy[idx], s.size)
        if t is not None:
            keep.append(np.flatnonzero(owner == k))
            truth_y.append(np.asarray(t, np.int64))
    if keep:
        rows, ty = np.concatenate(keep), np.concatenate(truth_y)
        out["metrics_vs_truth"] = fit.binary_metrics(pred[rows], ty)
        out["teacher_vs_truth"] = fit.binary_metrics(teacher_y[rows], ty)
    return out
