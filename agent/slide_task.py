"""One slide as a self-contained task for a Dask worker: lock, segment, record to shards, report back.

The coordinator (``agent.distributed_run``) sends a :class:`SlideTask`; the worker process runs
:func:`run_slide_task` and returns a :class:`SlideTaskResult`. Everything the task needs travels
in it (policy, backend specs, its share of the run budget, the earlier calls of this slide for the
cache), so a worker on another machine needs only the shared filesystem for the slide file and
``OUT``.

Records: the worker writes Parquet shards (``store.shards.ShardWriter``) into
``OUT/shards/<run>/``, one shard per oracle call the moment it is answered (``flush_interval_s=0``)
and one set when the slide finishes. A shard appears atomically, so after a ``kill -9`` every call
answered before it is on disk, and a resumed run answers it from the cache: only calls that were in
flight at the kill are paid twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.runs import SlideOutcome
from tissue_oracle.agent.slide_lock import SlideLock
from tissue_oracle.policies.ledger import Amount, BudgetLedger
from tissue_oracle.policies.policy import Budget
from tissue_oracle.tools.schemas import CallRecord, Role


@dataclass(kw_only=True)
class SlideTask:
    """What one worker needs to segment one slide."""

    path: Path
    slide_id: str
    settings: RunSettings
    overrides: dict[Role, str | None] = field(default_factory=dict)
    base_urls: dict[str, str] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    """This slide's share of the run budget, granted by the coordinator at dispatch."""
    in_flight: int = 16
    """This worker's share of each backend's in-flight requests."""
    cache_seed: list[CallRecord] = field(default_factory=list)
    """Earlier ok calls of this slide (a crashed attempt's), answered from the cache."""

    @property
    def lock_key(self) -> str:
        return lock_prefix(self.settings.run_id) + _file_safe(self.slide_id)


@dataclass(kw_only=True)
class SlideTaskResult:
    """How the slide ended and what it spent against its budget share."""

    outcome: SlideOutcome
    spent: Amount = field(default_factory=Amount)
    locked: bool = False
    """Another live worker holds the slide's lock: this task did nothing."""


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def lock_prefix(run_id: str) -> str:
    """How the lock files of this run's slides begin: ``<run>--``."""
    return f"{_file_safe(run_id)}--"


def shard_dir_of(out_dir: Path, run_id: str) -> Path:
    return out_dir / "shards" / _file_safe(run_id)


def lock_dir_of(out_dir: Path) -> Path:
    return out_dir / "locks"


def run_slide_task(task: SlideTask) -> SlideTaskResult:
    """Run on a worker: hold the slide's lock, segment it, write its shards; never raises for the slide."""
    from tissue_oracle.store.shards import ShardWriter

    settings = task.settings
    lock = SlideLock(lock_dir_of(settings.out_dir), task.lock_key)
    if not lock.acquire():
        holder = lock.holder()
        who = f"pid {holder.pid} on {holder.host}" if holder else "another worker"
        error = f"slide is locked by {who}"
        outcome = SlideOutcome(slide_id=task.slide_id, path=task.path, status="failed", error=error)
        return SlideTaskResult(outcome=outcome, locked=True)
    try:
        worker = f"{re.sub(r'[^A-Za-z0-9]', '', task.slide_id)[:24] or 'slide'}-{secrets.token_hex(4)}"
        shard_dir = shard_dir_of(settings.out_dir, settings.run_id)
        with ShardWriter(shard_dir, worker, flush_interval_s=0.0) as shards:
            shards.seed_cache(task.cache_seed)
            return asyncio.run(_segment(task, shards))
    finally:
        lock.release()


async def _segment(task: SlideTask, shards: Any) -> SlideTaskResult:
    from tissue_oracle.agent.oracle_setup import build_oracles
    from tissue_oracle.agent.runs import segment_one

    policy = task.settings.policy.with_updates({"classify.max_in_flight": task.in_flight})
    settings = dataclasses.replace(task.settings, policy=policy)
    ledger = BudgetLedger(task.budget, scope="run (this slide's share)")
    oracles = build_oracles(policy, overrides=task.overrides, base_urls=task.base_urls)
    try:
        deps = RunDeps(oracles=oracles, store=shards, ledger=ledger)
        outcome = await segment_one(task.path, task.slide_id, settings, deps)
    finally:
        await oracles.aclose()
    return SlideTaskResult(outcome=outcome, spent=ledger.committed)
