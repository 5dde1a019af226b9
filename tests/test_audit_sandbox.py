"""``audit`` on a hostile store or with hostile SQL: no file is read, nothing runs unbounded."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from store_support import run_record
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app as cli_app
from tissue_oracle.agent.cmd_audit import app
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.reads import read_only

runner = CliRunner()
SECRET = "s3cr3t-file-contents"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "out" / "audit.duckdb"
    with AuditStore.open(path) as store:
        store.begin_run(run_record())
        store.finish_run("run-1", "finished")
    return path


def crafted(path: Path, secret: Path, *, table: str) -> Path:
    """A store this tool wrote, with ``table`` swapped for a view over ``read_text(secret)``."""
    with AuditStore.open(path) as store:
        store.begin_run(run_record())
    conn = duckdb.connect(str(path))
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"CREATE VIEW {table} AS SELECT content AS run_id FROM read_text('{secret}')")
    conn.close()
    return path


@pytest.mark.parametrize(
    "query",
    [
        "SELECT content FROM read_text('{secret}')",
        "SELECT * FROM read_csv('{secret}', header = false)",
        "SELECT * FROM glob('{folder}/*')",
        "SELECT content FROM read_text('{secret}') UNION ALL SELECT 'x'",
    ],
)
def test_audit_sql_reads_no_file(db: Path, secret: Path, query: str) -> None:
    sql = query.format(secret=secret, folder=secret.parent)
    result = runner.invoke(app, ["sql", sql, "--db", str(db)])
    assert result.exit_code != 0
    assert SECRET not in result.output and "secret.txt" not in result.output.replace(str(secret), "")
    assert "disabled" in result.output  # DuckDB's own "file system operations are disabled"


def test_audit_sql_cannot_turn_the_sandbox_off(db: Path) -> None:
    # SET is not a SELECT; a SELECT can't change settings; and the settings are locked anyway
    result = runner.invoke(
        app, ["sql", "SELECT current_setting('enable_external_access') AS v", "--db", str(db)]
    )
    assert result.exit_code == 0 and "False" in result.output
    limit = runner.invoke(
        app, ["sql", "SELECT current_setting('memory_limit') AS v", "--db", str(db), "--json"]
    )
    assert limit.exit_code == 0 and ("953.6 MiB" in limit.output or "1.0 GB" in limit.output), limit.output


def test_audit_sql_is_stopped_at_its_timeout(db: Path) -> None:
    heavy = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range * b.range = 7"
    result = runner.invoke(app, ["sql", heavy, "--db", str(db), "--timeout-s", "0.5"])
    assert result.exit_code == 1
    assert "stopped after 0.5 s" in result.output


@pytest.mark.parametrize("command", [["runs"], ["sql", "SELECT * FROM runs"], ["slides", "run-1"]])
def test_a_crafted_store_is_refused_before_its_views_run(
    tmp_path: Path, secret: Path, command: list[str]
) -> None:
    path = crafted(tmp_path / "evil.duckdb", secret, table="runs")
    result = runner.invoke(app, [*command, "--db", str(path)])
    assert result.exit_code != 0
    assert SECRET not in result.output and "view 'runs'" in result.output


def test_a_crafted_store_is_refused_by_segment_and_by_store_reads(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "out"
    crafted(out / "audit.duckdb", secret, table="slides")
    slide = tmp_path / "a.png"
    slide.write_bytes(b"not read")
    result = runner.invoke(cli_app, ["segment", str(slide), "--out", str(out), "--run-id", "r1"])
    assert result.exit_code == 2 and SECRET not in result.output and "view 'slides'" in result.output
    with pytest.raises(Exception, match="view 'slides'"):
        read_only(out / "audit.duckdb")(lambda con: con.execute("SELECT * FROM slides").fetchall())


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_audit_calls_with_a_negative_limit_is_a_usage_error(db: Path, limit: str) -> None:
    result = runner.invoke(app, ["calls", "--limit", limit, "--db", str(db)])
    assert (result.exit_code == 2 and result.exception is None) or isinstance(result.exception, SystemExit)
    assert "limit" in result.output.lower() and "Traceback" not in result.output
