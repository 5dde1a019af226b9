"""The audit store's schema: one ordered list of migrations, applied by :func:`migrate`.

Each migration is ``(version, sql)``; ``schema_version`` remembers the highest one applied, so
opening an old file upgrades it in place and opening a current one does nothing. Append new
migrations at the end; never edit one that has shipped.

Column conventions: times are ``TIMESTAMP`` (naive, as the records carry them); lists are DuckDB
``LIST`` types; free-form JSON (raw requests, responses, parsed answers) is ``VARCHAR`` holding
JSON text. Coordinates are level-0 pixels (``image_coords`` is ``[[x, y, w, h], ...]``). Tables
carry no primary keys: the single writer keeps rows unique, and DuckDB's appender is fastest
without constraint checks.
"""

from __future__ import annotations

import duckdb

_V1 = """
CREATE TABLE runs (
    run_id VARCHAR NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    policy_name VARCHAR,
    policy_yaml VARCHAR,
    policy_hash VARCHAR,
    tool_version VARCHAR,
    command_line VARCHAR,
    status VARCHAR
);
CREATE TABLE slides (
    run_id VARCHAR NOT NULL,
    slide_id VARCHAR NOT NULL,
    path VARCHAR,
    file_hash VARCHAR,
    width BIGINT,
    height BIGINT,
    mpp DOUBLE,
    vendor VARCHAR,
    status VARCHAR,
    error VARCHAR,
    flags VARCHAR[],
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE SEQUENCE call_ids;
CREATE TABLE calls (
    call_id BIGINT DEFAULT nextval('call_ids'),
    run_id VARCHAR NOT NULL,
    slide_id VARCHAR NOT NULL,
    stage VARCHAR,
    role VARCHAR,
    backend VARCHAR,
    model VARCHAR,
    template VARCHAR,
    template_hash VARCHAR,
    request_hash VARCHAR NOT NULL,
    image_hashes VARCHAR[],
    image_coords BIGINT[][],
    request_json VARCHAR,
    response_raw VARCHAR,
    parsed_json VARCHAR,
    ok BOOLEAN,
    error VARCHAR,
    attempt INTEGER,
    latency_s DOUBLE,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cost_usd DOUBLE,
    cache_hit BOOLEAN,
    started_at TIMESTAMP
);
CREATE INDEX calls_by_request_hash ON calls (request_hash);
CREATE TABLE decisions (
    run_id VARCHAR NOT NULL,
    slide_id VARCHAR NOT NULL,
    region INTEGER,
    round INTEGER,
    precision INTEGER,
    recall INTEGER,
    precision_pct DOUBLE,
    recall_pct DOUBLE,
    grade_notes VARCHAR,
    action VARCHAR,
    reason VARCHAR,
    budget_left_calls BIGINT,
    budget_left_tokens BIGINT,
    budget_left_usd DOUBLE,
    decided_at TIMESTAMP
);
CREATE TABLE patches (
    run_id VARCHAR NOT NULL,
    slide_id VARCHAR NOT NULL,
    x BIGINT,
    y BIGINT,
    size INTEGER,
    label VARCHAR,
    focus VARCHAR,
    confidence DOUBLE,
    source VARCHAR
);
CREATE TABLE outputs (
    run_id VARCHAR NOT NULL,
    slide_id VARCHAR NOT NULL,
    path VARCHAR,
    kind VARCHAR,
    sha256 VARCHAR,
    bytes BIGINT
);
"""

# Shards merged from distributed workers, so that merging the same folder twice loads nothing twice.
_V2 = """
CREATE TABLE merged_shards (
    name VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    rows BIGINT,
    merged_at TIMESTAMP DEFAULT current_localtimestamp()
);
"""

MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2))
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: The record tables, in the order an export or a shard set writes them.
TABLES: tuple[str, ...] = ("runs", "slides", "calls", "decisions", "patches", "outputs")


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    """The highest migration applied to this database (0 for a fresh file)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP)")
    row = next(iter(conn.execute("SELECT max(version) FROM schema_version").fetchall()), None)
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: duckdb.DuckDBPyConnection) -> int:
    """Apply the missing migrations in order, each in its own transaction; return the version."""
    version = current_version(conn)
    for number, sql in MIGRATIONS:
        if number <= version:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (?, current_localtimestamp())", [number])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version
