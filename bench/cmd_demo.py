"""``tissue-oracle demo``: synthesise a small leica-like set, segment it, score it against the truth.

Runs anywhere: the classical oracle (no VLM) plays every role, and the table says so. It lives
in ``bench`` because it composes the synthetic generator, its truth and its metrics with the
agent's ``segment`` run; ``segment`` itself never needs ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tissue_oracle.agent.runs import RunResult

#: The demo set: three slides (one per stain of the leica-like preset: H&E, Jones, EVG).
DEMO_PRESET = "leica-like"
DEMO_COUNT = 3
DEMO_SEED = 7
DEMO_SIZE = 8192


def demo_slides(
    folder: Path, *, preset: str = DEMO_PRESET, count: int = DEMO_COUNT, size: int = DEMO_SIZE
) -> list[Path]:
    """The demo's slides, generated once: existing slides with their truth are reused."""
    from tissue_oracle.bench.synth.generate import generate_set, plan_set
    from tissue_oracle.bench.synth.truth import find_truth

    expected = [folder / name for name, _, _ in plan_set(preset, count, DEMO_SEED)]
    if all(p.is_file() and find_truth(p) is not None for p in expected):
        return expected
    return generate_set(folder, preset=preset, count=count, seed=DEMO_SEED, size=size)


def baseline_dice(path: Path, target: object, patch_size: int) -> dict[str, float]:
    """Dice of the Otsu (CLAM) and optical-density K-means baselines on the same slide and grid."""
    from tissue_oracle.bench.evaluation.baselines import BASELINES, MorphParams, to_patch_grid
    from tissue_oracle.tools.slides import open_slide

    downsample = 64.0
    with open_slide(path) as slide:
        thumb = slide.thumbnail(downsample)
        width, height = slide.dimensions
    params = MorphParams(patch_area_px=(patch_size / downsample) ** 2)
    return {
        name: dice(to_patch_grid(fn(thumb, params), width, height, patch_size), target)
        for name, fn in BASELINES.items()
    }


def dice(pred: object, truth: object) -> float:
    from tissue_oracle.bench.evaluation.metrics import seg_scores

    s = seg_scores(pred, truth)  # type: ignore[arg-type]
    return 2 * s.tp / (2 * s.tp + s.fp + s.fn) if (s.tp + s.fp + s.fn) else 1.0


def print_scores(result: RunResult, title: str) -> None:
    """Per slide: Dice of the zero-shot and final masks and of two baselines against the exact
    truth, calls against the naive one-per-patch count, refinements, time; then means per stain."""
    import numpy as np
    from rich.table import Table

    from tissue_oracle.agent.console import make_console
    from tissue_oracle.bench.synth.truth import load_truth

    columns = ("slide", "stain", "status", "Dice zero-shot", "Dice final", "Dice Otsu", "Dice K-means")
    table = Table(title=title)
    for column in (*columns, "truth patches", "calls", "naive", "refined", "s"):
        table.add_column(column)
    per_stain: dict[str, list[list[float]]] = {}
    for o in result.outcomes:
        s = o.summary
        if s is None:
            table.add_row(o.slide_id, "", o.status, *[""] * 9)
            continue
        truth = load_truth(o.path)
        target = truth.patch_labels(s.patches.patch_size)
        scores = [
            dice(np.load(s.outputs["mask_zero_shot"]), target),
            dice(np.load(s.outputs["mask_npy"]), target),
            *baseline_dice(o.path, target, s.patches.patch_size).values(),
        ]
        per_stain.setdefault(truth.stain, []).append(scores)
        table.add_row(
            o.slide_id, truth.stain, s.status, *(f"{v:.3f}" for v in scores), str(int(target.sum())),
            str(s.totals.calls), str(s.patches.naive_calls), str(s.refinements), f"{s.seconds:.1f}",
        )  # fmt: skip
    console = make_console()
    console.print(table)
    means = Table(title="mean Dice per stain")
    for column in ("stain", "slides", *columns[3:]):
        means.add_column(column)
    for stain, rows in sorted(per_stain.items()):
        means.add_row(stain, str(len(rows)), *(f"{v:.3f}" for v in np.mean(rows, axis=0)))
    console.print(means)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (slides, outputs, audit store).")] = Path(
        "demo-out"
    ),
    preset: Annotated[
        str, typer.Option(help="Synthetic preset: leica-like, stress, zoo, tiny.")
    ] = DEMO_PRESET,
    count: Annotated[int, typer.Option(help="Slides to synthesise.", min=1)] = DEMO_COUNT,
    size: Annotated[
        int, typer.Option(help="Side of each synthetic slide, level-0 pixels.", min=2048)
    ] = DEMO_SIZE,
) -> None:
    """Synthesise a small set, segment it with the classical oracle (no VLM), print Dice per slide."""
    from tissue_oracle.agent.cmd_segment import print_result, run_segment
    from tissue_oracle.agent.run_settings import RunSettings
    from tissue_oracle.agent.runs import new_run_id
    from tissue_oracle.policies.policy import load_policy
    from tissue_oracle.tools.errors import TissueOracleError

    try:
        typer.echo(
            f"synthesising {count} {preset} slides in {str(out / 'slides')!r} (reused when present) ..."
        )
        slides = demo_slides(out / "slides", preset=preset, count=count, size=size)
        policy = load_policy("default")
        overrides: dict[str, str | None] = {
            "oracle": "classical",
            "reviewer": "classical",
            "classifier": "classical",
        }
        settings = RunSettings(run_id=new_run_id(), policy=policy, out_dir=out)
        result = run_segment([str(p) for p in slides], settings, overrides=overrides)
    except TissueOracleError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from exc
    print_result(result)
    print_scores(result, f"demo: classical oracle (no VLM) on synthetic {preset} slides, Dice vs exact truth")
    if result.all_failed:
        raise typer.Exit(1)
