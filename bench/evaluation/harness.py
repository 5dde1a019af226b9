"""The benchmark harness: cases (a slide and its reference on a patch grid) through methods, into rows.

A *case* is one slide with its reference at one patch size: exact truth for synthetic slides,
or another tool's mask (``agreement``, never called accuracy) for the shared real images, or
only an artefact mask. A *method* turns a case into one or more predicted patch grids with
what they cost. The harness scores every method on every case and returns flat rows (one per
case and method) that ``bench.report`` turns into tables, plots and JSON.

Frames: every per-patch array is ``(rows, cols)`` on ``PatchGrid(slide_width, slide_height,
patch_size)``; thumbnails are ``thumb_xy`` at ``Case.thumb_downsample``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tissue_oracle.bench.evaluation.baselines import MorphParams, kmeans_mask, otsu_mask, to_patch_grid
from tissue_oracle.bench.evaluation.metrics import focus_scores, seg_scores
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import CallRecord, Role, Stage

ReferenceKind = Literal["truth", "agreement", "artefact_only"]


@dataclass(kw_only=True)
class Case:
    """One slide, its reference on the patch grid, and what the reference is."""

    slide_id: str
    path: Path
    stain: str
    group: str
    """Which set it belongs to: a synthetic preset, or a part of the real data."""
    slide_width: int
    slide_height: int
    patch_size: int
    thumb_downsample: float
    reference_kind: ReferenceKind
    reference: str
    """Where the reference comes from, in words (printed under every table)."""
    truth: np.ndarray | None = None
    """Boolean (rows, cols) tissue reference; None for artefact-only cases."""
    focus: np.ndarray | None = None
    """uint8 (rows, cols) focus codes (0 sharp, 1 mild, 2 out, 255 none)."""
    artefact: np.ndarray | None = None
    """Boolean (rows, cols): patches mostly covered by a marked artefact."""
    artefact_reference: str = ""
    truth_obj: Any = None
    """The synthetic ``Truth`` (simulated oracle, reviewer bench); None for real data."""

    @property
    def naive_calls(self) -> int:
        """Oracle calls to classify every patch of the slide one by one."""
        return math.ceil(self.slide_width / self.patch_size) * math.ceil(self.slide_height / self.patch_size)


@dataclass(kw_only=True)
class Prediction:
    """One method's output on one case."""

    mask: np.ndarray
    """Boolean (rows, cols) tissue prediction."""
    focus: np.ndarray | None = None
    """uint8 (rows, cols) focus codes, 255 where none."""
    calls: int = 0
    """Oracle calls that reached a backend (cache hits excluded)."""
    patches_sent: int = 0
    """Patch images sent to an oracle (a call may carry a batch of several)."""
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Method:
    """A named way to segment a case. ``run`` may return several named variants (ablation stages)."""

    name: str
    kind: Literal["baseline", "classical", "simulated", "vlm", "student"]
    """What produced the numbers; ``simulated`` rows are labelled SIMULATED everywhere."""
    run: Callable[[Case, CaseEnv], dict[str, Prediction]]
    description: str = ""


@dataclass(kw_only=True)
class CaseEnv:
    """What methods share on one case: the open slide, a thumbnail cache, and suite settings."""

    slide: Any
    """``tools.slides.Slide`` for the case's file."""
    send_size: int = 128
    """Pixels per side of each patch image sent to a per-patch oracle."""
    seed: int = 0
    work_dir: Path | None = None
    """Scratch space (controller outputs, audit files)."""
    _thumbs: dict[float, np.ndarray] = field(default_factory=dict)

    def thumbnail(self, downsample: float) -> np.ndarray:
        if downsample not in self._thumbs:
            self._thumbs[downsample] = np.asarray(self.slide.thumbnail(downsample))[..., :3]
        return self._thumbs[downsample]


# --------------------------------------------------------------------------- baselines


def _baseline(fn: Callable[..., np.ndarray]) -> Callable[[Case, CaseEnv], dict[str, Prediction]]:
    def run(case: Case, env: CaseEnv) -> dict[str, Prediction]:
        thumb = env.thumbnail(case.thumb_downsample)  # read once per case, outside the timing
        started = time.perf_counter()
        params = MorphParams(patch_area_px=(case.patch_size / case.thumb_downsample) ** 2)
        mask = to_patch_grid(fn(thumb, params), case.slide_width, case.slide_height, case.patch_size)
        return {"": Prediction(mask=mask, wall_s=time.perf_counter() - started)}

    return run


OTSU = Method(
    name="Otsu (CLAM)",
    kind="baseline",
    run=_baseline(otsu_mask),
    description="HSV saturation, median blur, Otsu, closing, small objects/holes (CLAM segmentTissue)",
)
KMEANS = Method(
    name="K-means (OD)",
    kind="baseline",
    run=_baseline(kmeans_mask),
    description="optical density, K=2 (denser cluster is tissue), opening, small objects/holes",
)


# --------------------------------------------------------------------------- per-patch oracle


def cost_of(calls: list[CallRecord]) -> dict[str, float | int]:
    """Calls that reached a backend, and their tokens and USD (cache hits cost nothing)."""
    paid = [c for c in calls if not c.cache_hit]
    return {
        "calls": len(paid),
        "input_tokens": sum(c.input_tokens for c in paid),
        "output_tokens": sum(c.output_tokens for c in paid),
        "usd": float(sum(c.cost_usd or 0.0 for c in paid)),
    }


def per_patch_method(
    name: str, kind: Any, make_oracle: Callable[[Case], Oracle], batch_size: int = 16
) -> Method:
    """Every patch of the slide sent to ``make_oracle(case)`` through the real ``classify_patches``.

    The coarse mask is the whole slide and the gate is 0, so this is the naive all-patches run
    the coarse-to-fine design is meant to beat on cost.
    """

    def run(case: Case, env: CaseEnv) -> dict[str, Prediction]:
        from tissue_oracle.tools.classify_patches import ClassifyPatchesInput, classify_patches
        from tissue_oracle.tools.stage_deps import StageDeps

        recorder = MemoryRecorder()
        oracle = make_oracle(case)

        def context(stage: Stage, role: Role) -> CallContext:
            return CallContext(
                run_id="bench",
                slide_id=case.slide_id,
                stage=stage,
                role=role,
                recorder=recorder,
                use_cache=False,
            )

        deps = StageDeps(slide=env.slide, oracles={"oracle": oracle}, context=context, max_in_flight=4)
        inp = ClassifyPatchesInput(
            patch_size=case.patch_size,
            gate_fraction=0.0,
            send_size=min(env.send_size, case.patch_size),
            batch_size=batch_size,
            coarse_mask=np.ones((1, 1), dtype=bool),
            mask_downsample=float(max(case.slide_width, case.slide_height)),
        )
        started = time.perf_counter()
        out = asyncio.run(classify_patches(inp, deps))
        focus = out.focus  # tools.focus codes, NO_FOCUS where none
        cost = cost_of(recorder.calls)
        pred = Prediction(
            mask=out.tissue.copy(),
            focus=focus,
            calls=int(cost["calls"]),
            patches_sent=out.sent,
            input_tokens=int(cost["input_tokens"]),
            output_tokens=int(cost["output_tokens"]),
            usd=float(cost["usd"]),
            wall_s=time.perf_counter() - started,
            extra={"failed": out.failed},
        )
        return {"": pred}

    return Method(name=name, kind=kind, run=run, description="every patch sent (no coarse mask, no gate)")


def classical_per_patch() -> Method:
    from tissue_oracle.oracles.classical import ClassicalOracle

    return per_patch_method("classical oracle, every patch", "classical", lambda case: ClassicalOracle())


def simulated_per_patch() -> Method:
    """The SIMULATED oracle on every patch, zero-shot: the error model's floor without the pipeline."""
    from tissue_oracle.bench.evaluation.simulated_oracle import SimulatedOracle

    def make(case: Case) -> Oracle:
        return SimulatedOracle(truths={case.slide_id: case.truth_obj}, seed=0)

    return per_patch_method("SIMULATED oracle, every patch (zero-shot)", "simulated", make)


# --------------------------------------------------------------------------- scoring


def score(case: Case, method: Method, variant: str, pred: Prediction) -> dict[str, Any]:
    """One result row: the case, the method, the metrics against the reference, and the cost."""
    name = method.name if not variant else f"{method.name}: {variant}"
    row: dict[str, Any] = {
        "slide_id": case.slide_id,
        "stain": case.stain,
        "group": case.group,
        "method": name,
        "kind": method.kind,
        "simulated": method.kind == "simulated",
        "reference_kind": case.reference_kind,
        "reference": case.reference,
        "patch_size": case.patch_size,
        "patches": int(pred.mask.size),
        "naive_calls": case.naive_calls,
        "calls": pred.calls,
        "call_ratio": pred.calls / case.naive_calls if case.naive_calls else math.nan,
        "patches_sent": pred.patches_sent,
        "sent_ratio": pred.patches_sent / case.naive_calls if case.naive_calls else math.nan,
        "input_tokens": pred.input_tokens,
        "output_tokens": pred.output_tokens,
        "usd": pred.usd,
        "wall_s": pred.wall_s,
        **{k: v for k, v in pred.extra.items() if isinstance(v, int | float | str | bool)},
    }
    if case.truth is not None:
        row.update(seg_scores(pred.mask, case.truth).as_dict())
    if case.focus is not None and pred.focus is not None:
        # Focus is judged where both say tissue: a background patch has no focus grade.
        valid = case.truth & pred.mask if case.truth is not None else pred.mask
        row.update(
            {f"focus_{k}": v for k, v in focus_scores(pred.focus, case.focus, valid).as_dict().items()}
        )
    if case.artefact is not None:
        marked = int(case.artefact.sum())
        row["artefact_patches"] = marked
        row["artefact_called_tissue"] = (
            float((pred.mask & case.artefact).sum() / marked) if marked else math.nan
        )
    return row


def run_cases(
    cases: list[Case],
    methods: list[Method],
    *,
    open_slide: Callable[[Path], Any],
    send_size: int = 128,
    seed: int = 0,
    work_dir: Path | None = None,
    on_case: Callable[[Case], None] | None = None,
) -> list[dict[str, Any]]:
    """Every method on every case; a method that fails on a case gives an error row, not a crash."""
    rows: list[dict[str, Any]] = []
    for case in cases:
        if on_case is not None:
            on_case(case)
        with open_slide(case.path) as slide:
            env = CaseEnv(slide=slide, send_size=send_size, seed=seed, work_dir=work_dir)
            for method in methods:
                rows.extend(_run_one(case, method, env))
    return rows


def _run_one(case: Case, method: Method, env: CaseEnv) -> list[dict[str, Any]]:
    try:
        preds = method.run(case, env)
    except Exception as exc:  # one method failing on one slide must not end the benchmark
        return [
            {
                "slide_id": case.slide_id,
                "stain": case.stain,
                "group": case.group,
                "method": method.name,
                "kind": method.kind,
                "simulated": method.kind == "simulated",
                "error": f"{type(exc).__name__}: {exc}",
            }
        ]
    return [score(case, method, variant, pred) for variant, pred in preds.items()]
