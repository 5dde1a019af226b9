"""Markdown tables shaped like the paper's, from the harness's result rows.

Tables: 1 segmentation per stain; 2 ablation by stage; 3 zero-shot against few-shot; 5 focus;
6 reviewer; plus cost, paired tests, artefacts and the SIMULATED policy experiment. Every table
says what its reference is (exact synthetic truth, or AGREEMENT with another tool's mask), and
every row produced by the simulated oracle carries "SIMULATED" in its method name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from tissue_oracle.bench.evaluation.metrics import fmt, stain_table, summarise
from tissue_oracle.bench.evaluation.stats import compare_methods

Row = dict[str, Any]


def md_table(headers: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are printed with ``fmt`` when numeric."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for cells in body:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def label(row: Row) -> str:
    """A method's display name; simulated rows always say so."""
    name = str(row["method"])
    return name if not row.get("simulated") or "SIMULATED" in name else f"SIMULATED {name}"


def _ok(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if "error" not in r]


def _methods(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(label(r) for r in rows))


def groups(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r["group"] for r in rows))


def _metric_word(rows: Sequence[Row]) -> str:
    kinds = {r.get("reference_kind") for r in rows}
    return "Agreement Dice" if kinds == {"agreement"} else "Dice"


def segmentation_table(rows: Sequence[Row], group: str) -> str:
    """Table 1: Dice per stain (mean ± std over slides), overall, cross-stain std of the means, minimum."""
    rows = [r for r in _ok(rows) if r["group"] == group and "dice" in r]
    if not rows:
        return f"_No tissue reference in {group!r}._"
    stains = sorted({r["stain"] for r in rows})
    word = _metric_word(rows)
    headers = [
        "method",
        *[f"{s} {word}" for s in stains],
        f"all {word}",
        "precision",
        "recall",
        "cross-stain std",
        "min",
    ]
    body = []
    for name in _methods(rows):
        mine = [r for r in rows if label(r) == name]
        table = stain_table([r["dice"] for r in mine], [r["stain"] for r in mine])
        cells = [table.per_stain[s].fmt() if s in table.per_stain else "n/a" for s in stains]
        prec = summarise(r["precision"] for r in mine).fmt()
        rec = summarise(r["recall"] for r in mine).fmt()
        body.append([name, *cells, table.overall.fmt(), prec, rec, table.cross_stain_std, table.worst])
    n = len({r["slide_id"] for r in rows})
    return f"{md_table(headers, body)}\n\n_{n} slides; reference: {rows[0]['reference']}._"


def stage_table(rows: Sequence[Row], group: str) -> str:
    """Table 2: the pipeline's stages (rows whose method carries a ``stage``), Dice and calls."""
    rows = [r for r in _ok(rows) if r["group"] == group and r.get("stage")]
    if not rows:
        return "_No staged pipeline rows (the controller was not available or not run)._"
    headers = ["method", "stage", "Dice", "precision", "recall", "calls/slide", "patches sent / naive"]
    body = []
    for name in _methods(rows):
        mine = [r for r in rows if label(r) == name]
        body.append(
            [
                name,
                str(mine[0]["stage"]),
                summarise(r.get("dice", math.nan) for r in mine).fmt(),
                summarise(r.get("precision", math.nan) for r in mine).fmt(),
                summarise(r.get("recall", math.nan) for r in mine).fmt(),
                summarise(r["calls"] for r in mine).mean,
                summarise(r["sent_ratio"] for r in mine).mean,
            ]
        )
    return md_table(headers, body)


def shot_table(rows: Sequence[Row], group: str) -> str:
    """Table 3: zero-shot against few-shot (rows carrying ``shot``), Dice per stain."""
    rows = [r for r in _ok(rows) if r["group"] == group and r.get("shot") and "dice" in r]
    if not rows:
        return "_No zero-shot/few-shot rows (the controller was not available or not run)._"
    stains = sorted({r["stain"] for r in rows})
    headers = ["method", "shot", *[f"{s} Dice" for s in stains], "all Dice"]
    body = []
    for name in _methods(rows):
        mine = [r for r in rows if label(r) == name]
        per = stain_table([r["dice"] for r in mine], [r["stain"] for r in mine])
        cells = [per.per_stain[s].fmt() if s in per.per_stain else "n/a" for s in stains]
        body.append([name, str(mine[0]["shot"]), *cells, per.overall.fmt()])
    return md_table(headers, body)


def focus_table(rows: Sequence[Row]) -> str:
    """Table 5: focus agreement (tissue patches both sides label) against the truth focus."""
    rows = [r for r in _ok(rows) if "focus_n" in r]
    if not rows:
        return "_No method reported focus on slides with focus truth._"
    headers = ["group", "method", "patches", "QWK (3-class)", "binary kappa", "sensitivity", "specificity"]
    body = []
    for group in groups(rows):
        for name in _methods([r for r in rows if r["group"] == group]):
            mine = [r for r in rows if r["group"] == group and label(r) == name]
            body.append(
                [
                    group,
                    name,
                    int(sum(r["focus_n"] for r in mine)),
                    *(
                        summarise(r[f"focus_{k}"] for r in mine).fmt()
                        for k in ("kappa_quadratic", "kappa_binary")
                    ),
                    *(summarise(r[f"focus_{k}"] for r in mine).fmt() for k in ("sensitivity", "specificity")),
                ]
            )
    return (
        md_table(headers, body)
        + "\n\n_Per-slide mean ± std; sensitivity = blurred patches flagged not sharp._"
    )


def reviewer_table(results: Sequence[Row]) -> str:
    """Table 6: grade accuracy (precision, recall, joint), QWK, MAE of percentage estimates."""
    if not results:
        return "_Not run in this suite (the reviewer benchmark needs exact synthetic truth)._"
    headers = [
        "reviewer",
        "stain",
        "n",
        "P acc",
        "R acc",
        "joint acc",
        "P QWK",
        "R QWK",
        "P MAE (pp)",
        "R MAE (pp)",
    ]
    keys = (
        "precision_acc",
        "recall_acc",
        "joint_acc",
        "precision_qwk",
        "recall_qwk",
        "precision_mae",
        "recall_mae",
    )
    body = [[label(r), str(r["stain"]), int(r["n"]), *(r[k] for k in keys)] for r in results]
    return md_table(headers, body)


def cost_table(rows: Sequence[Row]) -> str:
    """Cost per slide: calls, tokens, USD and wall time, and calls against classifying every patch."""
    rows = _ok(rows)
    headers = [
        "group", "method", "slides", "calls/slide", "patches sent/slide", "tokens/slide", "USD/slide",
        "wall s/slide", "calls / naive", "patches sent / naive",
    ]  # fmt: skip
    body = []
    for group in groups(rows):
        for name in _methods([r for r in rows if r["group"] == group]):
            mine = [r for r in rows if r["group"] == group and label(r) == name]
            tokens = [r["input_tokens"] + r["output_tokens"] for r in mine]
            body.append(
                [
                    group,
                    name,
                    len(mine),
                    summarise(r["calls"] for r in mine).mean,
                    summarise(r["patches_sent"] for r in mine).mean,
                    summarise(tokens).mean,
                    summarise(r["usd"] for r in mine).mean,
                    summarise(r["wall_s"] for r in mine).mean,
                    summarise(r["call_ratio"] for r in mine).mean,
                    summarise(r["sent_ratio"] for r in mine).mean,
                ]
            )
    note = (
        "_naive = one single-patch call per patch of the slide's whole grid; a call may carry a batch of "
        "patches; thumbnail baselines make no oracle calls (wall time excludes the shared thumbnail read)._"
    )
    return md_table(headers, body) + "\n\n" + note


REFERENCE_METHOD = "Otsu (CLAM)"


def tests_table(
    rows: Sequence[Row], group: str, metric: str = "dice", reference: str = REFERENCE_METHOD
) -> tuple[str, list[Row]]:
    """Paired Wilcoxon signed-rank tests of each method against ``reference``, Bonferroni over them."""
    rows = [r for r in _ok(rows) if r["group"] == group and metric in r]
    slides = list(dict.fromkeys(r["slide_id"] for r in rows))
    scores: dict[str, list[float]] = {}
    for name in _methods(rows):
        by_slide = {r["slide_id"]: r[metric] for r in rows if label(r) == name}
        scores[name] = [by_slide.get(s, math.nan) for s in slides]
    if len(scores) < 2:
        return "_Fewer than two methods: no paired tests._", []
    tests = compare_methods(scores, metric=metric, reference=reference if reference in scores else None)
    headers = ["A", "B", "pairs", "non-zero", "median A-B", "W", "p", "p (Bonferroni)", "note"]
    body = [
        [t.a, t.b, t.n_pairs, t.n_nonzero, t.median_diff, t.statistic, t.p_value, t.p_adjusted, t.note or ""]
        for t in tests
    ]
    return md_table(headers, body), [t.as_dict() for t in tests]


def artefact_table(rows: Sequence[Row]) -> str:
    """Share of artefact-marked patches each method calls tissue (lower is better on glass)."""
    rows = [r for r in _ok(rows) if r.get("artefact_patches")]
    if not rows:
        return "_No artefact references._"
    headers = ["group", "method", "slides", "marked patches", "called tissue (mean ± std over slides)"]
    body = []
    for group in groups(rows):
        for name in _methods([r for r in rows if r["group"] == group]):
            mine = [r for r in rows if r["group"] == group and label(r) == name]
            body.append(
                [group, name, len(mine), int(sum(r["artefact_patches"] for r in mine)),
                 summarise(r["artefact_called_tissue"] for r in mine).fmt()]
            )  # fmt: skip
    note = (
        "_On real images the marks often lie over tissue, where 'tissue' is a fair answer; on glass it is "
        "a false positive. Synthetic rows count glass patches only._"
    )
    return md_table(headers, body) + "\n\n" + note


def _budget(value: Any) -> str:
    """A call cap for a table cell: "none" when there is no cap (None, or NaN after a JSON round trip)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    return str(int(value))


def policy_table(points: Sequence[Row]) -> str:
    """The SIMULATED policy experiment: Dice against calls per setting (tau_g, rounds, budget)."""
    if not points:
        return "_Not run in this suite (it needs synthetic truth and the controller)._"
    headers = [
        "SIMULATED setting",
        "tau_g",
        "max rounds",
        "budget (calls/slide)",
        "Dice",
        "calls/slide",
        "refined regions",
    ]
    body = [
        [
            str(p["setting"]),
            str(p["tau_g"]),
            str(p["max_rounds"]),
            _budget(p["budget"]),
            p["dice"],
            p["calls"],
            p["refined"],
        ]
        for p in points
    ]
    return (
        md_table(headers, body)
        + "\n\n_SIMULATED: a simulated oracle answering from ground truth with a declared error model._"
    )
