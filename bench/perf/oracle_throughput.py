"""Oracle plumbing benchmarks against the loopback fake VLM servers.

    .venv/bin/python -m tissue_oracle.bench.perf.oracle_throughput throughput --latency 0.1 --in-flight 16 64
    .venv/bin/python -m tissue_oracle.bench.perf.oracle_throughput faults

``throughput``: calls/s the VLM oracle sustains against a server that answers every request after
``latency`` seconds, with ``max_in_flight`` N. The server's capacity at that bound is N / latency
calls/s, so the ratio says how much the orchestration (prompting, encoding, SDK, audit rows)
costs. The server answers with a canned valid JSON (it does not analyse images), so its own CPU
is not what is measured. ``faults``: the table of fault type against outcome, per transport.

The fake servers ship in ``tissue_oracle.bench.fakes``, so an installed package runs this too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from tissue_oracle.bench.fakes.faults import run_faulted
from tissue_oracle.bench.fakes.server_base import FAULTS, Fault
from tissue_oracle.oracles.registry import build_oracle
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import PatchLabelsRequest, PatchRef

MODELS = {"openai": "Qwen/Qwen3-VL-8B-Instruct", "gemini": "gemini-2.5-flash"}

_SERVE = """
import sys
from tissue_oracle.bench.fakes.server import FakeGeminiServer, FakeOpenAIServer
cls = FakeOpenAIServer if {family!r} == "openai" else FakeGeminiServer
server = cls(latency_s={latency!r}, analyse=False).start()
print(server.base_url, flush=True)
sys.stdin.read()
print(server.max_in_flight_seen, flush=True)
"""


def throughput(family: str, latency_s: float, in_flight: int, calls: int, side: int) -> dict[str, float]:
    """Calls/s for ``calls`` one-patch classification calls at ``in_flight``.

    The server runs in its own process, so this process's CPU time is the orchestrator's alone
    (oracle, SDK, encoding, audit rows): ``cpu_ms_per_call`` bounds the rate one core can drive.
    """
    code = _SERVE.format(family=family, latency=latency_s)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    base_url = proc.stdout.readline().strip()
    oracle = build_oracle(
        f"{family}:{MODELS[family]}", base_url=base_url, max_in_flight=in_flight, timeout_s=60.0, retries=0
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(calls)]
    refs = [PatchRef(x=512 * i, y=0) for i in range(calls)]
    recorder = MemoryRecorder()
    ctx = CallContext(
        run_id="bench",
        slide_id="s",
        stage="classify_patches",
        role="oracle",
        recorder=recorder,
        use_cache=False,
    )

    async def run() -> tuple[float, float]:
        warm = PatchLabelsRequest(patches=refs[:in_flight], images=images[:in_flight])
        await oracle.patch_labels(warm, ctx)  # connections open, imports done
        cpu, started = time.process_time(), time.perf_counter()
        await oracle.patch_labels(PatchLabelsRequest(patches=refs, images=images), ctx)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await oracle.aclose()
        return elapsed, cpu

    try:
        elapsed, cpu = asyncio.run(run())
    finally:
        peak, _ = proc.communicate("", timeout=30)
    rate = calls / elapsed
    capacity = in_flight / latency_s
    return {
        "calls_per_s": rate,
        "capacity": capacity,
        "ratio": rate / capacity,
        "cpu_ms_per_call": 1000 * cpu / calls,
        "peak": float(peak.strip() or 0),
    }


def fault_table(families: list[str]) -> None:
    print("| fault | transport | attempts (rows) | outcome | first row error |")
    print("|---|---|---|---|---|")
    cases: list[tuple[str, list[Fault], dict[str, Any]]] = [
        (f, [f], {}) for f in FAULTS if f != "unauthorized"
    ]
    cases += [
        ("unauthorized (401)", ["unauthorized"] * 5, {}),
        ("server_error x10 (persistent)", ["server_error"] * 10, {}),
        ("invalid_json x10 (persistent)", ["invalid_json"] * 10, {}),
    ]
    for name, faults, options in cases:
        for family in families:
            outcome = run_faulted(family, "boxes", faults, **options)
            first = (outcome.rows[0].error or "-")[:70] if outcome.rows else "-"
            detail = ""
            if outcome.answer is not None:
                detail = f" ({len(outcome.answer.boxes)} boxes)"
            print(f"| {name} | {family} | {len(outcome.rows)} | {outcome.summary}{detail} | {first} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--latency", type=float, default=0.1)
    tp.add_argument("--in-flight", type=int, nargs="+", default=[16, 64])
    tp.add_argument("--seconds", type=float, default=3.0, help="ideal duration of each run at capacity")
    tp.add_argument("--side", type=int, default=64, help="patch side in px sent per call")
    tp.add_argument("--families", default="openai,gemini")
    ft = sub.add_parser("faults")
    ft.add_argument("--families", default="openai,gemini")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "bench-key")
    os.environ.setdefault("GEMINI_API_KEY", "bench-key")
    families = args.families.split(",")
    if args.command == "faults":
        fault_table(families)
        return
    print(f"fake server latency {args.latency * 1000:.0f} ms, {args.side} px patches, canned answers")
    print(
        "| transport | in flight | calls | calls/s | capacity (N/latency) | ratio "
        "| client CPU ms/call | server peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family in families:
        for n in args.in_flight:
            calls = max(n, int(args.seconds * n / args.latency))
            r = throughput(family, args.latency, n, calls, args.side)
            print(
                f"| {family} | {n} | {calls} | {r['calls_per_s']:.1f} | {r['capacity']:.0f} "
                f"| {r['ratio']:.2f} | {r['cpu_ms_per_call']:.2f} | {r['peak']:.0f} |"
            )


if __name__ == "__main__":
    main()
