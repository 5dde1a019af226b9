"""Distillation data: pseudo-labels from the audit store, split by slide, capped per class, cached.

The labels come from the store's ``patches`` table (one row per patch, level-0 ``x, y, size``),
read through a ``LabelSource`` (``store.reads.StoreReads``).
By default only labels an oracle call decided (``zero_shot``, ``few_shot``) or that ``clean``
corrected are used: ``coarse`` rows were decided by the colour mask alone (outside the 5% gate, or
budget ran out) and ``student``/``cascade`` rows would teach a student its own mistakes. When a
class has no oracle-decided row at all, ``coarse`` rows fill that class (the card says so).

Patch pixels come from ``tools.student_tiles``, the one reader of a student's pixels: the slide
is read in bands of grid rows at ``patch_size / patch_px`` downsample (the best pyramid level) and
cut along the grid, exactly as the dense student path serves them at inference. They are cached on
disk as ``.npy`` files keyed by slide identity + coordinates + sizes + that reader's version, so
epochs and re-runs never re-read slides and pixels made another way are never reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from tissue_oracle.tools.errors import ConfigError, SlideError, StoreError
from tissue_oracle.tools.schemas import PatchGrid
from tissue_oracle.tools.student_tiles import band_rows, read_tile_rows

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
#: Label sources a student learns from by default (see the module docstring for why).
ORACLE_SOURCES: tuple[str, ...] = ("zero_shot", "few_shot", "clean")
CLASSES: tuple[str, str] = ("background", "tissue")

SlideOpener = Callable[[str], Any]
"""``path -> Slide`` (``tools.slide_base.Slide``: ``dimensions`` and ``read_box``)."""
#: Names how cached pixels were made; part of the cache key (per-patch reads came before it).
PIXELS = "student_tiles/1"


@dataclass(kw_only=True, frozen=True)
class SlideLabels:
    """Every usable pseudo-label of one slide, in the level-0 frame."""

    slide_id: str
    """The slide's id in the store."""
    path: str
    """Where the slide file is."""
    key: str
    """Stable identity for the patch cache (file hash when the store has one)."""
    xy: np.ndarray = field(repr=False)
    """``(N, 2)`` int64 level-0 top-left corners."""
    size: int
    """Patch side in level-0 pixels."""
    labels: np.ndarray = field(repr=False)
    """``(N,)`` int64, 1 = tissue, 0 = background."""
    tissue_prob: np.ndarray = field(repr=False)
    """``(N,)`` float32: the teacher's probability of tissue, from the label and the confidence it
    recorded (``confidence`` when it said tissue, ``1 - confidence`` when background). For the
    classical map that is the patch's tissue coverage (its confidence is ``0.5 + |coverage - 0.5|``),
    so soft targets carry how far a patch is from the half-patch rule."""


@dataclass(kw_only=True, frozen=True)
class PseudoLabels:
    """What one teacher run left in the store for distillation."""

    run_id: str
    slides: list[SlideLabels]
    sources: tuple[str, ...]
    """Label sources actually used."""
    coarse_fill: list[str]
    """Classes that had no oracle-decided label and were filled from ``coarse`` rows."""


class LabelSource(Protocol):
    """The store's reads distillation needs (``store.reads.StoreReads`` is the one); no SQL here."""

    def labelling_calls(self, run_id: str) -> list[tuple[str, str]]:
        """Distinct (backend, model) of the run's successful patch-label calls."""
        ...

    def run_policy_yaml(self, run_id: str) -> str | None:
        """The policy YAML the run recorded (roles folded in), or None."""
        ...

    def patch_label_rows(self, run_id: str | None = None) -> tuple[str, list[tuple[Any, ...]]]:
        """The run (``run_id``, else the latest with labels) and its
        ``(slide_id, path, file_hash, x, y, size, label, source, confidence)`` rows, by slide, y, x."""
        ...


def load_pseudo_labels(source: LabelSource, run_id: str | None = None) -> PseudoLabels:
    """One run's usable patch labels and slide paths, grouped by slide."""
    run, rows = source.patch_label_rows(run_id)
    return _group(run, rows)


def _group(run: str, rows: list[tuple[Any, ...]]) -> PseudoLabels:
    sources = list(ORACLE_SOURCES)
    coarse_fill = [c for c in CLASSES if not any(r[6] == c and r[7] in ORACLE_SOURCES for r in rows)]
    keep = [r for r in rows if r[7] in ORACLE_SOURCES or (r[7] == "coarse" and r[6] in coarse_fill)]
    if coarse_fill:
        sources.append("coarse")
    by_slide: dict[str, list[tuple[Any, ...]]] = {}
    for r in keep:
        by_slide.setdefault(str(r[0]), []).append(r)
    slides = []
    for slide_id, rs in sorted(by_slide.items()):
        sizes = {int(r[5]) for r in rs}
        if len(sizes) != 1:
            raise ConfigError(
                f"slide {slide_id!r} mixes patch sizes {sorted(sizes)}; distil one grid at a time"
            )
        path, file_hash = str(rs[0][1]), rs[0][2]
        slides.append(
            SlideLabels(
                slide_id=slide_id,
                path=path,
                key=str(file_hash) if file_hash else _path_key(path),
                xy=np.asarray([(int(r[3]), int(r[4])) for r in rs], dtype=np.int64),
                size=sizes.pop(),
                labels=np.asarray([1 if r[6] == "tissue" else 0 for r in rs], dtype=np.int64),
                tissue_prob=np.asarray([_tissue_prob(r[6], r[8]) for r in rs], dtype=np.float32),
            )
        )
    return PseudoLabels(run_id=run, slides=slides, sources=tuple(sources), coarse_fill=coarse_fill)


def _tissue_prob(label: str, confidence: float | None) -> float:
    """The teacher's probability of tissue. No recorded confidence counts as sure; one under 0.5
    (an answer less sure of its label than of the other) counts as undecided, 0.5, not as sure."""
    conf = 1.0 if confidence is None else min(1.0, max(0.5, float(confidence)))
    return conf if label == "tissue" else 1.0 - conf


def _path_key(path: str) -> str:
    """Identity of a slide file without hashing gigabytes: path, size and modification time."""
    p = Path(path)
    stat = f"{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.exists() else "missing"
    return hashlib.sha256(f"{p.resolve()}|{stat}".encode()).hexdigest()


# --------------------------------------------------------------------------- split and sampling


def split_slides(slide_ids: Sequence[str], seed: int) -> dict[Split, list[str]]:
    """Assign whole slides to train/val/test, about 70/10/20, deterministically from ``seed``.

    With fewer than 3 slides some splits are empty: 1 slide is all train; 2 slides give one train
    and one test slide. The caller then validates on held-out train patches (see ``sample_splits``).
    """
    ids = sorted(set(slide_ids))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(order)
    if n == 1:
        n_test, n_val = 0, 0
    elif n == 2:
        n_test, n_val = 1, 0
    else:
        n_test = max(1, round(0.2 * n))
        n_val = max(1, round(0.1 * n))
    n_train = n - n_test - n_val
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


@dataclass(kw_only=True, frozen=True)
class Sample:
    """Patches chosen for one split: indices into each slide's ``SlideLabels`` arrays."""

    picks: dict[str, np.ndarray]
    """slide_id -> sorted indices of the chosen patches."""

    def count(self, slides: dict[str, SlideLabels], label: int) -> int:
        return int(sum((slides[s].labels[i] == label).sum() for s, i in self.picks.items()))


def sample_following_data(
    slides: list[SlideLabels], max_patches: int, rng: np.random.Generator, exclude: dict[str, np.ndarray]
) -> Sample:
    """Uniformly sample at most ``max_patches`` patches over ``slides``, keeping the data's class ratio.

    The classes are sampled in proportion to how often the teacher gave them (stratified, so the
    ratio holds exactly up to rounding); forcing 50/50 would teach the student a prior the slides
    don't have and move its decision boundary off the teacher's.
    """
    pool: list[tuple[str, int, int]] = []
    for s in slides:
        skip = set(exclude.get(s.slide_id, np.empty(0, np.int64)).tolist())
        pool += [(s.slide_id, i, int(s.labels[i])) for i in range(len(s.labels)) if i not in skip]
    picks: dict[str, list[int]] = {}
    total = len(pool)
    for label in (0, 1):
        members = [p for p in pool if p[2] == label]
        quota = len(members) if total <= max_patches else round(max_patches * len(members) / total)
        for j in rng.permutation(len(members))[:quota]:
            picks.setdefault(members[j][0], []).append(members[j][1])
    return Sample(picks={s: np.asarray(sorted(i), np.int64) for s, i in sorted(picks.items())})


def sample_splits(
    labels: PseudoLabels, seed: int, max_patches: int, val_fraction: float = 0.1
) -> tuple[dict[Split, list[str]], dict[Split, Sample], bool]:
    """Split by slide and cap each split at ``max_patches``; returns (slides per split, samples,
    val_from_train).

    When no slide is left for validation, ``val_fraction`` of the train slides' patches are held
    out for early stopping and calibration, and ``val_from_train`` is True (the model card says so).
    """
    by_id = {s.slide_id: s for s in labels.slides}
    split = split_slides(list(by_id), seed)
    rng = np.random.default_rng(seed)
    samples: dict[Split, Sample] = {}
    val_from_train = not split["val"]
    held: dict[str, np.ndarray] = {}
    if val_from_train:
        train_slides = [by_id[s] for s in split["train"]]
        available = sum(len(s.labels) for s in train_slides)
        n_val = max(1, int(val_fraction * min(max_patches, available)))
        samples["val"] = sample_following_data(train_slides, n_val, rng, exclude={})
        held = samples["val"].picks
    else:
        samples["val"] = sample_following_data([by_id[s] for s in split["val"]], max_patches, rng, exclude={})
    samples["train"] = sample_following_data(
        [by_id[s] for s in split["train"]], max_patches, rng, exclude=held
    )
    samples["test"] = sample_following_data([by_id[s] for s in split["test"]], max_patches, rng, exclude={})
    return split, samples, val_from_train


@dataclass(kw_only=True, frozen=True)
class DataFloor:
    """The least data a student is trained on; below it ``check_enough`` refuses."""

    train_patches: int = 300
    """Training patches in all (the ``tiny`` preset gives about 40: F1 0.000 on its test set)."""
    per_class: int = 30
    """Training patches of each class."""


#: Below these, a split's figures are reported with a warning (not refused).
SMALL_VAL, SMALL_TEST = 50, 100


def check_enough(counts: Mapping[str, Mapping[str, int]], floor: DataFloor, run_id: str) -> list[str]:
    """Refuse (``StoreError``) when the train split is under ``floor``; warnings for small val/test."""
    train = counts["train"]
    n = sum(train.values())
    if n < floor.train_patches or min(train.get(c, 0) for c in CLASSES) < floor.per_class:
        raise StoreError(
            f"too little data to train a student: run {run_id!r} gives {n} training patches "
            f"({', '.join(f'{k} {v}' for k, v in train.items())}); at least {floor.train_patches} "
            f"and {floor.per_class} of each class are needed. Segment more slides with the teacher "
            "(or a larger patch grid), or lower the floor with --min-patches if you accept a weak student"
        )
    warnings = []
    for name, small in (("val", SMALL_VAL), ("test", SMALL_TEST)):
        k = sum(counts[name].values())
        if k < small:
            warnings.append(f"only {k} {name} patches: its figures are noisy (fewer than {small})")
    return warnings


# --------------------------------------------------------------------------- pixels, cached


def _cache_file(cache_dir: Path, slide: SlideLabels, xy: np.ndarray, patch_px: int) -> Path:
    h = hashlib.sha256()
    h.update(f"{PIXELS}|{slide.key}|{slide.size}|{patch_px}|".encode())
    h.update(np.ascontiguousarray(xy, dtype=np.int64).tobytes())
    return cache_dir / f"{slide.key[:16]}-{h.hexdigest()[:24]}.npy"


def read_patches(
    slide: SlideLabels, idx: np.ndarray, patch_px: int, cache_dir: Path, open_slide: SlideOpener
) -> np.ndarray:
    """RGB uint8 ``(len(idx), patch_px, patch_px, 3)`` for the chosen patches of one slide, cached."""
    xy = slide.xy[idx]
    cached = _cache_file(cache_dir, slide, xy, patch_px)
    if cached.is_file():
        return np.load(cached)
    if len(xy) and (xy % slide.size).any():
        raise ConfigError(
            f"slide {slide.slide_id!r} has patch corners off its {slide.size} px grid; "
            "distil learns grid patches only"
        )
    try:
        with open_slide(slide.path) as wsi:
            out = grid_cells(wsi, slide.size, xy // slide.size, patch_px)
    except SlideError:
        raise
    except OSError as exc:
        raise SlideError(
            slide.path, f"cannot read patches for distillation ({exc})", "Check the file"
        ) from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(cached)
    return out


def grid_cells(wsi: Any, patch_size: int, cells: np.ndarray, patch_px: int) -> np.ndarray:
    """Tiles of the grid cells ``cells`` (``(N, 2)`` column, row), in their order, from banded reads
    (``tools.student_tiles``) of only the bands that hold one of them."""
    width, height = wsi.dimensions
    grid = PatchGrid(slide_width=width, slide_height=height, patch_size=patch_size)
    out = np.empty((len(cells), patch_px, patch_px, 3), np.uint8)
    step = band_rows(grid, patch_px)
    for first in range(0, grid.rows, step):
        stop = min(grid.rows, first + step)
        inside = np.flatnonzero((cells[:, 1] >= first) & (cells[:, 1] < stop))
        if len(inside):
            tiles = read_tile_rows(wsi, grid, patch_px, first, stop)
            out[inside] = tiles[(cells[inside, 1] - first) * grid.cols + cells[inside, 0]]
    return out


def gather_tissue_prob(labels: PseudoLabels, sample: Sample) -> np.ndarray:
    """The teacher's tissue probabilities for one split, in ``gather``'s order: ``(N,)`` float32."""
    by_id = {s.slide_id: s for s in labels.slides}
    parts = [by_id[slide_id].tissue_prob[idx] for slide_id, idx in sample.picks.items()]
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


def gather(
    labels: PseudoLabels,
    sample: Sample,
    patch_px: int,
    cache_dir: Path,
    open_slide: SlideOpener,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, labels and slide index for one split: ``(N, px, px, 3)`` uint8, ``(N,)``, ``(N,)``."""
    by_id = {s.slide_id: s for s in labels.slides}
    images, ys, owners = [], [], []
    for k, (slide_id, idx) in enumerate(sample.picks.items()):
        s = by_id[slide_id]
        images.append(read_patches(s, idx, patch_px, cache_dir, open_slide))
        ys.append(s.labels[idx])
        owners.append(np.full(len(idx), k, np.int64))
        if progress is not None:
            progress(len(idx))
    if not images:
        return np.empty((0, patch_px, patch_px, 3), np.uint8), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(images), np.concatenate(ys), np.concatenate(owners)
