"""``OUT/report.html``: one self-contained page for a run's folder, written at the end of ``segment``.

It shows each slide as a card (the overlay thumbnail embedded as a data URI, status, who labelled
it, flags, every region's review grades per round and the Auto-context rounds), then the run's
calls, tokens and cost per stage and per role, failed calls, the escalation queue, and the
run's cost over time as an inline SVG plot. No script, no font, no link: it opens offline.

Data comes from the slides' ``summary.json`` files and the audit store's ``calls`` table, so
``tissue-oracle report OUT`` re-makes the same page at any time.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tissue_oracle.agent.escalations import read_escalations, read_summaries
from tissue_oracle.agent.summary import RegionSummary, SlideSummary
from tissue_oracle.store.run_reports import report_tables

REPORT_HTML = "report.html"
THUMB_SIDE = 480
_CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#555;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px;width:500px}
.card h3{margin:0 0 6px;font-size:16px}.card img{max-width:100%;border:1px solid #eee}
.st{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.st-done{background:#2e7d32}.st-degraded{background:#ef6c00}.st-failed{background:#c62828}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f0f0f0}.flag{color:#b35900}.note{color:#555;font-size:12px}
"""


@dataclass(kw_only=True)
class RunData:
    """What the page shows, gathered from the folder and the store."""

    out_dir: Path
    summaries: list[SlideSummary]
    runs: list[tuple[Any, ...]] = field(default_factory=list)
    by_stage: list[tuple[Any, ...]] = field(default_factory=list)
    by_role: list[tuple[Any, ...]] = field(default_factory=list)
    failures: list[tuple[Any, ...]] = field(default_factory=list)
    timeline: list[tuple[float, float, int]] = field(default_factory=list)
    """(seconds since the first call, cumulative USD, cumulative calls) per paid call."""
    escalations: list[dict[str, str]] = field(default_factory=list)


def gather(out_dir: Path, store: Any | None) -> RunData:
    """Summaries from ``out_dir``; calls from ``store`` (an open ``AuditStore``) for their runs."""
    summaries = read_summaries(out_dir)
    data = RunData(out_dir=out_dir, summaries=summaries, escalations=read_escalations(out_dir))
    run_ids = sorted({s.run_id for s in summaries})
    if store is None or not run_ids:
        return data
    tables = store.query(lambda conn: report_tables(conn, run_ids))
    data.runs, data.failures = tables["runs"], tables["failures"]
    data.by_stage, data.by_role = tables["calls_by_stage"], tables["calls_by_role"]
    data.timeline = _cumulative(tables["paid_calls"])
    return data


def _cumulative(rows: list[tuple[datetime, float]]) -> list[tuple[float, float, int]]:
    if not rows:
        return []
    first = rows[0][0]
    usd, points = 0.0, []
    for n, (at, cost) in enumerate(rows, start=1):
        usd += float(cost or 0.0)
        points.append(((at - first).total_seconds(), usd, n))
    return points


# --------------------------------------------------------------------------- pieces


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[tuple[Any, ...]] | list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value


def thumbnail_uri(picture: Path, side: int = THUMB_SIDE) -> str | None:
    """The image at ``picture`` scaled to ``side`` px on its long side, as a ``data:image/jpeg`` URI
    (JPEG: a tenth of the PNG's size and encoding time, for a picture that is only looked at)."""
    from PIL import Image

    try:
        with Image.open(picture) as opened:
            opened.draft("RGB", (side, side))
            img = opened.convert("RGB")
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _grades(region: RegionSummary) -> list[list[Any]]:
    rows = []
    for r in region.rounds:
        g = r.grades
        grade = "—" if g is None else f"P{g.precision} / R{g.recall}"
        pct = (
            ""
            if g is None or g.precision_pct is None
            else f"{g.precision_pct:.0f}% / {g.recall_pct or 0:.0f}%"
        )
        auto = (
            ""
            if r.points is None
            else f"{r.points} pts, {r.exemplars or 0} ex, {r.patches_sent or 0} patches"
        )
        rows.append([region.index, r.round, grade, pct, r.action, auto, r.reason])
    return rows


def slide_card(summary: SlideSummary, out_dir: Path) -> str:
    """One slide's card (``data-slide`` carries its id, for tests and readers)."""
    uri = thumbnail_uri(out_dir / summary.slide_id / "overlay.png")
    image = (
        f'<img alt="overlay of {_e(summary.slide_id)}" src="{uri}">'
        if uri
        else "<p class=note>no overlay</p>"
    )
    flags = ", ".join(summary.flags) or "none"
    regions = [row for region in summary.regions for row in _grades(region)]
    t = summary.totals
    return (
        f'<div class="card" data-slide="{_e(summary.slide_id)}">'
        f"<h3>{_e(summary.slide_id)} "
        f'<span class="st st-{_e(summary.status)}">{_e(summary.status)}</span></h3>'
        f"{image}"
        f"<p class=note>labelled by {_e(summary.labelled_as)} · {summary.width}×{summary.height} px · "
        f"{len(summary.regions)} region(s), {summary.refinements} Auto-context round(s) kept · "
        f"{t.calls} calls, {t.cache_hits} cache hits, {t.failed} failed, ${t.usd:.4f} · "
        f"{summary.seconds:.1f} s</p>"
        f'<p class="flag">flags: {_e(flags)}</p>'
        + "".join(f"<p class=note>{_e(r)}</p>" for r in summary.reasons)
        + _table(["region", "round", "grades", "reviewer %", "action", "Auto-context", "reason"], regions)
        + "</div>"
    )


def cost_plot(timeline: list[tuple[float, float, int]], width: int = 720, height: int = 260) -> str:
    """Cumulative USD (or calls, when every call was free) against seconds, as inline SVG."""
    if not timeline:
        return (
            f'<svg id="cost-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="40" '
            'font-size="12" font-family="sans-serif" role="img" aria-label="no paid calls">'
            '<text x="4" y="24">no paid calls recorded (cost stayed at 0)</text></svg>'
        )
    use_usd = timeline[-1][1] > 0
    ys = [p[1] if use_usd else float(p[2]) for p in timeline]
    xs = [p[0] for p in timeline]
    x_max, y_max = max(xs[-1], 1e-9), max(ys[-1], 1e-9)
    left, right, top, bottom = 70, 20, 20, 40
    w, h = width - left - right, height - top - bottom

    def px(x: float, y: float) -> str:
        return f"{left + w * x / x_max:.1f},{top + h - h * y / y_max:.1f}"

    points = " ".join(px(x, y) for x, y in zip([0.0, *xs], [0.0, *ys], strict=True))
    label = "cumulative cost (USD)" if use_usd else "cumulative calls (all free)"
    ticks = []
    for i in range(5):
        fy, fx = y_max * i / 4, x_max * i / 4
        y_text = f"{fy:.4f}" if use_usd else f"{fy:.0f}"
        yy, xx = top + h - h * i / 4, left + w * i / 4
        ticks.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{y_text}</text>')
        ticks.append(f'<line x1="{left}" x2="{left + w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
        ticks.append(f'<text x="{xx:.1f}" y="{top + h + 16}" text-anchor="middle">{fx:.0f}</text>')
    return (
        f'<svg id="cost-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-size="11" font-family="sans-serif" role="img" aria-label="{label} over time">'
        + "".join(ticks)
        + f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#333"/>'
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#333"/>'
        f'<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{points}"/>'
        f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">seconds since the first call</text>'
        f'<text x="14" y="{top + h / 2}" transform="rotate(-90 14 {top + h / 2})" '
        f'text-anchor="middle">{label}</text>'
        "</svg>"
    )


def render(data: RunData) -> str:
    """The whole page."""
    s = data.summaries
    counts = {k: sum(x.status == k for x in s) for k in ("done", "degraded", "failed")}
    usd = sum(x.totals.usd for x in s)
    labels = sorted({x.labelled_as for x in s})
    calls_headers = ["calls", "cache hits", "failed", "input tokens", "output tokens", "USD"]
    esc_cols = ["slide_id", "region", "x0", "y0", "x1", "y1", "status", "reason", "grades"]
    escalations = [[r.get(c, "") for c in esc_cols] for r in data.escalations]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>tissue-oracle report: {_e(data.out_dir.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>tissue-oracle run report: {_e(data.out_dir.name)}</h1>",
        f"<p class=meta>{len(s)} slide(s): {counts['done']} done, {counts['degraded']} degraded, "
        f"{counts['failed']} failed · ${usd:.4f} · labels by {_e('; '.join(labels) or 'nobody')} · "
        f"written {datetime.now():%Y-%m-%d %H:%M}</p>",
        _table(["run", "status", "started", "finished", "policy"], data.runs) if data.runs else "",
        "<h2>Slides</h2><div class=cards>",
        *(slide_card(x, data.out_dir) for x in s),
        "</div><h2>Cost over time</h2>",
        cost_plot(data.timeline),
        "<h2>Calls, tokens and cost per stage</h2>",
        _table(["stage", *calls_headers], data.by_stage),
        "<h2>Per role</h2>",
        _table(["role", *calls_headers], data.by_role),
        "<h2>Failed calls</h2>",
        _table(["slide", "stage", "role", "error", "count"], data.failures)
        if data.failures
        else "<p>none</p>",
        f"<h2>Escalation queue ({len(escalations)})</h2>",
        _table(esc_cols, escalations) if escalations else "<p>nothing escalated</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(out_dir: Path, store: Any | None = None) -> Path:
    """Write ``OUT/report.html`` from the folder and ``store`` (opened read-only here when None)."""
    from tissue_oracle.store.audit_store import AuditStore
    from tissue_oracle.tools.errors import StoreError

    if store is None and (out_dir / "audit.duckdb").exists():
        try:
            with AuditStore.open(out_dir / "audit.duckdb", read_only=True) as opened:
                data = gather(out_dir, opened)
        except StoreError:
            data = gather(out_dir, None)
    else:
        data = gather(out_dir, store)
    target = out_dir / REPORT_HTML
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render(data), encoding="utf-8")
    tmp.replace(target)
    return target
