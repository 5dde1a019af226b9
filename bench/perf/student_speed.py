"""End-to-end speed of ``segment --classifier student:PATH``: whole CLI runs, start-up reported apart.

    python -m tissue_oracle.bench.perf.student_speed --slides DIR --student S/student.pt --out OUT

Each run is the real CLI in a fresh interpreter (``timed_segment``), so its wall time holds
everything a user waits for: Python and torch start-up, the student's model load, opening the
store, every slide (reads included), the outputs, the run report and closing the store. The audit
store's timestamps split it into

- ``startup_s``: process start to the first slide's start (imports, policy, oracles, the model);
- ``slides_s``: the first slide's start to the last slide's finish;
- ``wrap_up_s``: the rest (escalation queue, ``report.html``, store close, interpreter exit);
- ``segment_s``: of ``slides_s``, the slides' own stages (``summary.json`` seconds; the rest is
  opening, hashing and recording each slide and writing its outputs).

``patches_per_s`` is grid patches over the whole command's wall time (the goal figure);
``patches_per_s_after_startup`` leaves start-up out, which is what a longer folder tends to.
``model_load_s`` times a fresh interpreter importing torch and timm and building the student
(part of ``startup_s``). The same-run baseline is the classical oracle's whole-slide map
(default policy, no VLM) over the same slides. The 1-minute load average is read before and
after each run: the machine is shared, and wall times scale with it. No VLM is involved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

LABEL = "classical oracle map (no VLM) and a distilled student; synthetic slides; end-to-end CLI runs"


@dataclass(kw_only=True)
class CommandTiming:
    """One whole ``tissue-oracle segment`` command, split by the audit store's timestamps."""

    slides: int
    grid_patches: int
    wall_s: float
    startup_s: float
    slides_s: float
    wrap_up_s: float
    segment_s: float
    """Summed ``summary.json`` seconds: each slide's stages before its outputs are written."""
    patches_per_s: float
    """Grid patches per second of the whole command: the end-to-end figure."""
    patches_per_s_after_startup: float
    load_before: float
    load_after: float

    @classmethod
    def read(cls, out: Path) -> CommandTiming:
        return cls(**json.loads((out / "timing.json").read_text()))


def timed_segment(slides: list[Path], out: Path, extra: list[str]) -> CommandTiming:
    """``tissue-oracle segment SLIDES --out OUT EXTRA`` in a fresh interpreter; its timing, also
    written to ``OUT/timing.json`` (so a reused run keeps its figures). ``OUT`` is emptied first."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: an old store's slides would join the span
    cmd = [sys.executable, "-m", "tissue_oracle.agent.cli", "segment", *map(str, slides), "--out", str(out)]
    load_before = os.getloadavg()[0]
    launched = datetime.now()
    started = time.perf_counter()
    subprocess.run([*cmd, *extra], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    first, last = _slide_span(out / "audit.duckdb")
    startup = (first - launched).total_seconds()
    span = (last - first).total_seconds()
    summaries = [json.loads((out / s.stem / "summary.json").read_text()) for s in slides]
    grid = sum(int(m["patches"]["rows"]) * int(m["patches"]["cols"]) for m in summaries)
    timing = CommandTiming(
        slides=len(slides),
        grid_patches=grid,
        wall_s=round(wall, 2),
        startup_s=round(startup, 2),
        slides_s=round(span, 2),
        wrap_up_s=round(wall - startup - span, 2),
        segment_s=round(sum(float(m["seconds"]) for m in summaries), 2),
        patches_per_s=round(grid / wall, 1),
        patches_per_s_after_startup=round(grid / (wall - startup), 1),
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )
    (out / "timing.json").write_text(json.dumps(asdict(timing), indent=2) + "\n")
    return timing


def _slide_span(db: Path) -> tuple[datetime, datetime]:
    """The first slide's start and the last slide's finish recorded in the run's store."""
    from tissue_oracle.store.audit_store import AuditStore

    sql = "SELECT min(started_at), max(finished_at) FROM slides"
    with AuditStore.open(db, read_only=True) as store:
        row = store.query(lambda c: c.execute(sql).fetchone())
    if row is None or row[0] is None or row[1] is None:
        raise RuntimeError(f"{str(db)!r} records no finished slide: the run failed")
    return row[0], row[1]


def model_load_seconds(checkpoint: Path) -> float:
    """A fresh interpreter importing torch and timm and building the student on CPU (seconds)."""
    code = (
        "import time; t = time.perf_counter(); "
        "from tissue_oracle.oracles.student import build; "
        f"build({str(checkpoint)!r}, device='cpu'); print(time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 2)


def speed_runs(
    slides: list[Path], out: Path, checkpoint: Path, runs: dict[str, list[str]], *, reuse: bool = False
) -> dict[str, Any]:
    """Time each named run (``name -> extra CLI arguments``) and the student's model load.

    A run whose ``OUT/NAME/timing.json`` exists is kept when ``reuse``.
    """
    figures: dict[str, Any] = {"model_load_s": model_load_seconds(checkpoint)}
    for name, extra in runs.items():
        folder = out / name
        if reuse and (folder / "timing.json").is_file():
            figures[name] = asdict(CommandTiming.read(folder))
        else:
            figures[name] = asdict(timed_segment(slides, folder, extra))
    return figures


def synthetic_slides(folder: Path) -> list[Path]:
    """The folder's *.tiff slides, sorted; a usage error naming the folder when it holds none."""
    paths = sorted(folder.glob("*.tiff"))
    if not paths:
        raise typer.BadParameter(
            f"no *.tiff slides in {str(folder)!r}; write some with `tissue-oracle synth`"
        )
    return paths


def main(
    slides: Path = typer.Option(..., "--slides", help="Folder of synthetic slides (*.tiff)."),
    student: Path = typer.Option(..., "--student", help="The student.pt to time."),
    out: Path = typer.Option(Path("bench-out/student-speed"), "--out"),
    reuse: bool = typer.Option(False, "--reuse", help="Keep OUT's runs that have a timing.json."),
) -> None:
    """End-to-end patches/s of a student run and of the classical map run, same slides, same invocation."""
    out.mkdir(parents=True, exist_ok=True)
    paths = synthetic_slides(slides)
    runs = {"classical_map": [], "student": ["--classifier", f"student:{student}"]}
    figures = {"label": LABEL, **speed_runs(paths, out, student, runs, reuse=reuse)}
    figures["student_over_classical_map"] = round(
        figures["student"]["patches_per_s"] / figures["classical_map"]["patches_per_s"], 2
    )
    (out / "student_speed.json").write_text(json.dumps(figures, indent=2) + "\n")
    typer.echo(json.dumps(figures, indent=2))


if __name__ == "__main__":
    typer.run(main)
