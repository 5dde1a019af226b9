"""The soak: many tiny synthetic slides through ``segment`` against a faulty endpoint, killed and resumed.

    python -m tissue_oracle.bench.soak --slides 200 --work /tmp/soak

1. ``--slides`` tiny synthetic slides (preset ``tiny``, ``--size`` px square, seeded).
2. A fault-free reference run: ``segment`` (a child process) with every role on the loopback
   OpenAI fake, which answers by pixel analysis (no VLM anywhere; figures are the fake's).
3. The soak run: the same slides and policy against ``FaultyOpenAIServer`` (10% 500, 5% 429,
   5% malformed JSON, 2% hangs past the client's timeout by default). When ``--kill-at`` of the
   slides have finished, the child gets ``SIGKILL``; the same command then resumes the run id.
4. The report (JSON and a table): slides lost, attempts the server saw versus attempt rows in
   the store, masks identical to the reference, and paid answers asked again after the kill,
   each classified as in flight at the kill or not.

This is a benchmark script, never a timed test: ``tests/test_soak.py`` runs a small one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.bench.fakes.server_base import Fault
from tissue_oracle.bench.soak.faulty_server import DEFAULT_MIX, FaultyOpenAIServer, Served

MODEL = "Qwen/Qwen3-VL-8B-Instruct"
#: A request whose usable answer was sent at most this long before the kill may not have been
#: recorded by the client yet (response in transit or being parsed): it was in flight. 2 s, not 1:
#: with the reference run and both servers on 2 cores, one answer in a CI run (2026-12-04) was
#: asked again after the resume though it was sent more than 1 s before the kill. That re-ask may
#: well have been the bug a CI run of 2026-12-05 showed (an answer sent 3.8 s before the kill, asked
#: again): ground_boxes' retry skips the cache, and the in-process store had no queue handing a
#: resumed slide its paid answers back (``store/resumed_answers.py`` fixed it). A re-ask this window
#: doesn't explain is a loss to find, not a window to widen.
IN_TRANSIT_S = 2.0


@dataclass(kw_only=True)
class SoakConfig:
    slides: int = 200
    size: int = 1024
    seed: int = 12
    work: Path = Path("soak")
    kill_at: float = 0.5
    """Fraction of the slides finished when the soak run is killed."""
    timeout_s: float = 2.0
    """The client's per-request timeout (policy ``classify.timeout_s``)."""
    hang_s: float = 3.0
    """How long a hung request keeps the connection before the server gives up."""
    retries: int = 8
    """Transport retries per question: 22% faults need ~9 attempts for no question to fail."""
    mix: dict[Fault, float] = field(default_factory=lambda: dict(DEFAULT_MIX))


@dataclass(kw_only=True)
class SoakReport:
    slides: int
    slides_lost: int
    slides_by_status: dict[str, int]
    killed_after_slides: int
    server_requests: int
    faults_injected: dict[str, int]
    attempt_rows_in_store: int
    attempts_before_kill_server: int
    attempt_rows_before_kill: int
    in_flight_at_kill: int
    attempts_after_resume_server: int
    attempt_rows_after_resume: int
    every_attempt_in_store: bool
    masks_identical: int
    masks_different: list[str]
    paid_before_kill: int
    repeated_paid: int
    repeated_in_flight: int
    repeated_unusable_before: int
    repeated_not_in_flight: int
    seconds_reference: float
    seconds_soak: float
    reference_requests: int
    command: str = ""
    repeated_not_in_flight_detail: list[str] = field(default_factory=list)
    """For each answer asked again that was neither in flight nor unusable: how it was served."""

    @property
    def passed(self) -> bool:
        return (
            self.slides_lost == 0
            and self.every_attempt_in_store
            and not self.masks_different
            and self.masks_identical == self.slides
            and self.repeated_not_in_flight == 0
        )


def policy_yaml(config: SoakConfig) -> str:
    from tissue_oracle.policies.policy import load_policy

    return (
        load_policy("default")
        .with_updates(
            {
                "name": "soak",
                "thumbnail.downsample": 16,
                "classify.patch_size": 256,
                "classify.send_size": 128,
                "classify.batch_size": 8,
                "classify.retries": config.retries,
                "classify.timeout_s": config.timeout_s,
                "review.crop_size": 512,
            }
        )
        .to_yaml()
    )


def prepare(config: SoakConfig) -> tuple[Path, Path]:
    """The slides folder (generated once per size/seed/count) and the policy file."""
    from tissue_oracle.bench.synth.generate import generate_slide, plan_set

    slides = config.work / f"slides-{config.slides}-{config.size}-{config.seed}"
    for name, seed, stain in plan_set("tiny", config.slides, config.seed):
        target = slides / name
        if not (target.is_file() and target.with_suffix(".truth").exists()):  # resumable generation
            generate_slide(
                target, preset="tiny", seed=seed, width=config.size, height=config.size, stain=stain
            )
    policy = config.work / "soak-policy.yaml"
    policy.write_text(policy_yaml(config))
    return slides, policy


def segment_command(slides: Path, out: Path, policy: Path, run_id: str, base_url: str) -> list[str]:
    spec = f"openai:{MODEL}"
    return [
        sys.executable, "-c", "from tissue_oracle.agent.cli import app; app()",
        "segment", str(slides), "--out", str(out), "--policy", str(policy), "--run-id", run_id,
        "--oracle", spec, "--reviewer", spec, "--base-url", base_url,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OPENAI_API_KEY"] = "soak-loopback-fake"  # the fake checks nothing; the SDK wants a value
    env["COLUMNS"] = "200"
    return env


def _run(command: list[str], log: Path) -> float:
    started = time.monotonic()
    with log.open("ab") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=_env(), check=False
        ).returncode
    if code not in (0, 1):
        raise RuntimeError(f"segment exited {code}; see {log}")
    return time.monotonic() - started


def _run_and_kill(
    command: list[str], log: Path, out: Path, after: int, server: FaultyOpenAIServer
) -> tuple[float, float]:
    """Start ``command``; SIGKILL it once ``after`` slides have a summary.json and the next slide has
    questions in flight at the server (up to 30 s more). Returns (seconds, kill time)."""
    started = time.monotonic()
    with log.open("ab") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=_env())
        try:
            while child.poll() is None and len(list(out.glob("*/summary.json"))) < after:
                time.sleep(0.05)
            give_up = time.monotonic() + 30
            while child.poll() is None and server.in_flight < 2 and time.monotonic() < give_up:
                time.sleep(0.005)
            if child.poll() is not None:
                raise RuntimeError(f"segment ended before the kill point; see {log}")
            os.kill(child.pid, signal.SIGKILL)
            killed = time.time()
        finally:
            child.wait()
    return time.monotonic() - started, killed


def run_soak(config: SoakConfig) -> SoakReport:
    config.work.mkdir(parents=True, exist_ok=True)
    slides, policy = prepare(config)
    reference_out, soak_out = config.work / "reference", config.work / "soak"
    for stale in (reference_out, soak_out):
        if stale.exists():
            import shutil

            shutil.rmtree(stale)
    log, reference_log = config.work / "segment.log", config.work / "reference.log"
    log.write_bytes(b"")
    reference_log.write_bytes(b"")

    # The reference runs beside the soak: most of the soak's time is waiting (backoff, timeouts).
    clean = FaultyOpenAIServer(mix={}, hang_s=config.hang_s).start()
    reference_started = time.monotonic()
    with reference_log.open("ab") as sink:
        reference = subprocess.Popen(
            segment_command(slides, reference_out, policy, "reference", clean.base_url),
            stdout=sink, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    server = FaultyOpenAIServer(mix=dict(config.mix), hang_s=config.hang_s, seed=config.seed)
    with server:
        command = segment_command(slides, soak_out, policy, "soak", server.base_url)
        kill_after = max(1, int(config.slides * config.kill_at))
        seconds_killed, killed = _run_and_kill(command, log, soak_out, kill_after, server)
        done_at_kill = len(list(soak_out.glob("*/summary.json")))
        time.sleep(config.hang_s + 0.5)  # let handlers of the dead client finish
        with server._lock:
            before = list(server.served)
        resume_started = time.time()
        seconds_resumed = _run(command, log)
        with server._lock:
            after = [s for s in server.served if s.began >= resume_started]
    if reference.wait() not in (0, 1):
        raise RuntimeError(f"the reference run failed; see {reference_log}")
    seconds_reference = time.monotonic() - reference_started
    reference_requests = len(clean.served)
    clean.stop()
    report = analyse(config, slides, reference_out, soak_out, before, after, killed)
    report.killed_after_slides = done_at_kill
    report.seconds_reference = seconds_reference
    report.seconds_soak = seconds_killed + seconds_resumed
    report.reference_requests = reference_requests
    report.command = " ".join(command)
    return report


def analyse(
    config: SoakConfig,
    slides: Path,
    reference_out: Path,
    soak_out: Path,
    before: list[Served],
    after: list[Served],
    killed: float,
) -> SoakReport:
    from tissue_oracle.store.audit_store import AuditStore
    from tissue_oracle.store.reads import StoreReads

    with AuditStore.open(soak_out / "audit.duckdb", read_only=True) as store:
        reads = StoreReads(store.query, str(soak_out / "audit.duckdb"))
        statuses = reads.slide_statuses()
        starts = reads.paid_call_starts("soak")
    kill_local = datetime.fromtimestamp(killed)
    rows_before = sum(started < kill_local for started in starts)
    in_flight = [s for s in before if s.began < killed and (s.ended is None or s.ended >= killed)]
    # An answer written after the client's timeout reached a client that had given up on it (a slow
    # answer on a loaded machine): never received, so asking again is no loss.
    usable_before = {
        s.body_sha256: s
        for s in before
        if s.status == 200
        and s.fault != "invalid_json"
        and s.began < killed
        and s.ended is not None
        and s.ended - s.began < config.timeout_s
    }
    unusable_before = {s.body_sha256 for s in before if s.status == 200 and s.fault == "invalid_json"}
    paid_after = {s.body_sha256 for s in after if s.status == 200}
    repeated = paid_after & ({*usable_before} | unusable_before)
    in_flight_ids = {id(s) for s in in_flight}
    repeated_in_flight = {
        h
        for h in repeated
        if h in usable_before
        and (
            id(usable_before[h]) in in_flight_ids
            or killed - (usable_before[h].ended or killed) <= IN_TRANSIT_S
        )
    }
    repeated_unusable = {
        h for h in repeated - repeated_in_flight if h in unusable_before and h not in usable_before
    }
    other = repeated - repeated_in_flight - repeated_unusable
    other_detail = [
        f"{s.fault or 'no fault'}, status {s.status}, answered in {(s.ended or killed) - s.began:.2f} s, "
        f"{killed - (s.ended or killed):.2f} s before the kill"
        for h in sorted(other)
        if (s := usable_before.get(h)) is not None
    ]
    names = sorted(p.stem for p in slides.glob("*.tif*"))
    lost = [
        n
        for n in names
        if statuses.get(n) not in ("done", "degraded") or not (soak_out / n / "summary.json").is_file()
    ]
    different = [
        n
        for n in names
        if not (
            (reference_out / n / "mask.npy").is_file()
            and (soak_out / n / "mask.npy").is_file()
            and np.array_equal(np.load(reference_out / n / "mask.npy"), np.load(soak_out / n / "mask.npy"))
        )
    ]
    faults: dict[str, int] = {}
    for s in [*before, *after]:
        faults[s.fault or "none"] = faults.get(s.fault or "none", 0) + 1
    by_status: dict[str, int] = {}
    for status in statuses.values():
        by_status[status] = by_status.get(status, 0) + 1
    before_count = sum(s.began < killed for s in before)
    return SoakReport(
        slides=len(names),
        slides_lost=len(lost),
        slides_by_status=by_status,
        killed_after_slides=0,
        server_requests=len(before) + len(after),
        faults_injected=faults,
        attempt_rows_in_store=len(starts),
        attempts_before_kill_server=before_count,
        attempt_rows_before_kill=rows_before,
        in_flight_at_kill=len(in_flight),
        attempts_after_resume_server=len(after),
        attempt_rows_after_resume=len(starts) - rows_before,
        every_attempt_in_store=(
            len(starts) - rows_before == len(after) and 0 <= before_count - rows_before <= len(in_flight)
        ),
        masks_identical=len(names) - len(different),
        masks_different=different,
        paid_before_kill=len(usable_before) + len(unusable_before),
        repeated_paid=len(repeated),
        repeated_in_flight=len(repeated_in_flight),
        repeated_unusable_before=len(repeated_unusable),
        repeated_not_in_flight=len(other),
        repeated_not_in_flight_detail=other_detail,
        seconds_reference=0.0,
        seconds_soak=0.0,
        reference_requests=0,
    )


def report_text(report: SoakReport) -> str:
    lines = [
        "soak (loopback OpenAI fake; no VLM; every figure is the fake server's and this store's)",
        f"  slides                      {report.slides} (killed after {report.killed_after_slides} finished)",
        f"  slides lost                 {report.slides_lost}   statuses {report.slides_by_status}",
        f"  server requests (soak)      {report.server_requests}   faults {report.faults_injected}",
        f"  attempts before kill        server {report.attempts_before_kill_server}, store rows "
        f"{report.attempt_rows_before_kill}, in flight at kill {report.in_flight_at_kill}",
        f"  attempts after resume       server {report.attempts_after_resume_server}, store rows "
        f"{report.attempt_rows_after_resume}",
        f"  every attempt in the store  {report.every_attempt_in_store}",
        f"  masks identical to the fault-free run  {report.masks_identical}/{report.slides}"
        + (f"  different: {report.masks_different[:10]}" if report.masks_different else ""),
        f"  paid answers before kill    {report.paid_before_kill}; asked again after resume "
        f"{report.repeated_paid} (in flight at kill {report.repeated_in_flight}, unusable malformed "
        f"answer {report.repeated_unusable_before}, other {report.repeated_not_in_flight})"
        + "".join(f"\n    other: {d}" for d in report.repeated_not_in_flight_detail),
        f"  wall time                   reference {report.seconds_reference:.0f} s "
        f"({report.reference_requests} requests), soak incl. kill+resume {report.seconds_soak:.0f} s",
        f"  PASSED: {report.passed}",
    ]
    return "\n".join(lines)


def write_report(report: SoakReport, path: Path) -> None:
    data: dict[str, Any] = asdict(report)
    data["passed"] = report.passed
    path.write_text(json.dumps(data, indent=2))
