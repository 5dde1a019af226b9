"""``tissue-oracle distil``: train a student on a run's pseudo-labels (the paper's distillation stage).

Heavy imports (torch, timm, the store) stay inside the command body so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import typer


def distil(
    audit: Path = typer.Option(..., "--audit", help="The run's audit.duckdb, holding its patch labels."),
    out: Path = typer.Option(
        ..., "--out", help="Folder for student.pt, model_card.json and the patch cache."
    ),
    run: str | None = typer.Option(None, "--run", help="Run id to learn from (default: the latest run)."),
    init: Path | None = typer.Option(None, "--init", help="Start from this local checkpoint's weights."),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Most passes over the training patches."),
    patch_px: int = typer.Option(
        64, "--patch-px", min=16, help="Side in pixels the student sees a patch at (read from a low level)."
    ),
    arch: str = typer.Option(
        "mobilenetv3_large_100", "--arch", help="timm architecture (random init unless --init)."
    ),
    max_patches: int = typer.Option(
        20000, "--max-patches", min=1, help="Cap on patches per split, sampled in the data's class ratio."
    ),
    min_patches: int = typer.Option(
        300, "--min-patches", min=2, help="Refuse to train on fewer training patches than this."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=2),
    lr: float = typer.Option(3e-4, "--lr", min=1e-6, help="AdamW learning rate (cosine-decayed to zero)."),
    patience: int = typer.Option(
        3, "--patience", min=1, help="Early stopping: epochs without val improvement."
    ),
    time_limit: float | None = typer.Option(
        None, "--time-limit", min=1, help="Stop after the epoch that passes this many seconds."
    ),
    soft_targets: bool = typer.Option(
        False,
        "--soft-targets/--hard-targets",
        help="Learn the teacher's tissue probability (the map's patch coverage) instead of its hard label.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seeds the split, the sampling, the weights and augmentation."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="torch CPU threads (more than free cores is slower)."
    ),
) -> None:
    """Distil the run's pseudo-labels into a MobileNetV3 student, and write its model card."""
    from rich.markup import escape

    from tissue_oracle.agent.console import make_console
    from tissue_oracle.tools.errors import TissueOracleError

    console = make_console(stderr=True)
    if device not in ("cpu", "cuda"):
        console.print(f"[red]error:[/red] --device {device!r} is not one of ['cpu', 'cuda']")
        raise typer.Exit(2)
    try:
        from tissue_oracle.tools.distil_data import DataFloor
        from tissue_oracle.tools.distil_train import TrainConfig
        from tissue_oracle.tools.schemas import StudentSpec

        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            seed=seed,
            device=device,
            time_limit_s=time_limit,
            threads=threads,
            soft_targets=soft_targets,
        )
        floor = DataFloor(train_patches=min_patches, per_class=min(30, max(1, min_patches // 10)))
        card = _run(audit, out, run, init, StudentSpec(arch=arch, patch_px=patch_px), cfg, max_patches, floor)
    except TissueOracleError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    _print_card(card)


def _run(
    audit: Path,
    out: Path,
    run: str | None,
    init: Path | None,
    spec: Any,
    cfg: Any,
    max_patches: int,
    floor: Any,
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tissue_oracle.store.audit_store import AuditStore
    from tissue_oracle.store.reads import StoreReads
    from tissue_oracle.tools.distil import distil as run_distil

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with AuditStore.open(audit, read_only=True) as store, Progress(*columns, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, advance: int, total: int) -> None:
            if phase not in tasks:
                label = "reading patches" if phase == "read" else "training"
                tasks[phase] = bar.add_task(label, total=total)
            bar.advance(tasks[phase], advance)

        result = run_distil(
            audit,
            out,
            run_id=run,
            spec=spec,
            cfg=cfg,
            max_patches=max_patches,
            floor=floor,
            init=init,
            truth=truth_lookup(),
            progress=progress,
            source=StoreReads(store.query, str(audit)),
        )
    return result.card


def truth_lookup() -> Any:
    """Ground-truth labels for slides that have a truth file (synthetic slides), else None.

    Truth files belong to ``bench`` (the synthetic generator writes them). The agent layer does
    not import bench, so the reader is loaded by name, like the CLI's command table does, and
    distillation simply skips the truth comparison when it is not installed.
    """
    try:
        truth_mod = importlib.import_module("tissue_oracle.bench.synth.truth")
    except ImportError:
        return None

    def lookup(path: str, xy: np.ndarray, size: int) -> np.ndarray | None:
        truth = truth_mod.find_truth(path)
        if truth is None:
            return None
        grid = np.asarray(truth.patch_labels(size))
        rows = np.clip(xy[:, 1] // size, 0, grid.shape[0] - 1)
        cols = np.clip(xy[:, 0] // size, 0, grid.shape[1] - 1)
        return np.asarray(grid[rows, cols] > 0, dtype=np.int64)

    return lookup


def _print_card(card: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tissue_oracle.agent.console import make_console

    console = make_console()
    teacher = card.teacher
    who = "VLM" if teacher.is_vlm else f"{teacher.kind} (not a VLM)"
    models = ", ".join(teacher.models) or "?"
    console.print(escape(f"student: {card.checkpoint}  ·  teacher: {models} [{who}]"))
    table = Table("test slides vs", "F1", "IoU", "precision", "recall", "patches")
    rows: list[tuple[str, dict[str, Any] | None]] = [
        ("teacher labels", card.metrics_vs_teacher),
        ("truth (student)", card.metrics_vs_truth),
        ("truth (teacher)", card.teacher_vs_truth),
    ]
    for name, m in rows:
        if m is not None:
            table.add_row(name, *(f"{m[k]:.3f}" for k in ("f1", "iou", "precision", "recall")), str(m["n"]))
    console.print(table)
    cal = card.calibration
    if cal:
        console.print(
            f"calibration: temperature {cal['temperature']}, ECE val {cal['ece_val_before']} -> "
            f"{cal['ece_val_after']}, test {cal['ece_test_before']} -> {cal['ece_test_after']}"
        )
    for warning in card.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    console.print(f"model card: {Path(card.checkpoint).with_name('model_card.json')}")
