"""Many slides at once on Dask distributed: ``segment --workers N`` or ``--scheduler tcp://host:8786``.

The coordinator (this module, in the ``segment`` process) owns the run: the audit store (the
single DuckDB writer), the run budget and the queue of slides. Worker threads (of a local Dask
worker for ``--workers N``, or of ``dask worker`` processes anywhere with a shared filesystem for
``--scheduler``) each run one slide at a time (``agent.slide_task``): they read the slide, call the
oracles and write their records as Parquet shards into ``OUT/shards/<run>/``. The coordinator
merges the shards into ``audit.duckdb`` as they arrive (about once a second) and once at the end.

Why shards rather than records returned to the coordinator: a call must be durable the moment it
is answered, on disk, independent of the coordinator and of Dask, so that a ``kill -9`` of the
whole run loses only what was in flight. A record travelling back through Dask dies with the
worker or the scheduler. A shard file written on the shared filesystem outlives both, and
``merge_shards`` is idempotent, so the resumed run merges what the crashed one left and answers
those calls from the cache.

Limits across all workers:

- run budget: the coordinator grants each slide a share at dispatch (``agent.budget_shares``);
- in-flight requests per backend: each of the cluster's T worker threads gets ``L // T`` of the
  policy's ``classify.max_in_flight`` (L), so together they never exceed L; asking for more
  worker threads than L is refused;
- one slide on one worker at a time: an ``O_EXCL`` lock file per slide (``agent.slide_lock``)
  that a crashed worker's successor can break safely.

Only as many slides as there are worker threads are dispatched at once, so budget shares are
granted when a slide starts, not all up front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tissue_oracle.agent.budget_shares import BudgetShares
from tissue_oracle.agent.oracle_setup import role_specs
from tissue_oracle.agent.resume import prepare_resume
from tissue_oracle.agent.run_settings import RunSettings
from tissue_oracle.agent.runs import RunResult, SlideOutcome, run_record
from tissue_oracle.agent.slide_ids import check_run_id
from tissue_oracle.agent.slide_lock import clear_stale_locks
from tissue_oracle.agent.slide_task import (
    SlideTask,
    SlideTaskResult,
    lock_dir_of,
    lock_prefix,
    run_slide_task,
    shard_dir_of,
)
from tissue_oracle.policies.ledger import Amount, Reservation
from tissue_oracle.store import run_reports
from tissue_oracle.store.shards import merge_shards
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.schemas import CallRecord, Role

_log = logging.getLogger(__name__)

#: Seconds between shard merges (and progress updates) while slides run.
MERGE_INTERVAL_S = 1.0


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A client on ``scheduler``, or on a new ``LocalCluster`` (one in-process worker, ``workers`` threads).

    A slide's work is mostly waiting for the endpoint, so on one machine threads keep it busy
    without starting a process per worker and importing the pipeline in each (measured on the
    2-core build machine under load: 38 s to start 4 worker processes, against about 1 s for
    threads). For CPU-heavy slides or many machines, start ``dask worker`` processes and pass
    ``--scheduler`` (docs/scale.md).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(
                f"--scheduler {scheduler!r}: no Dask scheduler answered ({exc}). Start one with "
                "'dask scheduler' and workers with 'dask worker tcp://HOST:8786', or use --workers N."
            ) from exc
        with client:
            client.wait_for_workers(1, timeout=60)
            yield client
        return
    n = max(1, workers or 1)
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=n,
            processes=False,
            # ":0", not None: with None the scheduler still binds its HTTP server to 8787 (distributed
            # scheduler.py start_http_server default_port), which clashes with any other cluster.
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def merge_and_clear(store: Any, shard_dir: Path) -> int:
    """Merge every complete shard into the store, then delete the shards merged (they are in it)."""
    if not shard_dir.is_dir():
        return 0
    present = [p for p in shard_dir.glob("*-*-*.parquet")]
    loaded = merge_shards(store, shard_dir)
    for path in present:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return loaded


def spent_in_store(store: Any, run_id: str) -> Amount:
    """What the run's calls already cost (an earlier attempt, on resume); cache hits cost nothing."""
    calls, tokens, usd = store.query(lambda conn: run_reports.run_spend(conn, run_id))
    return Amount(calls=calls, tokens=tokens, usd=usd)


def earlier_calls(store: Any, slide_id: str) -> list[CallRecord]:
    """The ok calls recorded for this slide id, in order, to seed a worker's cache (and, for this
    run's own paid calls, to hand back an interrupted attempt's answers one by one)."""
    found: list[CallRecord] = store.query(lambda conn: run_reports.slide_ok_calls(conn, slide_id))
    return found


def run_distributed(
    paths: list[Path],
    settings: RunSettings,
    store: Any,
    *,
    overrides: dict[Role, str | None],
    base_urls: dict[str, str],
    on_merge: Callable[[], None] | None = None,
) -> RunResult:
    """Segment ``paths`` on a Dask cluster; never raises for one slide's failure (see the module doc).

    ``store`` is the run's open ``AuditStore``: the run is begun and finished there, and every
    worker's shards are merged into it.
    """
    from distributed import wait

    shard_dir = shard_dir_of(settings.out_dir, check_run_id(settings.run_id))
    merge_and_clear(store, shard_dir)  # what a crashed attempt left behind
    settings, plans = prepare_resume(paths, settings, store, role_specs(settings.policy, overrides))
    run_id, policy = settings.run_id, settings.policy
    for key in clear_stale_locks(lock_dir_of(settings.out_dir), lock_prefix(run_id)):
        _log.info("removed the stale lock %s left by a worker that was killed", key)
    store.begin_run(run_record(run_id, policy))
    shares = BudgetShares(
        policy.budgets.run, policy.budgets.slide, spent_before=spent_in_store(store, run_id)
    )
    result = RunResult(run_id=run_id, out_dir=settings.out_dir, ledger=shares.ledger)
    ids = [plan.slide_id for plan in plans]
    notes = {plan.slide_id: plan.note for plan in plans}
    outcomes: dict[str, SlideOutcome] = {}
    todo: list[tuple[Path, str]] = []
    for plan in plans:
        if plan.skip:
            outcomes[plan.slide_id] = SlideOutcome(
                slide_id=plan.slide_id, path=plan.path, status="skipped", note=plan.note
            )
        else:
            todo.append((plan.path, plan.slide_id))
    worker_settings = dataclasses.replace(settings, out_dir=settings.out_dir.resolve())
    status = "interrupted"
    try:
        with dask_client(settings.workers, settings.scheduler) as client:
            threads = sum(client.nthreads().values())
            in_flight = in_flight_share(policy.classify.max_in_flight, threads)
            running: dict[Any, tuple[Path, str, Reservation]] = {}
            last_merge = time.monotonic()
            while todo or running:
                while todo and len(running) < threads:
                    path, sid = todo.pop(0)
                    reservation, budget = shares.grant(len(todo) + 1)
                    task = SlideTask(
                        path=path.resolve(),
                        slide_id=sid,
                        settings=worker_settings,
                        overrides=overrides,
                        base_urls=base_urls,
                        budget=budget,
                        in_flight=in_flight,
                        cache_seed=earlier_calls(store, sid) if settings.use_cache else [],
                    )
                    future = client.submit(run_slide_task, task, key=f"slide-{run_id}-{sid}", pure=False)
                    running[future] = (path, sid, reservation)
                finished = _wait_some(wait, list(running), MERGE_INTERVAL_S)
                if finished or time.monotonic() - last_merge >= MERGE_INTERVAL_S:
                    merge_and_clear(store, shard_dir)
                    last_merge = time.monotonic()
                    if on_merge is not None:
                        on_merge()
                for future in finished:
                    path, sid, reservation = running.pop(future)
                    outcome, spent = _outcome(future, path, sid, reservation.amount)
                    shares.settle(reservation, spent)
                    outcome.note = notes.get(sid)
                    outcomes[sid] = outcome
        merge_and_clear(store, shard_dir)
        result.outcomes = [outcomes[sid] for sid in ids if sid in outcomes]
        status = "failed" if result.all_failed else "finished"
    finally:
        with contextlib.suppress(Exception):
            merge_and_clear(store, shard_dir)
        store.finish_run(run_id, status)
    return result


def in_flight_share(limit: int, threads: int) -> int:
    """Each worker thread's share of a backend's in-flight limit, so all of them together keep to it."""
    if threads > limit:
        raise ConfigError(
            f"{threads} worker threads would exceed the backend limit of {limit} requests in flight "
            "(policy classify.max_in_flight). Use fewer workers or raise the limit."
        )
    return limit // threads


def _wait_some(wait: Any, futures: list[Any], timeout: float) -> list[Any]:
    if not futures:
        return []
    try:
        done, _ = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
    except TimeoutError:
        return []
    return list(done)


def _outcome(future: Any, path: Path, sid: str, share: Amount) -> tuple[SlideOutcome, Amount]:
    """The slide's outcome and what to charge it; a slide lost with its worker is charged its whole share."""
    try:
        got: SlideTaskResult = future.result()
    except Exception as exc:  # KilledWorker, or a failure outside the task's own guard
        error = f"{type(exc).__name__}: {exc} (the worker was lost; its calls are in the store)"
        return SlideOutcome(slide_id=sid, path=path, status="failed", error=error), share
    return got.outcome, got.spent
