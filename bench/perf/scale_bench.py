"""Scale benchmarks for ``segment --workers`` against the loopback fake OpenAI server (no VLM).

    python -m tissue_oracle.bench.perf.scale_bench speedup --out DIR [--latency 1.0] [--slides 8]
    python -m tissue_oracle.bench.perf.scale_bench crash --out DIR [--slides 12] [--fail-rate 0.1]

``speedup`` segments the same tiny synthetic slides with 1, 2, 4 and 8 workers against an endpoint
that takes ``--latency`` seconds per request, each run a fresh ``tissue-oracle segment`` process
with ``--no-cache``, and reports wall time and the ratio to 1 worker measured in the same session.

``crash`` runs ``--slides`` slides on a LocalCluster against an endpoint failing ``--fail-rate`` of
requests with a 500, kills the whole process group with SIGKILL once a third of the slides are
finished, resumes with the same ``--run-id``, and counts from the fake's request log the request
bodies answered (HTTP 200) more than once; then it screenshots ``report.html`` in headless chromium.

Every answer comes from the fake, which answers by pixel analysis: these are not VLM results. The
model name is ``openai:gpt-4.1-mini`` only so that calls are priced (at that model's list price).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.bench.perf import headless_browser
from tissue_oracle.bench.synth.generate import generate_set
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.reads import StoreReads

MODEL = "openai:gpt-4.1-mini"
LABEL = "loopback fake OpenAI server (pixel analysis, no VLM), priced as gpt-4.1-mini"


def segment_command(slides: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    cli = [sys.executable, "-c", "from tissue_oracle.agent.cli import main; main()"]
    args = ["segment", str(slides), "--out", str(out), "--oracle", MODEL, "--reviewer", MODEL]
    return [*cli, *args, "--base-url", base_url, *extra]


def shown(command: list[str]) -> str:
    """The command as a user would type it."""
    return "tissue-oracle " + shlex.join(command[3:])


def speedup(out: Path, latency: float, count: int, workers: list[int], analyse: bool) -> dict[str, Any]:
    slides = out / "slides"
    if not slides.is_dir():
        generate_set(slides, preset="tiny", count=count, seed=0)
    rows = []
    # Canned answers by default: the fake's own pixel analysis would compete with the run for the
    # same two cores, and the answers' content doesn't change how long a request waits.
    with FakeOpenAIServer(profile=PROFILES["generic"], latency_s=latency, analyse=analyse) as server:
        for n in workers:
            server.max_in_flight_seen, before = 0, server.requests
            command = segment_command(
                slides, out / f"workers-{n}", server.base_url, "--workers", str(n), "--no-cache"
            )
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"workers={n} failed:\n{done.stderr[-3000:]}")
            rows.append(
                {
                    "workers": n,
                    "wall_s": round(wall, 1),
                    "requests": server.requests - before,
                    "max_in_flight": server.max_in_flight_seen,
                    "command": shown(command),
                }
            )
            print(f"workers={n}: {wall:.1f} s, {server.requests - before} requests", flush=True)
    base = float(rows[0]["wall_s"])  # type: ignore[arg-type]
    for row in rows:
        row["speedup_vs_1"] = round(base / float(row["wall_s"]), 2)  # type: ignore[arg-type]
    mode = "pixel analysis" if analyse else "canned answers"
    return {"source": f"{LABEL}; {mode}", "latency_s": latency, "slides": count, "rows": rows}


def _store_counts(db: Path, run_id: str) -> dict[str, Any]:
    with AuditStore.open(db, read_only=True) as store:
        reads = StoreReads(store.query, str(db))
        statuses = Counter(reads.slide_statuses(run_id).values())
        return {"slides": dict(statuses), **reads.run_calls(run_id)}


def crash(
    out: Path, count: int, workers: int, latency: float, fail_rate: float, shot: Path | None
) -> dict[str, Any]:
    slides = out / "slides"
    if not slides.is_dir():
        generate_set(slides, preset="tiny", count=count, seed=1)
    run = out / "run"
    extra = ("--workers", str(workers), "--run-id", "crash-demo")
    with FakeOpenAIServer(
        profile=PROFILES["generic"], latency_s=latency, fail_rate=fail_rate, seed=13
    ) as server:
        command = segment_command(slides, run, server.base_url, *extra)
        with (out / "first-attempt.log").open("w") as log:
            first = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=log)
            started = time.perf_counter()
            while len(list(run.glob("*/summary.json"))) < max(1, count // 3) and first.poll() is None:
                time.sleep(0.2)
            if first.poll() is not None:
                raise SystemExit("the run finished before it could be killed; use more slides")
            finished_at_kill = len(list(run.glob("*/summary.json")))
            in_flight_at_kill = server.in_flight
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        killed_after = time.perf_counter() - started
        before = server.answered()
        resumed = subprocess.run(command, capture_output=True, text=True, check=False)
        if resumed.returncode != 0:
            raise SystemExit(f"resume failed:\n{resumed.stderr[-3000:]}")
        answered = server.answered()
        after = answered - before
        log_faults = sum(1 for e in server.log if e["fault"] == "server_error")
    twice = {h: n for h, n in answered.items() if n > 1}
    result = {
        "source": LABEL,
        "slides": count,
        "workers": workers,
        "latency_s": latency,
        "fail_rate": fail_rate,
        "command": shown(command) + "   # run twice: killed with SIGKILL, then resumed",
        "killed_after_s": round(killed_after, 1),
        "summaries_on_disk_at_kill": finished_at_kill,
        "fake_in_flight_at_kill": in_flight_at_kill,
        "answered_before_kill": sum(before.values()),
        "answered_total": sum(answered.values()),
        "server_errors_injected": log_faults,
        "bodies_answered_twice": len(twice),
        "extra_answers": sum(n - 1 for n in twice.values()),
        # a body answered before the kill and again after it: what the crash made us pay twice
        "answered_before_and_after_kill": sum(min(n, after[h]) for h, n in before.items()),
        "store": _store_counts(run / "audit.duckdb", "crash-demo"),
    }
    if shot is not None and headless_browser.chromium_path():
        headless_browser.screenshot(run / "report.html", shot, height=1800)
        result["screenshot"] = str(shot)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="which", required=True)
    s = sub.add_parser("speedup")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--latency", type=float, default=1.0)
    s.add_argument("--slides", type=int, default=8)
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    s.add_argument("--analyse", action="store_true", help="Answer by pixel analysis (default: canned).")
    c = sub.add_parser("crash")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--slides", type=int, default=12)
    c.add_argument("--workers", type=int, default=4)
    c.add_argument("--latency", type=float, default=0.5)
    c.add_argument("--fail-rate", type=float, default=0.1)
    c.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.which == "speedup":
        result = speedup(args.out, args.latency, args.slides, args.workers, args.analyse)
    else:
        result = crash(args.out, args.slides, args.workers, args.latency, args.fail_rate, args.screenshot)
    (args.out / f"{args.which}.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
