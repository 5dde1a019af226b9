"""PNG plots of the benchmark (matplotlib, Agg backend: no display needed).

- ``dice_per_stain``: grouped bars, Dice per stain per method, with the std over slides;
- ``dice_vs_calls``: every method's mean Dice against its mean oracle calls per slide, and the
  SIMULATED policy experiment's points. Simulated series say SIMULATED in legend and title.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.bench.evaluation.metrics import summarise
from tissue_oracle.bench.evaluation.report import label

Row = dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dice_per_stain(rows: Sequence[Row], group: str, path: Path) -> Path | None:
    """Bars of mean Dice per stain for each method in ``group``; None when there is nothing to plot."""
    rows = [r for r in rows if r["group"] == group and "dice" in r and "error" not in r]
    if not rows:
        return None
    plt = _pyplot()
    stains = sorted({r["stain"] for r in rows})
    methods = list(dict.fromkeys(label(r) for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(stains) + 2) + 3.5, 4.2))
    x = np.arange(len(stains))
    for i, name in enumerate(methods):
        stats = [summarise(r["dice"] for r in rows if label(r) == name and r["stain"] == s) for s in stains]
        means = [s.mean if s.n else 0.0 for s in stats]
        errs = [s.std if s.n else 0.0 for s in stats]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=errs, label=name, capsize=2)
    word = "Agreement Dice" if {r.get("reference_kind") for r in rows} == {"agreement"} else "Dice"
    ax.set_xticks(x, stains)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"patch {word}")
    ax.set_title(f"{word} per stain: {group}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dice_vs_calls(rows: Sequence[Row], policy_points: Sequence[Row], path: Path) -> Path | None:
    """Mean Dice against mean oracle calls per slide (log x) over all scored slides, per method,
    and the SIMULATED policy settings. Simulated series use crosses and say SIMULATED."""
    rows = [r for r in rows if "dice" in r and "error" not in r and r.get("calls")]
    if not rows and not policy_points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10.0, 4.6))
    colours = plt.get_cmap("tab20").colors
    for i, name in enumerate(dict.fromkeys(label(r) for r in rows)):
        mine = [r for r in rows if label(r) == name]
        calls = summarise(r["calls"] for r in mine).mean
        dice = summarise(r["dice"] for r in mine).mean
        marker = "x" if mine[0].get("simulated") else "o"
        ax.scatter([max(calls, 1)], [dice], marker=marker, color=colours[i % 20], s=40, label=name)
    if policy_points:
        for setting in dict.fromkeys(p["setting"] for p in policy_points):
            pts = sorted((p for p in policy_points if p["setting"] == setting), key=lambda p: p["calls"])
            ax.plot(
                [max(p["calls"], 1) for p in pts],
                [p["dice"] for p in pts],
                "--o",
                ms=3,
                label=f"SIMULATED {setting}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("oracle calls per slide")
    ax.set_ylabel("patch Dice")
    has_sim = bool(policy_points) or any(r.get("simulated") for r in rows)
    ax.set_title("Dice against calls" + (" (SIMULATED oracle series marked)" if has_sim else ""))
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
