"""Student figures: distil a classical-oracle run on synthetic slides, time it, and cascade it.

    python -m tissue_oracle.bench.perf.student_bench --out bench-out/student

1. ``leica-like`` synthetic slides (exact truth) are segmented by the default policy, whose every
   role is the **classical** oracle (no VLM): that run's patch labels are the teacher's.
2. A student is distilled from that run (``tools.distil``); its model card gives F1 against the
   teacher and against truth on the held-out test slides, beside the teacher's own F1 against truth.
3. Speed: the classical oracle and the student label the same in-memory patches (full resolution,
   as the pipeline sends them) through the ``Oracle`` interface, cache off; patches/s of each and the ratio.
4. Cascade: the held-out slides are segmented again with ``policy.cascade`` enabled (the student
   answers first, the classical oracle only below the confidence threshold), and without; oracle
   patch-label calls per slide and Dice against truth for both.

Every figure here comes from the classical oracle, never from a VLM, and says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from tissue_oracle.agent.controller import segment_file
from tissue_oracle.agent.oracle_setup import OracleSet, build_oracles
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.bench.synth.generate import generate_set
from tissue_oracle.oracles.cascade import CascadeOracle
from tissue_oracle.oracles.student import build as build_student
from tissue_oracle.policies.policy import Policy, load_policy
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.store.reads import StoreReads
from tissue_oracle.tools import distil_data
from tissue_oracle.tools.distil import CARD_NAME, CHECKPOINT_NAME, ModelCard, distil
from tissue_oracle.tools.distil_train import TrainConfig
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import PatchLabelsRequest, PatchRef, RunRecord, StudentSpec
from tissue_oracle.tools.slides import open_slide

TEACHER_RUN = "teacher-classical"


def truth_grid(slide_path: str | Path, patch_size: int) -> np.ndarray:
    """Boolean (rows, cols) tissue truth of a synthetic slide on its patch grid."""
    from tissue_oracle.bench.synth.truth import load_truth

    return np.asarray(load_truth(slide_path).patch_labels(patch_size)) > 0


def truth_lookup(path: str, xy: np.ndarray, size: int) -> np.ndarray:
    grid = truth_grid(path, size)
    rows = np.clip(xy[:, 1] // size, 0, grid.shape[0] - 1)
    cols = np.clip(xy[:, 0] // size, 0, grid.shape[1] - 1)
    return grid[rows, cols].astype(np.int64)


def _run_record(run_id: str, policy: Policy) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        policy_name=policy.name,
        policy_yaml=policy.to_yaml(),
        policy_hash=policy.policy_hash,
        tool_version="bench",
        command_line="tissue_oracle.bench.perf.student_bench",
    )


async def _segment_all(
    slides: list[Path], store: Any, run_id: str, policy: Policy, oracles: OracleSet, out: Path
) -> dict[str, Any]:
    """Segment slides one by one; returns slide id -> (summary, seconds)."""
    done = {}
    for path in slides:
        started = time.perf_counter()
        settings = RunSettings(run_id=run_id, policy=policy, out_dir=out)
        summary = await segment_file(path, settings, RunDeps.for_run(settings, oracles=oracles, store=store))
        done[path.stem] = (summary, time.perf_counter() - started)
    return done


def bench_policy(patch_size: int, batch_size: int = 8) -> Policy:
    """The default policy (classical oracle in every role) on a ``patch_size`` grid, sent at full res,
    ``batch_size`` patches per patch-label question."""
    return load_policy("default").with_updates(
        {
            "classify.patch_size": patch_size,
            "classify.send_size": patch_size,
            "classify.batch_size": batch_size,
        }
    )


def teacher_run(slides: list[Path], audit: Path, out: Path, patch_size: int) -> dict[str, float]:
    """Segment every slide with the classical-oracle policy into ``audit``; seconds per slide."""
    policy = bench_policy(patch_size)
    oracles = build_oracles(policy)
    with AuditStore.open(audit) as store:
        store.begin_run(_run_record(TEACHER_RUN, policy))
        done = asyncio.run(_segment_all(slides, store, TEACHER_RUN, policy, oracles, out / "teacher"))
        store.finish_run(TEACHER_RUN, "finished")
    return {sid: round(sec, 2) for sid, (_, sec) in done.items()}


# --------------------------------------------------------------------------- speed


def _patches_for_speed(audit: Path, slide_ids: list[str], limit: int) -> list[tuple[str, PatchRef]]:
    labels = distil_data.load_pseudo_labels(StoreReads.open_read_only(audit), TEACHER_RUN)
    picked = []
    for s in labels.slides:
        if s.slide_id in slide_ids:
            picked += [(s.path, PatchRef(x=int(x), y=int(y), size=s.size)) for x, y in s.xy.tolist()]
    return picked[:limit]


async def _throughput(oracle: Oracle, images: list[np.ndarray], refs: list[PatchRef], batch: int) -> float:
    rec = MemoryRecorder()
    ctx = CallContext(
        run_id="speed",
        slide_id="speed",
        stage="classify_patches",
        role="classifier",
        recorder=rec,
        use_cache=False,
    )
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        req = PatchLabelsRequest(patches=refs[i : i + batch], images=images[i : i + batch])
        await oracle.patch_labels(req, ctx)
    return len(images) / (time.perf_counter() - started)


def speed(audit: Path, checkpoint: Path, slide_ids: list[str], limit: int = 256) -> dict[str, float]:
    """Patches/s of the classical oracle and of the student on the same patches at full res (this CPU)."""
    picked = _patches_for_speed(audit, slide_ids, limit)
    images: list[np.ndarray] = []
    for path, ref in picked:
        with open_slide(path) as slide:
            images.append(slide.read_patch(ref, ref.size))
    refs = [ref for _, ref in picked]
    classical = build_oracles(load_policy("default")).by_role["oracle"]
    student = build_student(checkpoint, device="cpu", batch_size=64)
    asyncio.run(_throughput(student, images[:64], refs[:64], 64))  # warm-up: first torch call allocates
    teacher_pps = asyncio.run(_throughput(classical, images, refs, 8))
    student_pps = asyncio.run(_throughput(student, images, refs, 64))
    return {
        "patches": len(images),
        "classical_patches_per_s": round(teacher_pps, 1),
        "student_patches_per_s": round(student_pps, 1),
        "student_over_classical": round(student_pps / teacher_pps, 2),
    }


# --------------------------------------------------------------------------- cascade


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = int(pred.sum() + truth.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & truth).sum()) / denom


def _mask_from_store(
    audit: Path, run_id: str, slide_id: str, shape: tuple[int, int], size: int
) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x, y, label in StoreReads.open_read_only(audit).slide_patch_labels(run_id, slide_id):
        mask[y // size, x // size] = label == "tissue"
    return mask


def _oracle_calls(audit: Path, run_id: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for slide_id, backend, calls, patches in StoreReads.open_read_only(audit).classify_calls_by_slide(run_id):
        out.setdefault(slide_id, {})[f"{backend}_calls"] = calls
        out[slide_id][f"{backend}_patches"] = patches
    return out


def cascade_figures(
    slides: list[Path],
    checkpoint: Path,
    out: Path,
    threshold: float,
    patch_size: int,
    batch_size: int,
) -> dict[str, Any]:
    """Segment ``slides`` with and without the cascade; oracle calls and Dice per slide.

    Each run gets its own audit file (``OUT/<run>.duckdb``): in one store the second run would be
    answered from the first one's cache and its oracle calls would not count.
    """
    plain = bench_policy(patch_size, batch_size)
    cascaded = plain.with_updates(
        {"cascade.enabled": True, "cascade.student": f"student:{checkpoint}", "cascade.confidence": threshold}
    )
    runs = {"plain": (plain, build_oracles(plain)), "cascade": (cascaded, build_oracles(cascaded))}
    audits = {run_id: out / f"{run_id}.duckdb" for run_id in runs}
    for run_id, (policy, oracles) in runs.items():
        audits[run_id].unlink(missing_ok=True)
        with AuditStore.open(audits[run_id]) as store:
            store.begin_run(_run_record(run_id, policy))
            asyncio.run(_segment_all(slides, store, run_id, policy, oracles, out / run_id))
            store.finish_run(run_id, "finished")
    wrapped = runs["cascade"][1].by_role["classifier"]
    assert isinstance(wrapped, CascadeOracle)  # policy.cascade made the run's classifier a cascade
    per_slide: dict[str, Any] = {}
    calls = {run_id: _oracle_calls(audits[run_id], run_id) for run_id in runs}
    for path in slides:
        truth = truth_grid(path, patch_size)
        row: dict[str, Any] = {}
        for run_id in runs:
            pred = _mask_from_store(audits[run_id], run_id, path.stem, truth.shape, patch_size)
            row[run_id] = {**calls[run_id].get(path.stem, {}), "dice": round(_dice(pred, truth), 4)}
        per_slide[path.stem] = row
    stats = dataclasses.asdict(wrapped.stats)
    return {"threshold": threshold, "batch_size": batch_size, "per_slide": per_slide, "stats": stats}


# --------------------------------------------------------------------------- the whole figure set


def _slides(folder: Path, count: int, seed: int, size: int) -> list[Path]:
    """The synthetic set, reused when a previous run already wrote it (same names, same seeds)."""
    paths = [folder / f"leica-like_{seed}_{i:03d}.tiff" for i in range(count)]
    if all(p.is_file() and (p.with_suffix(".truth") / "meta.json").is_file() for p in paths):
        with open_slide(paths[0]) as first:
            if first.dimensions == (size, size):
                return paths
    return generate_set(folder, preset="leica-like", count=count, seed=seed, size=size)


def main(
    out: Path = typer.Option(Path("bench-out/student"), "--out"),
    slides: int = typer.Option(10, "--slides", help="Synthetic leica-like slides (split 70/10/20)."),
    size: int = typer.Option(6144, "--size", help="Square slide side, level-0 px."),
    patch_size: int = typer.Option(
        512, "--patch-size", help="Patch grid side, level-0 px (policy override)."
    ),
    seed: int = typer.Option(0, "--seed"),
    patch_px: int = typer.Option(64, "--patch-px"),
    epochs: int = typer.Option(4, "--epochs"),
    max_per_class: int = typer.Option(1500, "--max-per-class"),
    threshold: float = typer.Option(0.9, "--threshold", help="Cascade confidence threshold."),
    cascade_batch: int = typer.Option(8, "--cascade-batch", help="Patches per question in the cascade runs."),
    reuse: bool = typer.Option(
        False, "--reuse", help="Keep OUT's teacher run and student; redo speed and cascade."
    ),
) -> None:
    """Distil a student from a classical-oracle run and measure it (CPU, bounded to a few minutes)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = _slides(out / "slides", slides, seed, size)
    audit = out / "audit.duckdb"
    card_path, checkpoint = out / "student" / CARD_NAME, out / "student" / CHECKPOINT_NAME
    teacher_seconds: dict[str, float] | str = "reused"
    if not (reuse and card_path.is_file() and checkpoint.is_file()):
        audit.unlink(missing_ok=True)
        teacher_seconds = teacher_run(paths, audit, out, patch_size)
        distil(
            audit,
            out / "student",
            spec=StudentSpec(patch_px=patch_px),
            cfg=TrainConfig(epochs=epochs, seed=seed),
            max_per_class=max_per_class,
            truth=truth_lookup,
            source=StoreReads.open_read_only(audit),
        )
    card = ModelCard.model_validate_json(card_path.read_text())
    test_ids = card.slides["test"]
    figures: dict[str, Any] = {
        "teacher": card.teacher.model_dump(),
        "note": "teacher = classical oracle (no VLM); all labels and timings come from it and the student",
        "teacher_seconds_per_slide": teacher_seconds,
        "card": {
            k: getattr(card, k)
            for k in ("slides", "counts", "metrics_vs_teacher", "metrics_vs_truth", "teacher_vs_truth")
        },
        "train_seconds": card.train_seconds,
        "speed": speed(audit, checkpoint, test_ids),
    }
    test_paths = [p for p in paths if p.stem in test_ids]
    figures["cascade"] = cascade_figures(test_paths, checkpoint, out, threshold, patch_size, cascade_batch)
    figures["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / f"student_bench_batch{cascade_batch}.json").write_text(
        json.dumps(figures, indent=2, default=str) + "\n"
    )
    typer.echo(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    typer.run(main)
