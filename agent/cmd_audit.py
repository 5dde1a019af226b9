"""``tissue-oracle audit``: read the audit store. Every command opens it read-only.

The queries live in ``store.queries``; this module only picks one, runs it and prints the result
as a rich table or, with ``--json``, as a JSON list of objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import duckdb

    from tissue_oracle.store.queries import Table

app = typer.Typer(
    help="Audit VLM calls, costs and decisions recorded in an audit store.", no_args_is_help=True
)

DbOption = Annotated[
    Path,
    typer.Option(
        "--db", help="The audit store (OUT/audit.duckdb of a run).", envvar="TISSUE_ORACLE_AUDIT_DB"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_DB = Path("out/audit.duckdb")
#: Wall-clock bound of one ``audit sql`` query, in seconds.
QUERY_TIMEOUT_S = 30.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _plain(text: object) -> str:
    from tissue_oracle.agent.safe_text import plain

    return plain(text)


def _show(table: Table, as_json: bool, title: str) -> None:
    if as_json:
        records = [{k: _jsonable(v) for k, v in r.items()} for r in table.records()]
        typer.echo(json.dumps(records, indent=2, default=str))
        return
    from rich.table import Table as RichTable

    from tissue_oracle.agent.console import make_console
    from tissue_oracle.agent.safe_text import cell

    out = RichTable(title=cell(title))
    for column in table.columns:
        out.add_column(cell(column), overflow="fold")
    for row in table.rows:
        out.add_row(*(cell(_cell(v)) for v in row))
    make_console().print(out)


def _query(db: Path, fn: Callable[[duckdb.DuckDBPyConnection], Table]) -> Table:
    """Run ``fn`` on the store opened read-only; a store error becomes a message and exit code 1."""
    from tissue_oracle.store.audit_store import AuditStore
    from tissue_oracle.tools.errors import TissueOracleError

    try:
        with AuditStore.open(db, read_only=True) as store:
            return store.query(fn)
    except TissueOracleError as exc:
        typer.echo(f"error: {_plain(exc)}", err=True)
        raise typer.Exit(1) from exc


@app.command("runs")
def runs_cmd(db: DbOption = DEFAULT_DB, as_json: JsonOption = False) -> None:
    """List runs, newest first, with slide and call counts and cost."""
    from tissue_oracle.store import queries

    _show(_query(db, queries.runs), as_json, f"runs in {db}")


@app.command("slides")
def slides_cmd(run: str, db: DbOption = DEFAULT_DB, as_json: JsonOption = False) -> None:
    """List the slides of RUN with status, size, flags and cost."""
    from tissue_oracle.store import queries

    _show(_query(db, lambda c: queries.slides(c, run)), as_json, f"slides of run {run}")


@app.command("calls")
def calls_cmd(
    db: DbOption = DEFAULT_DB,
    run: Annotated[str | None, typer.Option(help="Only this run id.")] = None,
    slide: Annotated[str | None, typer.Option(help="Only this slide id.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage (e.g. classify_patches).")] = None,
    role: Annotated[str | None, typer.Option(help="Only this role (oracle, reviewer, ...).")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model, or backend:model.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only failed calls.")] = False,
    limit: Annotated[
        int, typer.Option(min=1, help="At most this many rows (1 or more), newest first.")
    ] = 200,
    as_json: JsonOption = False,
) -> None:
    """List oracle calls, newest first, with filters."""
    from tissue_oracle.store import queries

    def fn(c: duckdb.DuckDBPyConnection) -> Table:
        return queries.calls(
            c, run=run, slide=slide, stage=stage, role=role, model=model, errors_only=errors, limit=limit
        )

    _show(_query(db, fn), as_json, "calls")


@app.command("cost")
def cost_cmd(
    db: DbOption = DEFAULT_DB,
    by: Annotated[str, typer.Option(help="Group by run, slide, stage, role or model.")] = "run",
    as_json: JsonOption = False,
) -> None:
    """Calls, cache hits, errors, tokens and USD, grouped."""
    from tissue_oracle.store import queries

    _show(_query(db, lambda c: queries.cost(c, by)), as_json, f"cost by {by}")  # type: ignore[arg-type]


@app.command("decisions")
def decisions_cmd(
    slide: str,
    db: DbOption = DEFAULT_DB,
    run: Annotated[str | None, typer.Option(help="Only this run id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The policy decisions about SLIDE's regions: grades, action, reason, budget left."""
    from tissue_oracle.store import queries

    _show(_query(db, lambda c: queries.decisions(c, slide, run)), as_json, f"decisions for {slide}")


@app.command("plan")
def plan_cmd(
    slide: Annotated[str, typer.Option("--slide", help="The slide id (its file stem).")],
    db: DbOption = DEFAULT_DB,
    run: Annotated[str | None, typer.Option(help="Only this run id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """SLIDE's planner turns as a trace: tools chosen, tokens, cost, and where the guard stepped in."""
    from tissue_oracle.store import queries
    from tissue_oracle.store.queries import Table

    table = _query(db, lambda c: queries.planner_turns(c, slide, run))
    if as_json:
        _show(table, as_json, "")
        return
    if not table.rows:
        typer.echo(f"no planner turns for slide {slide!r} in {str(db)!r} (was it segmented with --planner?)")
        return
    records = table.records()
    runs = sorted({r["run_id"] for r in records})
    planners = sorted({r["planner"] for r in records})
    shown = [c for c in table.columns if c not in ("run_id", "planner")]
    # A planner with no known price records its cost as unknown (None), not as $0.
    rows = [tuple("unknown" if c == "cost_usd" and r[c] is None else r[c] for c in shown) for r in records]
    trace = Table(columns=shown, rows=rows)
    _show(trace, False, f"planner trace for {slide}: run {', '.join(runs)}, planner {', '.join(planners)}")
    last = records[-1]
    ended = "the planner (finish_slide)" if last["guard"] == "ok" else f"the policy ({last['guard']})"
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in records)
    typer.echo(f"{len(records)} turn(s), {tokens} planner tokens; the slide was finished by {ended}")


@app.command("export")
def export_cmd(
    parquet: Annotated[Path, typer.Option("--parquet", help="Folder to write <table>.parquet files into.")],
    db: DbOption = DEFAULT_DB,
) -> None:
    """Export every table as Parquet."""
    from tissue_oracle.store import queries
    from tissue_oracle.store.queries import Table

    def fn(c: duckdb.DuckDBPyConnection) -> Table:
        return Table(columns=["file"], rows=[(str(p),) for p in queries.export_parquet(c, parquet)])

    for (path,) in _query(db, fn).rows:
        typer.echo(path)


@app.command("sql")
def sql_cmd(
    query: Annotated[
        str, typer.Argument(help='One SELECT statement, e.g. "SELECT * FROM calls WHERE ok = ?".')
    ],
    param: Annotated[list[str] | None, typer.Option("--param", help="A bound value for ?, in order.")] = None,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=0.01, max=3600, help="Stop the query after this many seconds.")
    ] = QUERY_TIMEOUT_S,
) -> None:
    """Run one read-only SELECT with bound parameters (values are never pasted into the SQL).

    The query can't read files, attach databases or load extensions, uses at most 1 GB of
    memory and 2 threads, and is stopped after ``--timeout-s`` seconds.
    """
    from tissue_oracle.store.sandbox import run_user_sql
    from tissue_oracle.tools.errors import TissueOracleError

    try:
        table = run_user_sql(db, query, list(param or []), timeout_s=timeout_s)
    except TissueOracleError as exc:
        typer.echo(f"error: {_plain(exc)}", err=True)
        raise typer.Exit(1) from exc
    _show(table, as_json, "sql")


@app.command("escalations")
def escalations_cmd(db: DbOption = DEFAULT_DB, as_json: JsonOption = False) -> None:
    """The escalation queue beside the store (OUT/escalations.csv): what a human should check."""
    from tissue_oracle.agent.escalations import ESCALATIONS_CSV, Escalation, read_escalations
    from tissue_oracle.store.queries import Table

    out_dir = db.parent
    if not (out_dir / ESCALATIONS_CSV).exists():
        typer.echo(f"error: no {ESCALATIONS_CSV} in {str(out_dir)!r}; run 'tissue-oracle report {out_dir}' "
                   "or a segment run there first.", err=True)  # fmt: skip
        raise typer.Exit(1)
    columns = Escalation.columns()
    rows = [tuple(r.get(c, "") for c in columns) for r in read_escalations(out_dir)]
    _show(Table(columns=columns, rows=rows), as_json, f"escalation queue of {out_dir} ({len(rows)} rows)")
