"""Student figures on held-out synthetic slides: agreement with the teacher, speed, and the cascade curve.

    python -m tissue_oracle.bench.perf.student_bench --slides HELDOUT/ --student S/student.pt --out OUT

The teacher is the **classical oracle** (no VLM) in the per-patch flow (``classify.classical_map``
off, the flow its distillation labels came from). Every figure below comes from it and from the
student; none is a VLM result.

1. The held-out slides are segmented twice through the real CLI, in this process's run: the
   teacher (default policy, classical in every role) and ``--classifier student:PATH`` (the student
   labels patches; boxes, review and Auto-context stay classical, as the roles resolve).
2. Per slide: the student run's final mask against the teacher run's (Dice), the patch labels
   against the teacher's (F1 with tissue positive, over the patches both runs decided), and both
   against the synthetic truth.
3. Speed, end to end on this machine: grid patches per second of slide wall time (reads,
   clustering, classification, review, clean-up, outputs), and the classify stage alone (reads
   included), for the student run and for the teacher run measured in the same invocation.
4. The cascade curve: for each threshold, the student's calibrated confidence on every patch the
   teacher's oracle answered decides whether the oracle is asked (replayed from the teacher run's
   answers, patch by patch, before clean-up); oracle calls at ``classify.batch_size`` per question
   against the plain run, and Dice lost against the teacher's labels and against truth.
5. Optionally (``--cascade-threshold``) one real cascade run through the CLI at that threshold.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import typer

from tissue_oracle.bench.synth.truth import find_truth
from tissue_oracle.oracles.student import build as build_student
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.schemas import PatchLabelsRequest, PatchRef
from tissue_oracle.tools.slides import open_slide

LABEL = "classical oracle teacher (no VLM) and its distilled student; synthetic held-out slides"
ORACLE_SOURCES = ("zero_shot", "few_shot")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def teacher_policy(out: Path) -> Path:
    """The default policy in the per-patch flow (the flow the distillation labels came from)."""
    path = out / "teacher_policy.yaml"
    path.write_text(load_policy("default").with_updates({"classify.classical_map": False}).to_yaml())
    return path


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
        row["teacher_dice_vs_truth"] = round(_dice(t_mask, truth[: t_mask.shape[0], : t_mask.shape[1]]), 4)
        row["student_dice_vs_truth"] = round(_dice(s_mask, truth[: s_mask.shape[0], : s_mask.shape[1]]), 4)
    for name, folder in (("teacher", teacher), ("student", student)):
        row[f"{name}_speed"] = _speed(json.loads((folder / "summary.json").read_text()))
    return row


# --------------------------------------------------------------------------- the cascade curve


def student_confidences(student: Any, slide: Path, cells: list[tuple[int, int]], size: int) -> np.ndarray:
    """(N, 2): the student's tissue label and calibrated confidence for each level-0 cell corner."""
    refs = [PatchRef(x=x, y=y, size=size) for x, y in cells]
    with open_slide(slide) as wsi:
        images = [wsi.read_patch(ref, student.spec.patch_px) for ref in refs]
    answer = student.classify(PatchLabelsRequest(patches=refs, images=images))
    return np.array([(lab.label == "tissue", lab.confidence) for lab in answer.labels], dtype=np.float64)


def cascade_curve(
    per_slide: dict[str, dict[str, Any]], thresholds: tuple[float, ...], batch: int, request: int = 64
) -> list[dict[str, Any]]:
    """Calls saved and Dice lost per threshold, over all slides (see the module docstring, step 4).

    ``per_slide[slide]`` holds ``teacher`` (bool labels of the oracle-answered patches, raster order),
    ``student`` ((N, 2) label, confidence), ``truth`` (bool or None), and ``rest`` (the teacher's
    tissue count outside those patches, which the cascade leaves alone).
    """
    rows = []
    plain_calls = sum(math.ceil(len(d["teacher"]) / batch) for d in per_slide.values())
    for t in thresholds:
        calls, dice_t, dice_truth_lost = 0, [], []
        for d in per_slide.values():
            teacher, s_label, conf = d["teacher"], d["student"][:, 0] > 0.5, d["student"][:, 1]
            unsure = conf < t
            for i in range(0, len(unsure), request):  # the stage sends 64 patches per cascade question
                calls += math.ceil(int(unsure[i : i + request].sum()) / batch)
            mixed = np.where(unsure, teacher, s_label)
            dice_t.append(
                _dice(mixed, teacher) if d["rest"] == 0 else _dice_with_rest(mixed, teacher, d["rest"])
            )
            if d["truth"] is not None:
                dice_truth_lost.append(_dice(teacher, d["truth"]) - _dice(mixed, d["truth"]))
        rows.append(
            {
                "threshold": t,
                "oracle_calls": calls,
                "plain_calls": plain_calls,
                "calls_saved": round(1 - calls / plain_calls, 4) if plain_calls else 0.0,
                "worst_slide_dice_vs_teacher": round(min(dice_t), 4),
                "mean_dice_lost_vs_teacher": round(1 - float(np.mean(dice_t)), 4),
                "worst_dice_lost_vs_truth": round(max(dice_truth_lost), 4) if dice_truth_lost else None,
            }
        )
    return rows


def _dice_with_rest(mixed: np.ndarray, teacher: np.ndarray, rest: int) -> float:
    """Dice of two slide masks that agree on ``rest`` tissue patches outside the compared ones."""
    inter = int((mixed & teacher).sum()) + rest
    return 2.0 * inter / (int(mixed.sum()) + int(teacher.sum()) + 2 * rest)


def curve_inputs(slides: list[Path], teacher_out: Path, student: Any, patch_size: int) -> dict[str, Any]:
    per_slide: dict[str, Any] = {}
    for slide in slides:
        labels = _labels(teacher_out / slide.stem)
        cells = sorted((k for k, v in labels.items() if v[1] in ORACLE_SOURCES), key=lambda k: (k[1], k[0]))
        truth = _truth_grid(slide, patch_size)
        per_slide[slide.stem] = {
            "teacher": np.array([labels[k][0] for k in cells], bool),
            "student": student_confidences(student, slide, cells, patch_size),
            "truth": None
            if truth is None
            else np.array([truth[y // patch_size, x // patch_size] for x, y in cells]),
            "rest": sum(v[0] for k, v in labels.items() if v[1] not in ORACLE_SOURCES),
        }
    return per_slide


def real_cascade(
    slides: list[Path], out: Path, checkpoint: Path, threshold: float, teacher_out: Path
) -> dict[str, Any]:
    """One cascade run through the CLI: oracle calls against the teacher run's, Dice against its masks."""
    from tissue_oracle.store.reads import StoreReads

    policy = out / "cascade_policy.yaml"
    cascaded = load_policy("default").with_updates(
        {
            "classify.classical_map": False,
            "cascade.enabled": True,
            "cascade.student": f"student:{checkpoint}",
            "cascade.confidence": threshold,
        }
    )
    policy.write_text(cascaded.to_yaml())
    wall = segment(slides, out / "cascade", policy, [])

    def oracle_calls(db: Path) -> int:
        return StoreReads.open_read_only(db).stage_backend_calls("classify_patches", "classical")

    plain, cascade = (
        oracle_calls(teacher_out / "audit.duckdb"),
        oracle_calls(out / "cascade" / "audit.duckdb"),
    )
    dice = {
        s.stem: round(
            _dice(
                np.load(out / "cascade" / s.stem / "mask.npy") > 0,
                np.load(teacher_out / s.stem / "mask.npy") > 0,
            ),
            4,
        )
        for s in slides
    }
    return {
        "threshold": threshold,
        "plain_oracle_calls": plain,
        "cascade_oracle_calls": cascade,
        "calls_saved": round(1 - cascade / plain, 4) if plain else 0.0,
        "mask_dice_vs_teacher": dice,
        "wall_s": round(wall, 1),
    }


def main(
    slides: Path = typer.Option(..., "--slides", help="Folder of held-out synthetic slides (*.tiff)."),
    student: Path = typer.Option(..., "--student", help="The student.pt to measure."),
    out: Path = typer.Option(Path("bench-out/student"), "--out"),
    cascade_threshold: float | None = typer.Option(
        None, "--cascade-threshold", help="Also run the real cascade at this threshold."
    ),
    reuse: bool = typer.Option(False, "--reuse", help="Keep OUT's teacher and student runs where present."),
) -> None:
    """Held-out agreement, end-to-end speed and the cascade curve of a student (classical teacher)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(slides.glob("*.tiff"))
    if not paths:
        raise typer.BadParameter(
            f"no *.tiff slides in {str(slides)!r}; write some with `tissue-oracle synth`"
        )
    policy = teacher_policy(out)
    patch_size = load_policy("default").classify.patch_size
    walls: dict[str, float | str] = {"teacher": "reused", "student": "reused"}
    if not (reuse and (out / "teacher").is_dir()):
        walls["teacher"] = round(segment(paths, out / "teacher", policy, []), 1)
    if not (reuse and (out / "student").is_dir()):
        student_role = ["--classifier", f"student:{student}"]
        walls["student"] = round(segment(paths, out / "student", policy, student_role), 1)
    per_slide = {
        p.stem: compare(p, out / "teacher" / p.stem, out / "student" / p.stem, patch_size) for p in paths
    }
    oracle = build_student(student, device="cpu")
    totals = {}
    for name in ("teacher", "student"):
        grid = sum(r[f"{name}_speed"]["grid_patches"] for r in per_slide.values())
        seconds = sum(r[f"{name}_speed"]["slide_seconds"] for r in per_slide.values())
        cls_n = sum(r[f"{name}_speed"]["in_scope"] for r in per_slide.values())
        cls_s = sum(r[f"{name}_speed"]["classify_seconds"] for r in per_slide.values())
        totals[name] = {
            "grid_patches_per_s": round(grid / seconds, 1),
            "classify_patches_per_s": round(cls_n / cls_s, 1) if cls_s else None,
            "command_wall_s": walls[name],
        }
    ratios = {
        k: round(totals["student"][k] / totals["teacher"][k], 2)
        for k in ("grid_patches_per_s", "classify_patches_per_s")
        if totals["student"][k] and totals["teacher"][k]
    }
    batch = load_policy("default").classify.batch_size
    curve = cascade_curve(curve_inputs(paths, out / "teacher", oracle, patch_size), THRESHOLDS, batch)
    figures: dict[str, Any] = {
        "label": LABEL,
        "student": str(student),
        "spec": oracle.spec.model_dump(),
        "per_slide": per_slide,
        "speed": {**totals, "student_over_teacher": ratios},
        "cascade_curve": curve,
    }
    if cascade_threshold is not None:
        figures["real_cascade"] = real_cascade(paths, out, student, cascade_threshold, out / "teacher")
    (out / "student_bench.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    typer.echo(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    typer.run(main)
