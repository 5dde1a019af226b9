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
        128, "--patch-px", min=16, help="Side in pixels the student sees a patch at."
    ),
    max_per_class: int = typer.Option(
        5000, "--max-per-class", min=1, help="Cap on patches per class per split."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=2),
    patience: int = typer.Option(
        3, "--patience", min=1, help="Early stopping: epochs without val improvement."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seeds the split, the sampling, the weights and augmentation."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
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
        card = _run(
            audit, out, run, init, epochs, patch_px, max_per_class, batch_size, patience, seed, device
        )
    except TissueOracleError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    _print_card(card)


def _run(
    audit: Path,
    out: Path,
    run: str | None,
    init: Path | None,
    epochs: int,
    patch_px: int,
    max_per_class: int,
    batch_size: int,
    patience: int,
    seed: int,
    device: str,
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tissue_oracle.store.audit_store import AuditStore
    from tissue_oracle.store.reads import StoreReads
    from tissue_oracle.tools.distil import distil as run_distil
    from tissue_oracle.tools.distil_train import TrainConfig
    from tissue_oracle.tools.errors import StoreError
    from tissue_oracle.tools.schemas import StudentSpec

    if not audit.is_file():
        raise StoreError(f"audit store {str(audit)!r} does not exist; pass the audit.duckdb a run wrote")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, patience=patience, seed=seed, device=device)
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
            spec=StudentSpec(patch_px=patch_px),
            cfg=cfg,
            max_per_class=max_per_class,
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
    console.print(f"model card: {Path(card.checkpoint).with_name('model_card.json')}")
