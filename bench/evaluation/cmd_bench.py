"""``tissue-oracle bench --suite NAME --out DIR``: the paper's tables, plots and a JSON of every figure.

Writes ``DIR/report.md`` (tables 1-3, 5, 6, cost, paired tests, artefacts, the SIMULATED policy
experiment), ``DIR/results.json`` (every row and figure; nan is null) and ``DIR/*.png``.
Synthetic slides are generated under ``DIR/data`` (or ``--data``) and reused when present.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

REAL_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def bench(
    suite: str = typer.Option("quick", help="quick | synthetic | real | folder | peers (vs CLAM etc.)"),
    out: Path = typer.Option(..., help="Folder for report.md, results.json and the PNG plots."),
    data: Path | None = typer.Option(
        None, help="suite 'folder': the labelled folder. Synthetic suites: where slides are generated."
    ),
    seed: int = typer.Option(0, help="Seed for synthetic slides, baselines and the simulated oracle."),
    send_size: int | None = typer.Option(None, help="Pixels per side of patches sent to per-patch oracles."),
    report_only: bool = typer.Option(False, help="Rebuild report.md and plots from OUT/results.json only."),
    seeds: list[str] = typer.Option(
        [],
        "--seeds",
        help="Suite 'peers': extra synthetic slides PRESET:FIRST-LAST (e.g. faint-hard:8401-8415), "
        "scored in their own 'extra' group; repeatable.",
    ),
    only_seeds: bool = typer.Option(False, help="Suite 'peers': score only the --seeds slides."),
    only_real: bool = typer.Option(
        False, help="Suite 'peers': score only the real slides, CMU-1 and the HistoQC pen thumbnails."
    ),
) -> None:
    """Benchmark segmentation, focus and review against ground truth; tables shaped like the paper's."""
    from tissue_oracle.bench.evaluation.suites import get_suite
    from tissue_oracle.tools.errors import ConfigError, TissueOracleError

    try:
        if suite == "peers":
            typer.echo(_peers(out, data, seeds, only_seeds, only_real))
            return
        if seeds or only_seeds or only_real:
            raise ConfigError(f"--seeds, --only-seeds and --only-real are for --suite peers, not {suite!r}")
        spec = get_suite(suite)
        if report_only:
            result = rerender(out)
        else:
            result = run_suite(spec, out, data=data, seed=seed, send_size=send_size, echo=typer.echo)
    except TissueOracleError as exc:
        typer.echo(f"bench: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(result['plots'])} plots")


def _peers(out: Path, data: Path | None, seeds: list[str], only_seeds: bool, only_real: bool) -> str:
    """Run ``--suite peers`` (``bench.evaluation.peer_bench``); returns what it wrote."""
    from tissue_oracle.bench.evaluation.peer_bench import SYNTH_SIZE, run_peer_bench

    real = Path(os.environ.get("TISSUE_ORACLE_REAL_DATA", REAL_DEFAULT))
    run_peer_bench(
        out,
        data=data,
        real=real,
        size=SYNTH_SIZE,
        echo=typer.echo,
        seeds=seeds,
        only_seeds=only_seeds,
        only_real=only_real,
    )
    return f"wrote {out / 'peers.md'} and {out / 'peers.json'}"


def _cases(spec: Any, out: Path, data: Path | None, seed: int, echo: Any) -> tuple[list[Any], list[str]]:
    from tissue_oracle.bench.evaluation import suites

    notes: list[str] = []
    if spec.name == "real":
        root = Path(os.environ.get("TISSUE_ORACLE_REAL_DATA", REAL_DEFAULT))
        if not root.is_dir():
            notes.append(f"SKIPPED: real data folder {str(root)!r} is absent (set TISSUE_ORACLE_REAL_DATA).")
            echo(notes[-1])
            return [], notes
        return suites.real_cases(root, spec), notes
    if spec.name == "folder":
        if data is None:
            from tissue_oracle.tools.errors import ConfigError

            raise ConfigError("suite 'folder' needs --data DIR: a folder of slides with masks")
        return suites.labelled_cases(data, patch_size=spec.patch_size, small_patch=spec.small_patch), notes
    return suites.synthetic_cases(spec, data or out / "data", seed=seed), notes


def _methods(cases: list[Any]) -> list[Any]:
    from tissue_oracle.bench.evaluation import harness, pipeline_bench

    methods = [harness.OTSU, harness.KMEANS, harness.classical_per_patch()]
    if any(c.truth_obj is not None for c in cases):
        methods.append(harness.simulated_per_patch())
    methods.extend(pipeline_bench.controller_methods(cases))
    return methods


def run_suite(
    spec: Any,
    out: Path,
    *,
    data: Path | None = None,
    seed: int = 0,
    send_size: int | None = None,
    echo: Any = print,
) -> dict[str, Any]:
    """Run a suite end to end and write its report; returns what ``results.json`` holds."""
    from tissue_oracle.bench.evaluation import harness
    from tissue_oracle.bench.evaluation.reviewer_bench import reviewer_results
    from tissue_oracle.tools.slides import open_slide

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cases, notes = _cases(spec, out, data, seed, echo)
    methods = _methods(cases) if cases else []
    total = len(cases)

    def on_case(case: Any) -> None:
        echo(
            f"[{cases.index(case) + 1}/{total}] {case.slide_id} ({case.stain}, {case.patch_size} px patches)"
        )

    rows = harness.run_cases(
        cases, methods, open_slide=open_slide, send_size=send_size or spec.send_size, seed=seed,
        work_dir=out / "work", on_case=on_case,
    )  # fmt: skip
    reviewer = reviewer_results(cases, open_slide, seed=seed, max_stains=spec.reviewer_stains)
    policy: list[dict[str, Any]] = []
    if spec.policy_experiment and cases:
        from tissue_oracle.bench.evaluation.pipeline_bench import policy_experiment

        try:
            policy = policy_experiment(cases, out / "work", seed=seed, max_slides=spec.policy_slides)
        except Exception as exc:  # the sweep is an extra: its failure must not cost the tables
            first = str(exc).splitlines()[0] if str(exc) else ""
            notes.append(f"SIMULATED policy experiment failed: {type(exc).__name__}: {first}")
    result = {
        "suite": spec.name,
        "command": " ".join(["tissue-oracle", *sys.argv[1:]]) if sys.argv else "",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "wall_s": time.perf_counter() - started,
        "notes": notes + [f"{m.name}: {m.description}" for m in methods],
        "cases": [_case_meta(c) for c in cases],
        "rows": rows,
        "reviewer": reviewer,
        "policy": policy,
    }
    return write_report(result, out)


def write_report(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Tables, paired tests and plots from ``result``; writes report.md and results.json into ``out``."""
    from tissue_oracle.bench.evaluation import plots

    rows, reviewer, policy = result["rows"], result["reviewer"], result["policy"]
    tables, tests = _tables(rows, reviewer, policy)
    result["tests"] = tests
    result["plots"] = _plots(rows, policy, out, plots)
    result["tables"] = tables
    (out / "report.md").write_text(_markdown(result, tables))
    (out / "results.json").write_text(json.dumps(_clean(result), indent=1, default=str) + "\n")
    return result


def rerender(out: Path) -> dict[str, Any]:
    """Rebuild report.md, the plots and the tests from ``out/results.json`` without re-running."""
    result = json.loads((out / "results.json").read_text())
    for table in ("rows", "reviewer", "policy"):
        result[table] = [{k: math.nan if v is None else v for k, v in r.items()} for r in result[table]]
    return write_report(result, out)


def _case_meta(case: Any) -> dict[str, Any]:
    return {
        "slide_id": case.slide_id,
        "path": str(case.path),
        "stain": case.stain,
        "group": case.group,
        "slide_width": case.slide_width,
        "slide_height": case.slide_height,
        "patch_size": case.patch_size,
        "reference_kind": case.reference_kind,
        "reference": case.reference,
        "artefact_reference": case.artefact_reference,
        "naive_calls": case.naive_calls,
    }


def _tables(
    rows: list[dict], reviewer: list[dict], policy: list[dict]
) -> tuple[dict[str, str], dict[str, list]]:
    from tissue_oracle.bench.evaluation import report

    tables: dict[str, str] = {}
    tests: dict[str, list] = {}
    scored = [r for r in rows if "dice" in r]
    for group in report.groups(scored):
        tables[f"Table 1. Segmentation per stain: {group}"] = report.segmentation_table(rows, group)
        tables[f"Table 2. Ablation by stage: {group}"] = report.stage_table(rows, group)
        tables[f"Table 3. Zero-shot against few-shot: {group}"] = report.shot_table(rows, group)
        text, tests[group] = report.tests_table(rows, group)
        tables[f"Paired Wilcoxon tests (Dice): {group}"] = text
    truth_groups = report.groups([r for r in scored if r.get("reference_kind") == "truth"])
    if len(truth_groups) > 1:
        pooled = [{**r, "group": "all synthetic"} for r in scored if r.get("reference_kind") == "truth"]
        tables["Table 1. Segmentation per stain: all synthetic slides"] = report.segmentation_table(
            pooled, "all synthetic"
        )
        text, tests["all synthetic"] = report.tests_table(pooled, "all synthetic")
        tables["Paired Wilcoxon tests (Dice): all synthetic slides"] = text
    tables["Table 5. Focus"] = report.focus_table(rows)
    tables["Table 6. Reviewer"] = report.reviewer_table(reviewer)
    tables["Cost per slide"] = report.cost_table(rows)
    tables["Artefact patches called tissue"] = report.artefact_table(rows)
    tables["SIMULATED policy experiment: Dice against calls"] = report.policy_table(policy)
    return tables, tests


def _plots(rows: list[dict], policy: list[dict], out: Path, plots: Any) -> list[str]:
    from tissue_oracle.bench.evaluation import report

    made = []
    for i, group in enumerate(report.groups(rows)):
        path = plots.dice_per_stain(rows, group, out / f"dice_per_stain_{i}_{_slug(group)}.png")
        if path is not None:
            made.append(path.name)
    path = plots.dice_vs_calls(rows, policy, out / "dice_vs_calls.png")
    if path is not None:
        made.append(path.name)
    return made


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:40]


_DISCLAIMER = (
    "Rows marked SIMULATED come from a simulated oracle that answers from ground truth through a "
    "declared error model (`bench/evaluation/simulated_oracle.py`); they measure the policy, not any "
    "model. The "
    "classical oracle is not a VLM. Real-data Dice against histolab's masks is AGREEMENT with histolab, "
    "not accuracy."
)


def _markdown(result: dict[str, Any], tables: dict[str, str]) -> str:
    errors = [r for r in result["rows"] if "error" in r]
    parts = [
        f"# tissue-oracle bench: suite `{result['suite']}`",
        f"Command: `{result['command']}` · seed {result['seed']} · {result['created']} · "
        f"{len(result['cases'])} slides · {result['wall_s']:.0f} s",
        _DISCLAIMER,
        *(f"- {n}" for n in result["notes"]),
    ]
    if errors:
        parts.append("Errors (method failed on a slide; the rest of the run went on):")
        parts.extend(f"- {r['slide_id']} / {r['method']}: {r['error'].splitlines()[0]}" for r in errors)
    for title, text in tables.items():
        parts.append(f"## {title}\n\n{text}")
    parts.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in result["plots"]))
    return "\n\n".join(parts) + "\n"


def _clean(obj: Any) -> Any:
    """nan/inf to null and numpy scalars to Python, recursively, for strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
