"""``tissue-oracle report OUT``: re-make a run folder's escalation queue and ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def write_run_outputs(out_dir: Path, store: object | None = None) -> Path:
    """``escalations.csv``, each slide's ``review_regions.geojson`` and ``report.html``; the report's path."""
    from tissue_oracle.agent.escalations import write_escalations
    from tissue_oracle.agent.report_html import write_report

    write_escalations(out_dir)
    return write_report(out_dir, store)


def report(
    out: Annotated[Path, typer.Argument(help="A segment run's output folder (holding audit.duckdb).")],
) -> None:
    """Write OUT/report.html (slides, grades, Auto-context, cost over time) and OUT/escalations.csv."""
    if not out.is_dir() or not any(out.glob("*/summary.json")):
        typer.secho(
            f"error: {str(out)!r} holds no slide results (*/summary.json). Give a 'segment --out' folder.",
            err=True,
            fg="red",
        )
        raise typer.Exit(2)
    path = write_run_outputs(out)
    typer.echo(str(path))
