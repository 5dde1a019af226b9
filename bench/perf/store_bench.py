"""Audit-store figures: write throughput, 16 concurrent recorders, and survival of ``kill -9``.

    python -m tissue_oracle.bench.perf.store_bench --rows 100000 --out bench-out/store.json

- **throughput**: ``rows`` call records through ``AuditStore.record_call`` (scrubbing, queueing,
  appender) until ``flush`` returns, in rows/s; against a baseline measured in the same run on the
  same schema: DuckDB ``executemany`` of prepared rows (only ``baseline_rows`` of them, because it
  runs at a few hundred rows/s; the figure is a rate, so the ratio compares like with like);
- **threads**: 16 threads record ``rows`` calls at once; the table's row count must match;
- **kill -9**: a child process writes slides (calls, decisions, patches, ``finish_slide``) and
  prints each finished slide; it is SIGKILLed mid-slide, then the file is reopened and every
  slide it reported must be there with all its rows.

All records are synthetic (no oracle runs); they are sized like real classify_patches rows.

    python -m tissue_oracle.bench.perf.store_bench --replay-only --out bench-out/store-replay.json

- **replay** (``--replay``/``--replay-only``, about a minute): one synthetic slide segmented by the
  controller with oracle and reviewer ``openai:`` served by the loopback fake VLM server (bench/fakes;
  its answers are image analysis, not a real VLM), then again with both
  roles ``replay:<first audit.duckdb>`` after the server is stopped. Reported: requests the server
  saw during the replay, calls recorded that were not cache hits, and which output files are
  byte-identical (``summary.json`` holds timings, ``patches.h5`` its output folder in ``save_path``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

from tissue_oracle.store import rows as R
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.schema import migrate
from tissue_oracle.store.scrub import Scrubber
from tissue_oracle.tools.schemas import CallRecord, PatchRecord, SlideRecord

PATCHES_PER_SLIDE = 50
CALLS_PER_SLIDE = 200


def call(i: int, slide_id: str = "s0") -> CallRecord:
    """A classify_patches-sized call row with a unique request hash."""
    return CallRecord(
        run_id="bench",
        slide_id=slide_id,
        stage="classify_patches",
        role="oracle",
        backend="openai",
        model="qwen3-vl-8b",
        template="classify_patch",
        template_hash="t" * 64,
        request_hash=f"{i:064x}",
        image_hashes=[f"{i:064x}"],
        image_coords=[[512 * (i % 200), 512 * (i // 200), 512, 512]],
        request_json='{"temperature": 0, "max_tokens": 256, "prompt": "Is this patch tissue or background?"}',
        response_raw='{"label": "tissue", "focus": "sharp"}',
        parsed_json='{"labels": [{"label": "tissue", "focus": "sharp"}]}',
        ok=True,
        latency_s=0.4,
        input_tokens=900,
        output_tokens=30,
        cost_usd=0.0001,
    )


def _count(path: Path, sql: str) -> Any:
    with AuditStore.open(path, read_only=True) as store:
        return store.query(lambda c: c.execute(sql).fetchall()[0][0])


def throughput(tmp: Path, rows: int, baseline_rows: int) -> dict[str, Any]:
    records = [call(i) for i in range(rows)]
    start = time.perf_counter()
    with AuditStore.open(tmp / "appender.duckdb") as store:
        for record in records:
            store.record_call(record)
        store.flush()
        elapsed = time.perf_counter() - start
    stored = _count(tmp / "appender.duckdb", "SELECT count(*) FROM calls")

    conn = duckdb.connect(str(tmp / "executemany.duckdb"))
    migrate(conn)
    scrub = Scrubber()
    prepared = [R.call_row(r, scrub) for r in records[:baseline_rows]]
    sql = f"INSERT INTO calls ({', '.join(R.CALL_COLUMNS)}) VALUES ({', '.join('?' * len(R.CALL_COLUMNS))})"
    start = time.perf_counter()
    conn.executemany(sql, prepared)
    base_elapsed = time.perf_counter() - start
    conn.close()
    rate, base_rate = rows / elapsed, baseline_rows / base_elapsed
    return {
        "rows": rows,
        "rows_stored": stored,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(rate),
        "baseline": "executemany of pre-built rows, same schema and index",
        "baseline_rows": baseline_rows,
        "baseline_rows_per_s": round(base_rate, 1),
        "speedup": round(rate / base_rate, 1),
    }


def threads(tmp: Path, rows: int, n_threads: int = 16) -> dict[str, Any]:
    per_thread = rows // n_threads
    path = tmp / "threads.duckdb"
    start = time.perf_counter()
    with AuditStore.open(path) as store:

        def work(t: int) -> None:
            for i in range(per_thread):
                store.record_call(call(t * per_thread + i, slide_id=f"s{t}"))

        workers = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    elapsed = time.perf_counter() - start
    stored = _count(path, "SELECT count(*) FROM calls")
    distinct = _count(path, "SELECT count(DISTINCT request_hash) FROM calls")
    expected = per_thread * n_threads
    return {
        "threads": n_threads,
        "rows_sent": expected,
        "rows_stored": stored,
        "distinct_request_hashes": distinct,
        "match": stored == distinct == expected,
        "seconds": round(elapsed, 3),
    }


def _child(path: str) -> None:
    """The killed writer: slides forever, printing each one after ``finish_slide`` returned."""
    store = AuditStore.open(path)
    n = 0
    while True:
        slide = f"s{n}"
        store.begin_slide(SlideRecord(run_id="bench", slide_id=slide, path=f"/data/{slide}.svs"))
        for i in range(CALLS_PER_SLIDE):
            store.record_call(call(n * CALLS_PER_SLIDE + i, slide_id=slide))
        store.record_patches(
            [
                PatchRecord(
                    run_id="bench",
                    slide_id=slide,
                    x=512 * i,
                    y=0,
                    size=512,
                    label="tissue",
                    source="zero_shot",
                )
                for i in range(PATCHES_PER_SLIDE)
            ]
        )
        store.finish_slide("bench", slide, status="done")
        print(slide, flush=True)
        n += 1


def kill9(tmp: Path, slides_before_kill: int = 20) -> dict[str, Any]:
    path = tmp / "killed.duckdb"
    args = [sys.executable, "-m", "tissue_oracle.bench.perf.store_bench", "--child", str(path)]
    reported: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        while len(reported) < slides_before_kill:
            line = child.stdout.readline().strip()
            if not line:
                raise RuntimeError(f"writer exited early with {child.poll()}")
            reported.append(line)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    with AuditStore.open(path) as store:
        finished = store.finished_slides("bench")
        whole = store.query(
            lambda c: c.execute(
                "SELECT count(*) FROM (SELECT slide_id FROM patches GROUP BY slide_id HAVING count(*) = ?)",
                [PATCHES_PER_SLIDE],
            ).fetchall()[0][0]
        )
    return {
        "slides_reported_finished": len(reported),
        "slides_finished_after_reopen": len(finished),
        "all_reported_present": set(reported) <= finished,
        "slides_with_all_patches": whole,
        "exit_signal": -child.returncode,
    }


async def _segment(slide: Path, out: Path, overrides: dict[str, str], base_url: str) -> None:
    from tissue_oracle.agent.controller import segment_file
    from tissue_oracle.agent.oracle_setup import build_oracles
    from tissue_oracle.agent.run_settings import RunDeps, RunSettings
    from tissue_oracle.policies.policy import load_policy

    policy = load_policy("default")
    oracles = build_oracles(policy, overrides=overrides, base_urls={"*": base_url})  # type: ignore[arg-type]
    try:
        with AuditStore.open(out / "audit.duckdb") as store:
            settings = RunSettings(run_id=out.name, policy=policy, out_dir=out)
            await segment_file(slide, settings, RunDeps.for_run(settings, oracles=oracles, store=store))
    finally:
        await oracles.aclose()


def replay(tmp: Path) -> dict[str, Any]:
    """Live run against the fake VLM server, then a replay with the server stopped."""
    from tissue_oracle.bench.fakes import fixtures
    from tissue_oracle.bench.synth.generate import generate_slide

    slide = generate_slide(tmp / "slide.tiff", preset="tiny", seed=3, width=6144, height=4096)
    server = fixtures.start_server("openai")
    base_url, spec = server.base_url, f"openai:{fixtures.MODELS['openai']}"
    try:
        asyncio.run(_segment(slide, tmp / "live", {"oracle": spec, "reviewer": spec}, base_url))
    finally:
        server.stop()
    live_requests = server.requests
    source = f"replay:{tmp / 'live' / 'audit.duckdb'}"
    asyncio.run(_segment(slide, tmp / "replay", {"oracle": source, "reviewer": source}, base_url))
    sql = "SELECT [count(*), count(*) FILTER (WHERE NOT cache_hit)] FROM calls"  # [calls, not cache hits]
    files = sorted(p.name for p in (tmp / "live" / "slide").iterdir())
    same = {
        n: (tmp / "live" / "slide" / n).read_bytes() == (tmp / "replay" / "slide" / n).read_bytes()
        for n in files
    }
    return {
        "oracle": "fake OpenAI-compatible loopback server (simulated VLM answers)",
        "live_server_requests": live_requests,
        "replay_server_requests": server.requests - live_requests,
        "live_calls_and_not_cached": _count(tmp / "live" / "audit.duckdb", sql),
        "replay_calls_and_not_cached": _count(tmp / "replay" / "audit.duckdb", sql),
        "identical_files": [n for n, ok in same.items() if ok],
        "differing_files": [n for n, ok in same.items() if not ok],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures here as JSON.")
    parser.add_argument("--replay", action="store_true", help="Also run the end-to-end replay figure.")
    parser.add_argument("--replay-only", action="store_true", help="Run only the replay figure.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        figures: dict[str, Any] = {"duckdb": duckdb.__version__}
        if not args.replay_only:
            figures["throughput"] = throughput(Path(tmp), args.rows, args.baseline_rows)
            figures["threads"] = threads(Path(tmp), args.rows)
            figures["kill9"] = kill9(Path(tmp))
        if args.replay or args.replay_only:
            figures["replay"] = replay(Path(tmp))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return figures


if __name__ == "__main__":
    main()
