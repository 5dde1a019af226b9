"""``tissue-oracle audit`` over a real audit file: tables, JSON, filters, export, read-only SQL."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from store_support import call_record, decision_record, patch_records, run_record, slide_record
from typer.testing import CliRunner

from tissue_oracle.agent import cli
from tissue_oracle.agent.cmd_audit import app
from tissue_oracle.store.audit_store import AuditStore

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.duckdb"
    with AuditStore.open(path) as store:
        store.begin_run(run_record())
        for slide in ("s1", "s2"):
            store.begin_slide(slide_record(slide))
            store.record_call(call_record(f"{slide}-a", slide_id=slide, cost=0.01))
            store.record_call(call_record(f"{slide}-b", slide_id=slide, ok=False, cost=0.0))
            store.record_call(call_record(f"{slide}-r", slide_id=slide, stage="review_mask", role="reviewer"))
            store.record_decision(decision_record(slide))
            store.record_patches(patch_records(slide, 3))
            store.finish_slide("run-1", slide, status="done")
        store.finish_run("run-1", "finished")
    return path


def _json(args: list[str], db: Path) -> list[dict[str, object]]:
    result = runner.invoke(app, [*args, "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_audit_is_registered_in_the_cli() -> None:
    assert cli.COMMANDS["audit"] == "tissue_oracle.agent.cmd_audit:app"


def test_runs_slides_and_decisions(db: Path) -> None:
    [run] = _json(["runs"], db)
    assert run["run_id"] == "run-1" and run["slides"] == 2 and run["calls"] == 6
    assert [s["slide_id"] for s in _json(["slides", "run-1"], db)] == ["s1", "s2"]
    [decision] = _json(["decisions", "s2"], db)
    assert decision["action"] == "refine" and decision["recall"] == 3
    table = runner.invoke(app, ["runs", "--db", str(db)])
    assert table.exit_code == 0 and "run-1" in table.output


def test_calls_filters_and_cost_grouping(db: Path) -> None:
    assert len(_json(["calls"], db)) == 6
    assert {c["request_hash"] for c in _json(["calls", "--errors"], db)} == {"s1-b", "s2-b"}
    assert len(_json(["calls", "--slide", "s1", "--role", "reviewer"], db)) == 1
    assert len(_json(["calls", "--stage", "review_mask", "--model", "openai:qwen3-vl-8b"], db)) == 2
    by_stage = {r["stage"]: r for r in _json(["cost", "--by", "stage"], db)}
    assert by_stage["classify_patches"]["calls"] == 4 and by_stage["classify_patches"]["errors"] == 2
    assert by_stage["classify_patches"]["usd"] == pytest.approx(0.02)
    assert {r["slide_id"] for r in _json(["cost", "--by", "slide"], db)} == {"s1", "s2"}
    bad = runner.invoke(app, ["cost", "--by", "colour", "--db", str(db)])
    assert bad.exit_code == 1 and "choose one of" in bad.output


def test_export_writes_parquet_per_table(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "--parquet", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out / 'patches.parquet'}')").fetchall()[0][0]
    assert count == 6


def test_sql_binds_parameters_and_refuses_writes(db: Path) -> None:
    rows = _json(
        [
            "sql",
            "SELECT slide_id, count(*) AS n FROM calls WHERE ok = ? GROUP BY 1 ORDER BY 1",
            "--param",
            "false",
        ],
        db,
    )
    assert rows == [{"slide_id": "s1", "n": 1}, {"slide_id": "s2", "n": 1}]
    injection = _json(
        ["sql", "SELECT count(*) AS n FROM calls WHERE slide_id = ?", "--param", "s1' OR '1'='1"], db
    )
    assert injection == [{"n": 0}]
    for statement in ("DELETE FROM calls", "SELECT 1; DROP TABLE calls", "COPY calls TO 'x.csv'"):
        result = runner.invoke(app, ["sql", statement, "--db", str(db)])
        assert result.exit_code == 1 and "Writes are refused" in result.output
    assert len(_json(["calls"], db)) == 6


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["runs", "--db", str(tmp_path / "nope.duckdb")])
    assert result.exit_code == 1 and "does not exist" in result.output
