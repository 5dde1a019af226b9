"""Student figures on held-out synthetic slides: agreement with the teacher, speed, and the cascade curve.

    python -m tissue_oracle.bench.perf.student_bench --slides HELDOUT/ --student S/student.pt --out OUT

The teacher is the **classical oracle** (no VLM): the default policy's whole-slide map
(``classify.classical_map``), which labelled every grid patch the student was distilled from. Every
figure below comes from it and from the student; none is a VLM result.

1. The held-out slides are segmented through the real CLI, in this process's run: ``teacher`` (the
   default policy: the classical map labels every patch), ``student`` (``--classifier
   student:PATH``) and ``teacher_pp`` (the per-patch flow, ``classify.classical_map`` off: the flow
   a paid oracle runs in, whose oracle-asked patches the cascade replays).
2. Per slide: the student run's final mask against the teacher run's (Dice), its patch labels
   against the teacher's (F1 with tissue positive, over the patches both runs decided), both
   against the synthetic truth, and the student network alone on every grid patch (``direct``:
   F1 of its labels against the teacher's, which is also the Dice of the two label masks).
3. Speed on this machine, for the student run and the teacher run of the same invocation: end to
   end, grid patches per second of the whole CLI command (``bench.perf.student_speed``: start-up
   with the model load, every slide, outputs, run report; start-up, slides and wrap-up also given
   apart, with the load average), grid patches per second of slide wall time, and the classify
   stage alone (reads included).
4. The cascade curve, replayed: the patches the per-patch flow asked its oracle about
   (``teacher_pp``'s ``zero_shot``/``few_shot`` rows) go to the student first; at each threshold the
   patches under its calibrated confidence are answered by the teacher (the map's label), the
   rest keep the student's. Oracle calls are ``classify.batch_size`` patches per question within
   requests of ``cascade.request_batch`` patches, against asking about all of them. Dice lost is
   the teacher run's mask against the mask with those labels replaced; a map run's mask *is* its
   labels (no patch clean-up, no review), so the replay is exact for the teacher's own flow, per
   slide.
5. Optionally (``--cascade-threshold``) real cascade runs through the CLI in the per-patch flow,
   against ``teacher_pp``: oracle calls counted from both stores, Dice of the final masks. There
   the oracle is the per-patch classical oracle, a different classical teacher from the map the
   student learned (their masks differ on their own), so this measures that mismatch too.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import typer

from tissue_oracle.bench.perf.student_speed import speed_runs, synthetic_slides
from tissue_oracle.bench.synth.truth import find_truth
from tissue_oracle.oracles.student import build as build_student
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.distil_data import grid_cells
from tissue_oracle.tools.schemas import PatchLabelsRequest, PatchRef
from tissue_oracle.tools.slides import open_slide
from tissue_oracle.tools.stage_settings import CASCADE_REQUEST_BATCH

LABEL = "classical oracle teacher (no VLM) and its distilled student; synthetic held-out slides"
ORACLE_SOURCES = ("zero_shot", "few_shot")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def write_policy(out: Path, name: str, updates: dict[str, Any]) -> Path:
    """The default policy with ``updates``, written as ``out/name.yaml`` for the CLI."""
    path = out / f"{name}.yaml"
    path.write_text(load_policy("default").with_updates(updates).to_yaml())
    return path


#: The per-patch flow: the classifier is asked about each gated patch (a paid oracle's flow).
PER_PATCH = {"classify.classical_map": False}


def segment(slides: list[Path], out: Path, policy: Path, extra: list[str]) -> float:
    """``tissue-oracle segment`` in a subprocess; wall seconds of the whole command."""
    cmd = [sys.executable, "-m", "tissue_oracle.agent.cli", "segment", *map(str, slides), "--out", str(out)]
    cmd += ["--policy", str(policy), *extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum() + b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _labels(folder: Path) -> dict[tuple[int, int], tuple[bool, str]]:
    table = pq.read_table(folder / "patches.parquet").to_pydict()
    return {
        (int(x), int(y)): (label == "tissue", stage)
        for x, y, label, stage in zip(table["x"], table["y"], table["label"], table["stage"], strict=True)
    }


def _truth_grid(slide: Path, patch_size: int) -> np.ndarray | None:
    truth = find_truth(slide)
    return None if truth is None else np.asarray(truth.patch_labels(patch_size)) > 0


def _dice_vs_truth(mask: np.ndarray, truth: np.ndarray) -> float:
    return round(_dice(mask, truth[: mask.shape[0], : mask.shape[1]]), 4)


def _speed(summary: dict[str, Any]) -> dict[str, float]:
    p = summary["patches"]
    grid = int(p["rows"]) * int(p["cols"])
    classify = summary["stages"].get("classify_patches", {}).get("seconds", 0.0)
    return {
        "grid_patches": grid,
        "in_scope": int(p["in_scope"]),
        "slide_seconds": round(float(summary["seconds"]), 2),
        "grid_patches_per_s": round(grid / float(summary["seconds"]), 1),
        "classify_seconds": round(float(classify), 2),
        "classify_patches_per_s": round(int(p["in_scope"]) / classify, 1) if classify else float("nan"),
    }


def compare(slide: Path, teacher: Path, student: Path, patch_size: int) -> dict[str, Any]:
    """Masks and labels of the student run against the teacher run (and both against truth)."""
    t_mask = np.load(teacher / "mask.npy") > 0
    s_mask = np.load(student / "mask.npy") > 0
    t_lab, s_lab = _labels(teacher), _labels(student)
    both = sorted(set(t_lab) & set(s_lab))
    t_y = np.array([t_lab[k][0] for k in both])
    s_y = np.array([s_lab[k][0] for k in both])
    row: dict[str, Any] = {
        "mask_dice_vs_teacher": round(_dice(s_mask, t_mask), 4),
        "label_f1_vs_teacher": round(float(fit.binary_metrics(s_y, t_y)["f1"]), 4),
        "patches_compared": len(both),
        "student_decided": sum(s_lab[k][1] == "student" for k in s_lab),
    }
    truth = _truth_grid(slide, patch_size)
    if truth is not None:
        row["teacher_dice_vs_truth"] = _dice_vs_truth(t_mask, truth)
        row["student_dice_vs_truth"] = _dice_vs_truth(s_mask, truth)
    for name, folder in (("teacher", teacher), ("student", student)):
        row[f"{name}_speed"] = _speed(json.loads((folder / "summary.json").read_text()))
    return row


def direct(
    teacher: dict[tuple[int, int], tuple[bool, str]],
    grid: dict[tuple[int, int], Any],
    hard: dict[str, np.ndarray] | None = None,
    patch_size: int = 512,
) -> dict[str, Any]:
    """The student network alone on every patch the teacher labelled: F1 (= Dice of the label masks).

    ``hard`` (name -> bool per grid cell, from the truth: see ``hard_cells``) counts where the
    student and the teacher disagree.
    """
    cells = sorted(teacher)
    t_y = np.array([teacher[k][0] for k in cells])
    s_y = np.array([grid[k][0] > 0.5 for k in cells])
    m = fit.binary_metrics(s_y, t_y)
    row: dict[str, Any] = {
        "f1": round(float(m["f1"]), 4),
        "precision": round(float(m["precision"]), 4),
        "recall": round(float(m["recall"]), 4),
        "disagree": int((s_y != t_y).sum()),
        "patches": len(cells),
    }
    if hard is not None:
        wrong = [k for k, a, b in zip(cells, s_y, t_y, strict=True) if a != b]
        row["disagree_where"] = {
            name: sum(bool(where[y // patch_size, x // patch_size]) for x, y in wrong)
            for name, where in hard.items()
        }
    return row


def hard_cells(slide: Path, patch_size: int) -> dict[str, np.ndarray] | None:
    """Where a patch is hard, from the synthetic truth: ``edge`` (tissue share 0.25-0.75, near the
    0.5 rule), ``faint_stain``, ``pen``, ``speckle`` (precipitate) and ``any_artefact``."""
    truth = find_truth(slide)
    if truth is None:
        return None
    share = np.asarray(truth.tissue_fraction(patch_size))
    arte = {k: np.asarray(v, bool) for k, v in truth.patch_artefacts(patch_size).items()}
    none = np.zeros(share.shape, bool)
    out = {"edge": (share >= 0.25) & (share <= 0.75)}
    out.update({"faint_stain": arte.get("faint", none), "pen": arte.get("pen", none)})
    out["speckle"] = arte.get("speckle", none)
    out["any_artefact"] = np.logical_or.reduce([none, *arte.values()])
    return out


# --------------------------------------------------------------------------- the cascade curve


def student_confidences(student: Any, slide: Path, cells: list[tuple[int, int]], size: int) -> np.ndarray:
    """(N, 2): the student's tissue label and calibrated confidence for each level-0 cell corner."""
    refs = [PatchRef(x=x, y=y, size=size) for x, y in cells]
    with open_slide(slide) as wsi:  # the pixels distil trained on (tools.student_tiles)
        tiles = grid_cells(wsi, size, np.array(cells, np.int64).reshape(-1, 2) // size, student.spec.patch_px)
    answer = student.classify(PatchLabelsRequest(patches=refs, images=list(tiles)))
    return np.array([(lab.label == "tissue", lab.confidence) for lab in answer.labels], dtype=np.float64)


def cascade_curve(
    per_slide: dict[str, dict[str, Any]],
    thresholds: tuple[float, ...],
    batch: int,
    request: int = CASCADE_REQUEST_BATCH,
) -> list[dict[str, Any]]:
    """Calls saved and Dice lost per threshold, over all slides (see the module docstring, step 4).

    ``per_slide[slide]`` holds ``teacher`` (bool labels of the oracle-asked patches, raster order),
    ``student`` ((N, 2) label, confidence), ``truth`` (bool or None), and ``rest`` (the teacher's
    tissue count outside those patches, which the cascade leaves alone). The teacher's mask is
    its labels, so the Dice of the replayed mask against it is exact.
    """
    rows = []
    plain_calls = sum(_calls(np.ones(len(d["teacher"]), bool), batch, request) for d in per_slide.values())
    for t in thresholds:
        calls, dice_t, dice_truth_lost = 0, [], []
        for d in per_slide.values():
            teacher, s_label, conf = d["teacher"], d["student"][:, 0] > 0.5, d["student"][:, 1]
            unsure = conf < t
            calls += _calls(unsure, batch, request)
            mixed = np.where(unsure, teacher, s_label)
            dice_t.append(_dice_with_rest(mixed, teacher, d["rest"]))
            if d["truth"] is not None:
                dice_truth_lost.append(_dice(teacher, d["truth"]) - _dice(mixed, d["truth"]))
        rows.append(
            {
                "threshold": t,
                "oracle_calls": calls,
                "plain_calls": plain_calls,
                "calls_saved": round(1 - calls / plain_calls, 4) if plain_calls else 0.0,
                "mean_dice_lost_vs_teacher": round(1 - float(np.mean(dice_t)), 4),
                "worst_slide_dice_lost_vs_teacher": round(1 - min(dice_t), 4),
                "worst_dice_lost_vs_truth": round(max(dice_truth_lost), 4) if dice_truth_lost else None,
            }
        )
    return rows


def _calls(ask: np.ndarray, batch: int, request: int) -> int:
    """Oracle questions for the patches ``ask`` marks: ``batch`` per question within each request."""
    return sum(math.ceil(int(ask[i : i + request].sum()) / batch) for i in range(0, len(ask), request))


def _dice_with_rest(mixed: np.ndarray, teacher: np.ndarray, rest: int) -> float:
    """Dice of two slide masks that agree on ``rest`` tissue patches outside the compared ones."""
    inter = int((mixed & teacher).sum()) + rest
    denom = int(mixed.sum()) + int(teacher.sum()) + 2 * rest
    return 1.0 if denom == 0 else 2.0 * inter / denom


def student_grid(
    student: Any, slide: Path, cells: list[tuple[int, int]], size: int
) -> dict[tuple[int, int], Any]:
    """The student's (label, confidence) on each level-0 cell corner given."""
    answers = student_confidences(student, slide, cells, size)
    return {k: answers[i] for i, k in enumerate(cells)}


def curve_inputs(
    slide: Path,
    teacher: dict[tuple[int, int], tuple[bool, str]],
    asked_run: Path,
    grid: dict[tuple[int, int], Any],
    patch_size: int,
) -> dict[str, Any]:
    """One slide's replay inputs: the cells ``asked_run``'s oracle answered, the teacher's labels there."""
    asked = _labels(asked_run)
    cells = sorted((k for k, v in asked.items() if v[1] in ORACLE_SOURCES), key=lambda k: (k[1], k[0]))
    truth = _truth_grid(slide, patch_size)
    inside = set(cells)
    return {
        "teacher": np.array([teacher[k][0] for k in cells], bool),
        "student": np.array([grid[k] for k in cells], dtype=np.float64).reshape(-1, 2),
        "truth": None
        if truth is None
        else np.array([truth[y // patch_size, x // patch_size] for x, y in cells], bool),
        "rest": sum(v[0] for k, v in teacher.items() if k not in inside),
    }


def real_cascade(
    slides: list[Path], out: Path, checkpoint: Path, threshold: float, baseline: Path, patch_size: int
) -> dict[str, Any]:
    """One cascade run through the CLI (per-patch flow): oracle calls and masks against ``baseline``'s,
    and both runs' masks against the synthetic truth (the oracle the cascade falls back on is not the
    teacher the student learned, so a patch they dispute can be won by either)."""
    from tissue_oracle.store.reads import StoreReads

    updates = {
        **PER_PATCH,
        "cascade.enabled": True,
        "cascade.student": f"student:{checkpoint}",
        "cascade.confidence": threshold,
    }
    run = out / f"cascade_{threshold:g}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh store: calls are counted over every run in it
    wall = segment(slides, run, write_policy(out, f"cascade_{threshold:g}", updates), [])

    def oracle_calls(db: Path) -> int:
        return StoreReads.open_read_only(db).stage_backend_calls("classify_patches", "classical")

    plain, cascade = oracle_calls(baseline / "audit.duckdb"), oracle_calls(run / "audit.duckdb")
    masks = {
        name: {s.stem: np.load(folder / s.stem / "mask.npy") > 0 for s in slides}
        for name, folder in (("cascade", run), ("plain", baseline))
    }
    dice = {s.stem: round(_dice(masks["cascade"][s.stem], masks["plain"][s.stem]), 4) for s in slides}
    truths = {s.stem: t for s in slides if (t := _truth_grid(s, patch_size)) is not None}
    vs_truth = {
        name: {stem: _dice_vs_truth(m, truths[stem]) for stem, m in by_slide.items() if stem in truths}
        for name, by_slide in masks.items()
    }
    return {
        "threshold": threshold,
        "plain_oracle_calls": plain,
        "cascade_oracle_calls": cascade,
        "calls_saved": round(1 - cascade / plain, 4) if plain else 0.0,
        "mask_dice_vs_teacher_pp": dice,
        "mean_dice_lost": round(1 - float(np.mean(list(dice.values()))), 4) if dice else None,
        "worst_dice_lost": round(1 - min(dice.values()), 4) if dice else None,
        "dice_vs_truth": vs_truth,
        "wall_s": round(wall, 1),
    }


def main(
    slides: Path = typer.Option(..., "--slides", help="Folder of held-out synthetic slides (*.tiff)."),
    student: Path = typer.Option(..., "--student", help="The student.pt to measure."),
    out: Path = typer.Option(Path("bench-out/student"), "--out"),
    cascade_threshold: list[float] = typer.Option(
        [], "--cascade-threshold", help="Also run the real cascade at this threshold (repeatable)."
    ),
    reuse: bool = typer.Option(False, "--reuse", help="Keep OUT's teacher and student runs where present."),
) -> None:
    """Held-out agreement, end-to-end speed and the cascade curve of a student (classical teacher)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = synthetic_slides(slides)
    policy = load_policy("default")
    patch_size = policy.classify.patch_size
    runs = {
        "teacher": (write_policy(out, "teacher", {}), []),
        "student": (write_policy(out, "teacher", {}), ["--classifier", f"student:{student}"]),
        "teacher_pp": (write_policy(out, "teacher_pp", PER_PATCH), []),
    }
    timed = speed_runs(
        paths,
        out,
        student,
        {name: ["--policy", str(pol), *extra] for name, (pol, extra) in runs.items()},
        reuse=reuse,
    )
    per_slide = {
        p.stem: compare(p, out / "teacher" / p.stem, out / "student" / p.stem, patch_size) for p in paths
    }
    oracle = build_student(student, device="cpu")
    replay = {}
    for p in paths:
        teacher = _labels(out / "teacher" / p.stem)
        grid = student_grid(oracle, p, sorted(teacher, key=lambda k: (k[1], k[0])), patch_size)
        per_slide[p.stem]["direct"] = direct(teacher, grid, hard_cells(p, patch_size), patch_size)
        replay[p.stem] = curve_inputs(p, teacher, out / "teacher_pp" / p.stem, grid, patch_size)
    totals = {}
    for name in ("teacher", "student"):
        grid_n = sum(r[f"{name}_speed"]["grid_patches"] for r in per_slide.values())
        seconds = sum(r[f"{name}_speed"]["slide_seconds"] for r in per_slide.values())
        cls_n = sum(r[f"{name}_speed"]["in_scope"] for r in per_slide.values())
        cls_s = sum(r[f"{name}_speed"]["classify_seconds"] for r in per_slide.values())
        totals[name] = {
            "end_to_end_patches_per_s": timed[name]["patches_per_s"],
            "grid_patches_per_s": round(grid_n / seconds, 1),
            "classify_patches_per_s": round(cls_n / cls_s, 1) if cls_s else None,
            "command": timed[name],
        }
    ratios = {
        k: round(totals["student"][k] / totals["teacher"][k], 2)
        for k in ("end_to_end_patches_per_s", "grid_patches_per_s", "classify_patches_per_s")
        if totals["student"][k] and totals["teacher"][k]
    }
    batch, request = policy.classify.batch_size, policy.cascade.request_batch
    figures: dict[str, Any] = {
        "label": LABEL,
        "student": str(student),
        "spec": oracle.spec.model_dump(),
        "per_slide": per_slide,
        "speed": {**totals, "model_load_s": timed["model_load_s"], "student_over_teacher": ratios},
        "cascade_request_batch": request,
        "cascade_curve": cascade_curve(replay, THRESHOLDS, batch, request),
        "real_cascade": [
            real_cascade(paths, out, student, t, out / "teacher_pp", patch_size) for t in cascade_threshold
        ],
    }
    (out / "student_bench.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    typer.echo(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    typer.run(main)
