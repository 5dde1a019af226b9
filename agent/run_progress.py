"""The live progress bar of a run: slides done, failed and degraded, calls, and USD spent against the cap.

It reads the run's state from the audit store (slides by status, calls and their cost) about once a
second on its own thread, so it shows the same numbers whether slides run in this process or on
Dask workers whose shards the coordinator merges.
"""

from __future__ import annotations

import threading
from typing import Any

from tissue_oracle.store.audit_store import FINISHED_STATUSES
from tissue_oracle.store.run_reports import run_state

_POLL_S = 1.0


class RunProgress:
    """A rich progress bar over the run's slides (or nothing when disabled); a context manager."""

    def __init__(self, store: Any, run_id: str, total: int, *, usd_cap: float | None, enabled: bool = True):
        self.store, self.run_id, self.total, self.usd_cap, self.enabled = (
            store,
            run_id,
            total,
            usd_cap,
            enabled,
        )
        self.bar: Any = None
        self.task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from tissue_oracle.agent.console import make_console

        self.bar = Progress(
            TextColumn("slides"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=make_console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("slides", total=self.total, detail="starting")
        self._thread = threading.Thread(target=self._poll, name="run progress", daemon=True)
        self._thread.start()
        return self

    def describe(self, state: dict[str, float]) -> str:
        cap = "no cap" if self.usd_cap is None else f"cap ${self.usd_cap:.2f}"
        n = {k: int(v) for k, v in state.items() if k != "usd"}
        return (
            f"done {n['done']} · degraded {n['degraded']} · failed {n['failed']} · "
            f"calls {n['calls']} ({n['failed_calls']} failed) · ${state['usd']:.4f} of {cap}"
        )

    def refresh(self) -> None:
        """Read the store and redraw (also called by the coordinator after each shard merge)."""
        if self.bar is None:
            return
        try:
            state = self.store.query(lambda conn: run_state(conn, self.run_id))
        except Exception:  # the store closing under us at the end of the run: keep the last line
            return
        finished = sum(int(state.get(s, 0)) for s in (*FINISHED_STATUSES, "failed"))
        self.bar.update(self.task, completed=min(finished, self.total), detail=self.describe(state))

    def _poll(self) -> None:
        while not self._stop.wait(_POLL_S):
            self.refresh()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.refresh()
            self.bar.stop()
