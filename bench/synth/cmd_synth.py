"""``tissue-oracle synth``: write synthetic slides with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Argument(..., help="Folder for NAME.tiff slides and their NAME.truth/ folders."),
    preset: str = typer.Option(
        "leica-like", help="leica-like | stress | hard | faint-stress | faint-hard | red-pen | zoo | tiny"
    ),
    count: int = typer.Option(4, min=1, help="How many slides."),
    seed: int = typer.Option(0, help="Seed: the same preset, count and seed give the same files."),
    size: int | None = typer.Option(None, help="Square slides, SIZE level-0 px a side (default: preset)."),
    no_mpp: bool = typer.Option(False, "--no-mpp", help="Leave mpp and magnification out of the files."),
) -> None:
    """Write COUNT synthetic slides (pyramidal TIFF) with tissue, artefact and focus truth."""
    # Heavy imports here keep `tissue-oracle --help` fast.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from tissue_oracle.bench.synth.generate import generate_slide, plan_set
    from tissue_oracle.tools.errors import ConfigError

    try:
        members = plan_set(preset, count, seed)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--preset") from exc
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        for name, slide_seed, stain in members:
            task = bar.add_task(name, total=None)

            def advance(done: int, total: int, task: TaskID = task) -> None:
                bar.update(task, completed=done, total=total)

            generate_slide(
                out / name, preset=preset, seed=slide_seed, width=size, height=size, stain=stain,
                with_mpp=not no_mpp, progress=advance,
            )  # fmt: skip
    typer.echo(f"wrote {count} {preset} slide(s) with truth to {str(out)!r}")
