"""``tissue-oracle demo``: synthesise a small leica-like set, segment it, score it against the truth.

Runs anywhere: the classical oracle (no VLM) plays every role, and the table says so. This
command reaches into ``bench`` (the synthetic generator, its truth and its metrics) because a
demo needs slides with known truth; ``segment`` never does.
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


def demo_slides(folder: Path, *, count: int = DEMO_COUNT, size: int = DEMO_SIZE) -> list[Path]:
    """The demo's slides, generated once: existing slides with their truth are reused."""
    from tissue_oracle.bench.synth import generate_set, plan_set
    from tissue_oracle.bench.truth import find_truth

    expected = [folder / name for name, _, _ in plan_set(DEMO_PRESET, count, DEMO_SEED)]
    if all(p.is_file() and find_truth(p) is not None for p in expected):
        return expected
    return generate_set(folder, preset=DEMO_PRESET, count=count, seed=DEMO_SEED, size=size)


def dice(pred: object, truth: object) -> float:
    from tissue_oracle.bench.metrics import seg_scores

    s = seg_scores(pred, truth)  # type: ignore[arg-type]
    return 2 * s.tp / (2 * s.tp + s.fp + s.fn) if (s.tp + s.fp + s.fn) else 1.0


def print_scores(result: RunResult) -> None:
    """Per slide: stain, Dice of zero-shot and final masks against the truth, calls, refinements, time."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from tissue_oracle.bench.truth import load_truth

    table = Table(title="demo: classical oracle (no VLM), synthetic leica-like slides, Dice vs exact truth")
    for column in (
        "slide",
        "stain",
        "status",
        "Dice zero-shot",
        "Dice final",
        "calls",
        "naive",
        "refined",
        "s",
    ):
        table.add_column(column)
    for o in result.outcomes:
        s = o.summary
        if s is None:
            table.add_row(o.slide_id, "", o.status, "", "", "", "", "", "")
            continue
        truth = load_truth(o.path)
        target = truth.patch_labels(s.patches.patch_size)
        final = np.load(s.outputs["mask_npy"])
        zero = np.load(s.outputs["mask_zero_shot"])
        table.add_row(
            o.slide_id, truth.stain, s.status, f"{dice(zero, target):.3f}", f"{dice(final, target):.3f}",
            str(s.totals.calls), str(s.patches.naive_calls), str(s.refinements), f"{s.seconds:.1f}",
        )  # fmt: skip
    Console().print(table)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (slides, outputs, audit store).")] = Path(
        "demo-out"
    ),
    count: Annotated[int, typer.Option(help="Slides to synthesise.", min=1)] = DEMO_COUNT,
    size: Annotated[
        int, typer.Option(help="Side of each synthetic slide, level-0 pixels.", min=2048)
    ] = DEMO_SIZE,
) -> None:
    """Synthesise a small leica-like set, segment it with the classical oracle, print Dice per slide."""
    from tissue_oracle.agent.cmd_segment import print_result, run_segment
    from tissue_oracle.policies.policy import load_policy
    from tissue_oracle.tools.errors import TissueOracleError

    try:
        typer.echo(f"synthesising {count} {DEMO_PRESET} slides in {str(out / 'slides')!r} ...")
        slides = demo_slides(out / "slides", count=count, size=size)
        result = run_segment(
            [str(p) for p in slides],
            out,
            load_policy("default"),
            overrides={"oracle": "classical", "reviewer": "classical"},
        )
    except TissueOracleError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from exc
    print_result(result)
    print_scores(result)
    if result.all_failed:
        raise typer.Exit(1)
