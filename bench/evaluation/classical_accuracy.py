"""Classical oracle accuracy on synthetic slides: patch labels and focus against exact truth, per stain.

    .venv/bin/python -m tissue_oracle.bench.evaluation.classical_accuracy --slides /tmp/oracle-acc --size 4096

Generates (once) one small slide per preset x stain, labels every 512 px level-0 patch with the
classical oracle (zero-shot, no VLM: the figures are classical, never VLM results) and compares
with ``Truth.patch_labels(512, 0.5)`` and ``Truth.patch_focus(512)``. Focus agreement is over
patches that the truth and the oracle both call tissue and whose truth focus is known.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from pathlib import Path

import numpy as np

from tissue_oracle.bench.synth.generate import generate_slide
from tissue_oracle.bench.synth.truth import load_truth
from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.focus import focus_code
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import PatchLabelsRequest
from tissue_oracle.tools.slides import open_slide

STAINS = ("he", "pas", "jones", "evg", "masson", "ihc")


def ensure_slide(folder: Path, preset: str, stain: str, size: int, seed: int) -> Path:
    path = folder / f"{preset}_{stain}_{seed}.tiff"
    if not path.exists():
        generate_slide(path, preset=preset, seed=seed, width=size, height=size, stain=stain)
    return path


def label_slide(path: Path, oracle: ClassicalOracle) -> dict[str, np.ndarray]:
    """Truth and classical labels per patch: tissue (bool), focus codes (uint8)."""
    truth = load_truth(path)
    grid = truth.grid(512)
    with open_slide(path) as slide:
        refs = [grid.ref(r, c) for r, c in grid.cells()]
        images = [slide.read_region(ref.x, ref.y, 0, (512, 512)) for ref in refs]
    ctx = CallContext(
        run_id="acc", slide_id=path.stem, stage="classify_patches", role="oracle", recorder=MemoryRecorder()
    )
    answer = asyncio.run(oracle.patch_labels(PatchLabelsRequest(patches=refs, images=images), ctx))
    pred = np.array([lab.label == "tissue" for lab in answer.labels]).reshape(grid.shape)
    focus = np.array([focus_code(lab.focus) for lab in answer.labels], dtype=np.uint8).reshape(grid.shape)
    return {
        "truth": truth.patch_labels(512, 0.5),
        "pred": pred,
        "truth_focus": truth.patch_focus(512),
        "pred_focus": focus,
    }


def summarise(rows: list[dict[str, np.ndarray]]) -> dict[str, float]:
    truth = np.concatenate([r["truth"].ravel() for r in rows])
    pred = np.concatenate([r["pred"].ravel() for r in rows])
    tf = np.concatenate([r["truth_focus"].ravel() for r in rows])
    pf = np.concatenate([r["pred_focus"].ravel() for r in rows])
    tp, tn = float((truth & pred).sum()), float((~truth & ~pred).sum())
    recall = tp / max(truth.sum(), 1)
    specificity = tn / max((~truth).sum(), 1)
    both = truth & pred & (tf != 255) & (pf != 255)
    blurred_t, blurred_p = tf[both] > 0, pf[both] > 0
    return {
        "patches": float(truth.size),
        "tissue": float(truth.sum()),
        "accuracy": float((truth == pred).mean()),
        "balanced": (recall + specificity) / 2,
        "precision": tp / max(pred.sum(), 1),
        "recall": recall,
        "focus_n": float(both.sum()),
        "focus_agree": float((tf[both] == pf[both]).mean()) if both.any() else float("nan"),
        "blur_kappa": _kappa(blurred_t, blurred_p) if both.any() else float("nan"),
    }


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    observed = float((a == b).mean())
    expected = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return (observed - expected) / (1 - expected) if expected < 1 else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slides", type=Path, default=Path("/tmp/oracle-acc"))
    parser.add_argument("--size", type=int, default=4096, help="level-0 side of each slide, px")
    parser.add_argument("--presets", default="leica-like,stress")
    parser.add_argument("--stains", default=",".join(STAINS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    args.slides.mkdir(parents=True, exist_ok=True)
    oracle = ClassicalOracle()
    per_stain: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    per_preset: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    for preset in args.presets.split(","):
        for stain in args.stains.split(","):
            path = ensure_slide(args.slides, preset, stain, args.size, args.seed)
            if args.generate_only:
                continue
            result = label_slide(path, oracle)
            per_stain[stain].append(result)
            per_preset[preset].append(result)
    if args.generate_only:
        return
    print("classical oracle (classical-v1, NOT a VLM), 512 px level-0 patches, truth: tissue fraction >= 0.5")
    print(
        "| group | patches | tissue | accuracy | balanced acc | precision | recall | focus n | focus agree "
        "| blur kappa |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups = [(f"stain {k}", v) for k, v in per_stain.items()] + [
        (f"preset {k}", v) for k, v in per_preset.items()
    ]
    groups.append(("all", [r for rows in per_stain.values() for r in rows]))
    for name, rows in groups:
        s = summarise(rows)
        print(
            f"| {name} | {s['patches']:.0f} | {s['tissue']:.0f} | {s['accuracy']:.3f} | {s['balanced']:.3f} "
            f"| {s['precision']:.3f} | {s['recall']:.3f} | {s['focus_n']:.0f} | {s['focus_agree']:.3f} "
            f"| {s['blur_kappa']:.3f} |"
        )


if __name__ == "__main__":
    main()
