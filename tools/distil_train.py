"""Distillation training: MobileNetV3 on hard pseudo-labels, augmented with torch ops, early-stopped,
then calibrated by temperature scaling on the validation split.

Everything random draws from one seeded ``torch.Generator`` (weights, shuffling, augmentation), so
two runs with the same seed, data and thread count give the same weights. Images arrive as RGB
uint8 ``(N, px, px, 3)``; labels as int64 with 1 = tissue.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from tissue_oracle.tools.schemas import StudentSpec


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """Hyper-parameters of one distillation (all recorded in the model card)."""

    epochs: int = 10
    """Upper bound on passes over the training patches."""
    batch_size: int = 32
    lr: float = 3e-4
    """AdamW learning rate, cosine-decayed to zero over ``epochs`` (1e-3 diverged on small sets)."""
    weight_decay: float = 1e-4
    clip_norm: float = 5.0
    """Gradient norm clip: a few bad batches of a small set must not blow the weights up."""
    patience: int = 3
    """Stop after this many epochs without a lower validation loss."""
    seed: int = 0
    device: str = "cpu"
    jitter: float = 0.2
    """Colour jitter strength: brightness, contrast and saturation factors in ``1 ± jitter``."""
    stain_jitter: float = 0.05
    """HED stain jitter (Tellez et al. 2018): each stain channel's optical density is scaled by
    ``1 ± stain_jitter`` and shifted by ``± stain_jitter``, covering stain strength and hue drift."""
    threads: int = 1
    """torch CPU threads. One by default: on a shared 2-core machine under load, two threads ran
    mobilenetv3_large_100 at 4 patches/s forward against 32 with one (measured on this machine)."""
    soft_targets: bool = False
    """Train on the teacher's tissue probability (``distil_data.SlideLabels.tissue_prob``) instead of
    its hard label: cross-entropy against ``(1 - p, p)``. For the classical map ``p`` is the patch's
    tissue coverage, so a patch at 0.52 teaches "barely tissue", not "tissue" as firmly as a patch
    inside the tissue. Validation, early stopping and calibration stay on the hard labels."""
    time_limit_s: float | None = None
    """Seconds of training (None: no limit). After the first epoch, the epochs that fit at its pace
    are planned and the cosine schedule ends on the last of them (``fitting_epochs``); training also
    stops after any epoch that passes the limit."""


@dataclass(kw_only=True)
class TrainResult:
    state_dict: dict[str, Any] = field(repr=False)
    """Weights of the epoch with the lowest validation loss."""
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    """Per epoch: train_loss, val_loss, val_f1, seconds."""
    stopped_by: str = "epochs"
    """``epochs``, ``patience`` or ``time_limit``."""


def build_model(spec: StudentSpec, init: dict[str, Any] | None = None) -> Any:
    """The student network with random weights (never downloaded), or ``init``'s weights."""
    import timm

    model = timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes)
    if init is not None:
        model.load_state_dict(init)
    return model


#: Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001, as in skimage.color).
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def hed_jitter(x: Any, gen: Any, sigma: float) -> Any:
    """Stain augmentation of a float batch ``(N, 3, H, W)`` in [0, 1]: per image, each HED channel's
    optical density becomes ``alpha * od + beta`` with ``alpha`` in ``1 ± sigma`` and ``beta`` in ``±sigma``.

    Background (optical density near 0) stays near white, so a blank patch does not turn into stain.
    """
    import torch

    if sigma <= 0:
        return x
    n = x.shape[0]
    rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=x.dtype)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    od = -torch.log(x.clamp(min=1e-3)).permute(0, 2, 3, 1)  # (N, H, W, 3)
    hed = od @ hed_from_rgb
    alpha = 1.0 + (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * sigma
    beta = (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * sigma
    od2 = ((hed * alpha + beta * (hed.abs() > 0.02)) @ rgb_from_hed).clamp(min=0.0)
    return torch.exp(-od2).permute(0, 3, 1, 2).contiguous()


def augment(x: Any, gen: Any, jitter: float, stain_jitter: float = 0.0) -> Any:
    """Label-preserving augmentation of a float batch ``(N, 3, H, W)`` in [0, 1] (square patches).

    Random 90° rotation, horizontal and vertical flips, HED stain jitter (``hed_jitter``) and colour
    jitter (brightness, contrast, saturation). Tissue stays tissue under all of them, so labels are
    untouched.
    """
    import torch

    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        xi = torch.rot90(x[i], int(k[i]), dims=(1, 2))
        if flip_h[i]:
            xi = xi.flip(2)
        if flip_v[i]:
            xi = xi.flip(1)
        out[i] = xi
    out = hed_jitter(out, gen, stain_jitter)
    factors = 1.0 + (torch.rand(n, 3, 1, 1, 1, generator=gen) * 2 - 1) * jitter
    bright, contrast, sat = factors[:, 0], factors[:, 1], factors[:, 2]
    out = out * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3]).expand_as(out)
    out = (out - grey) * sat + grey
    return out.clamp(0.0, 1.0)


def _normalise(x01: Any, spec: StudentSpec) -> Any:
    import torch

    mean = torch.tensor(spec.mean, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


def predict_logits(
    model: Any, images: np.ndarray, spec: StudentSpec, device: str, batch_size: int = 128
) -> np.ndarray:
    """Raw logits ``(N, 2)`` for RGB uint8 ``(N, px, px, 3)`` (model in eval mode)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(spec.to_input(images[i : i + batch_size])).to(device)
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, spec.num_classes), np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def predict(
    model: Any, images: np.ndarray, spec: StudentSpec, device: str, batch_size: int = 128
) -> np.ndarray:
    """Softmax probabilities ``(N, 2)`` at the spec's temperature (model in eval mode)."""
    return softmax(predict_logits(model, images, spec, device, batch_size), spec.temperature)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    probs = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(probs, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL (Guo et al. 2017), by search over log T in [-3, 3].

    1.0 (no change) when there is no validation data or only one class in it.
    """
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return 1.0
    grid = np.exp(np.linspace(-3.0, 3.0, 121))
    best = float(grid[int(np.argmin([nll(logits, labels, t) for t in grid]))])
    fine = best * np.exp(np.linspace(-0.05, 0.05, 21))
    return float(fine[int(np.argmin([nll(logits, labels, t) for t in fine]))])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the patch-weighted mean gap between confidence and accuracy over ``bins`` equal-width bins."""
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(float(right[members].mean()) - float(conf[members].mean()))
    return total / len(labels)


def binary_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Precision, recall, F1 (= Dice) and IoU with tissue (1) as the positive class."""
    p, t = pred.astype(bool), truth.astype(bool)
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return {"f1": f1, "iou": iou, "precision": precision, "recall": recall, "n": len(t), "tp": tp}


def train(
    spec: StudentSpec,
    cfg: TrainConfig,
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    init: dict[str, Any] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    train_prob: np.ndarray | None = None,
) -> TrainResult:
    """Fit the student; ``on_step(epoch, n_images, loss)`` reports progress after every batch.

    With ``cfg.soft_targets`` the loss uses ``train_prob`` (the teacher's tissue probability per
    training patch, in ``train_xy``'s order) in place of the hard labels.
    """
    import torch

    torch.manual_seed(cfg.seed)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(spec, init).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    images = torch.from_numpy(train_xy[0]).permute(0, 3, 1, 2)
    labels = torch.from_numpy(train_xy[1])
    if cfg.soft_targets:
        if train_prob is None or len(train_prob) != len(labels):
            raise ValueError("soft targets need one teacher tissue probability per training patch")
        p = torch.from_numpy(np.asarray(train_prob, np.float32))
        labels = torch.stack([1.0 - p, p], dim=1)  # class-probability targets for cross_entropy
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = []
    stopped_by = "epochs"
    started = time.perf_counter()
    planned = cfg.epochs
    for epoch in range(1, cfg.epochs + 1):
        report = partial(_call, on_step, epoch)
        loss = _epoch(model, opt, images, labels, spec, cfg, gen, report)
        seconds = round(time.perf_counter() - started, 1)
        if epoch == 1 and cfg.time_limit_s is not None:
            planned = fitting_epochs(cfg.epochs, cfg.time_limit_s, seconds)
            sched.T_max = planned  # the cosine reaches zero by the last epoch that fits the limit
        sched.step()
        val_loss, val_f1 = _validate(model, val_xy, spec, cfg.device)
        seconds = round(time.perf_counter() - started, 1)
        history.append(
            {"epoch": epoch, "train_loss": loss, "val_loss": val_loss, "val_f1": val_f1, "seconds": seconds}
        )
        if len(val_xy[1]) == 0 or val_loss < best[0]:  # no validation data: keep the latest
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            stopped_by = "patience"
            break
        if epoch < cfg.epochs and (
            epoch >= planned or (cfg.time_limit_s is not None and seconds >= cfg.time_limit_s)
        ):
            stopped_by = "time_limit"
            break
    return TrainResult(
        state_dict=best[2],
        best_epoch=best[1],
        epochs_run=len(history),
        history=history,
        stopped_by=stopped_by,
    )


def fitting_epochs(epochs: int, time_limit_s: float, first_epoch_s: float) -> int:
    """Epochs (at most ``epochs``, at least 1) that fit ``time_limit_s`` at the first epoch's pace.

    The cosine schedule is stretched over these, so a run stopped by its time limit still ends
    on a decayed learning rate instead of being cut off at full rate.
    """
    return max(1, min(epochs, int(time_limit_s / max(first_epoch_s, 1e-6))))


def _call(on_step: Callable[[int, int, float], None] | None, epoch: int, n: int, loss: float) -> None:
    if on_step is not None:
        on_step(epoch, n, loss)


def _epoch(
    model: Any,
    opt: Any,
    images: Any,
    labels: Any,
    spec: StudentSpec,
    cfg: TrainConfig,
    gen: Any,
    on_batch: Callable[[int, float], None],
) -> float:
    import torch
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(len(labels), generator=gen)
    total, seen = 0.0, 0
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i : i + cfg.batch_size]
        if len(idx) < max(2, cfg.batch_size // 2) < len(order):  # tiny tail batch: noisy BN statistics
            continue
        x = augment(images[idx].float() / 255.0, gen, cfg.jitter, cfg.stain_jitter)
        x = _normalise(x, spec).to(cfg.device)
        loss = F.cross_entropy(model(x), labels[idx].to(cfg.device))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        value = float(loss.detach())
        total += value * len(idx)
        seen += len(idx)
        on_batch(len(idx), value)
    return total / max(1, seen)


def _validate(
    model: Any, val_xy: tuple[np.ndarray, np.ndarray], spec: StudentSpec, device: str
) -> tuple[float, float]:
    images, labels = val_xy
    if len(labels) == 0:
        return 0.0, float("nan")
    logits = predict_logits(model, images, spec, device)
    return nll(logits, labels), float(binary_metrics(logits.argmax(1), labels)["f1"])
