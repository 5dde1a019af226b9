"""tissue_oracle.store: the DuckDB audit store (see docs/store.md).

- ``audit_store.AuditStore``: open/record/cache/resume; the one writer thread is in ``writer``;
- ``schema``: versioned migrations; ``rows``: records to rows; ``scrub``: secrets out;
- ``queries``: the audit CLI's queries; ``shards``: Parquet shards for distributed workers;
- ``memory.MemoryRecorder``: an in-memory ``CallRecorder`` for tests.

Nothing is imported here, so importing a submodule stays cheap.
"""
