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
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tissue_oracle.agent.slide_lock import SlideLock
from tissue_oracle.agent.summary import SlideSummary
from tissue_oracle.policies.ledger import Amount, BudgetLedger
from tissue_oracle.policies.policy import Budget, Policy
from tissue_oracle.tools.errors import TissueOracleError
from tissue_oracle.tools.schemas import CallRecord, Role


@dataclass(kw_only=True)
class SlideTask:
    """What one worker needs to segment one slide."""

    path: Path
    slide_id: str
    run_id: str
    out_dir: Path
    policy: Policy
    overrides: dict[Role, str | None] = field(default_factory=dict)
    base_urls: dict[str, str] = field(default_factory=dict)
    use_cache: bool = True
    mpp: float | None = None
    budget: Budget = field(default_factory=Budget)
    """This slide's share of the run budget, granted by the coordinator at dispatch."""
    in_flight: int = 16
    """This worker's share of each backend's in-flight requests."""
    cache_seed: list[CallRecord] = field(default_factory=list)
    """Earlier ok calls of this slide (a crashed attempt's), answered from the cache."""

    @property
    def shard_dir(self) -> Path:
        return shard_dir_of(self.out_dir, self.run_id)

    @property
    def lock_key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.run_id}--{self.slide_id}")


@dataclass(kw_only=True)
class SlideTaskResult:
    """How the slide ended, what it spent against its budget share, and its summary."""

    slide_id: str
    status: Literal["done", "degraded", "failed", "locked"]
    spent: Amount = field(default_factory=Amount)
    summary: SlideSummary | None = None
    error: str | None = None


def shard_dir_of(out_dir: Path, run_id: str) -> Path:
    return out_dir / "shards" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def lock_dir_of(out_dir: Path) -> Path:
    return out_dir / "locks"


def run_slide_task(task: SlideTask) -> SlideTaskResult:
    """Run on a worker: hold the slide's lock, segment it, write its shards; never raises."""
    from tissue_oracle.store.shards import ShardWriter

    lock = SlideLock(lock_dir_of(task.out_dir), task.lock_key)
    if not lock.acquire():
        holder = lock.holder()
        who = f"pid {holder.pid} on {holder.host}" if holder else "another worker"
        return SlideTaskResult(slide_id=task.slide_id, status="locked", error=f"slide is locked by {who}")
    try:
        worker = f"{re.sub(r'[^A-Za-z0-9]', '', task.slide_id)[:24] or 'slide'}-{secrets.token_hex(4)}"
        with ShardWriter(task.shard_dir, worker, flush_interval_s=0.0) as shards:
            shards.seed_cache(task.cache_seed)
            return asyncio.run(_segment(task, shards))
    finally:
        lock.release()


async def _segment(task: SlideTask, shards: object) -> SlideTaskResult:
    from tissue_oracle.agent.controller import segment_slide
    from tissue_oracle.agent.oracle_setup import build_oracles

    policy = task.policy.with_updates({"classify.max_in_flight": task.in_flight})
    ledger = BudgetLedger(task.budget, scope="run (this slide's share)")
    oracles = build_oracles(policy, overrides=task.overrides, base_urls=task.base_urls)
    try:
        summary = await segment_slide(
            task.path,
            policy=policy,
            oracles=oracles,
            store=shards,
            run_id=task.run_id,
            out_dir=task.out_dir,
            use_cache=task.use_cache,
            ledger=ledger,
            slide_id=task.slide_id,
            mpp=task.mpp,
        )
    except TissueOracleError as exc:
        return SlideTaskResult(slide_id=task.slide_id, status="failed", spent=ledger.committed, error=str(exc))
    except Exception as exc:  # a bug on one slide must not cost the batch; the shards have the error
        error = f"{type(exc).__name__}: {exc}"
        return SlideTaskResult(slide_id=task.slide_id, status="failed", spent=ledger.committed, error=error)
    finally:
        await oracles.aclose()
    return SlideTaskResult(
        slide_id=task.slide_id, status=summary.status, spent=ledger.committed, summary=summary
    )
