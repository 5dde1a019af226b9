"""What one run's slides share: its settings (plain data) and its deps (live resources).

``segment`` builds both once (``agent.cmd_segment.run_segment``) and passes them unchanged
through ``agent.runs.run_slides`` to ``agent.controller.segment_slide``. Settings are frozen and
hold no open handle, so they can be copied to another process; deps hold the open oracles, the
store and the run's budget ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Policy
from tissue_oracle.store.recorder import AuditRecorder

if TYPE_CHECKING:
    from tissue_oracle.agent.oracle_setup import OracleSet


@dataclass(kw_only=True, frozen=True)
class RunSettings:
    """How every slide of one run is segmented and where its results go."""

    run_id: str
    """The run's id in the store; a run id the store already holds resumes that run."""
    policy: Policy
    """Stage parameters, review rules and budgets (command-line caps already applied)."""
    out_dir: Path
    """Output folder: one ``<slide_id>/`` sub-folder per slide, ``audit.duckdb`` beside them."""
    use_cache: bool = True
    """Answer a question from the store when it was answered before (False: ask again)."""
    mpp: float | None = None
    """Microns per pixel for slides that don't record it (None: the slide's own, or none)."""
    workers: int | None = None
    """Run this many slides at once on a Dask ``LocalCluster`` (None: one after another, in process)."""
    scheduler: str | None = None
    """A Dask scheduler address (``tcp://host:8786``) to run the slides on instead."""

    @property
    def distributed(self) -> bool:
        """Whether the slides run on Dask (``agent.distributed_run``)."""
        return self.workers is not None or self.scheduler is not None

    def slide_dir(self, slide_id: str) -> Path:
        """Where one slide's outputs go."""
        return self.out_dir / slide_id


class SlidePlanner(Protocol):
    """Plans a slide in place of the policy's fixed flow: ``agent.planned_slide.LivePlanner``."""

    async def plan(self, run: Any) -> Any:
        """``(coarse, regions, final labels, planner report)`` for ``run`` (a ``SlideRun``)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(kw_only=True)
class RunDeps:
    """The live resources a run's slides share; the caller opens and closes them."""

    oracles: OracleSet
    """The built oracle of each role."""
    store: AuditRecorder
    """Records the run, its slides, calls, decisions, patches and outputs: an ``AuditStore``,
    or a ``MemoryRecorder`` in tests and dry runs."""
    ledger: BudgetLedger
    """The run's budget ledger (``budgets.run``); each slide charges a child ledger of it."""
    planner: SlidePlanner | None = None
    """The LLM planner that drives each slide's stage tools (``roles.planner``); None: the policy does."""

    @classmethod
    def for_run(
        cls,
        settings: RunSettings,
        *,
        oracles: OracleSet,
        store: AuditRecorder,
        planner: SlidePlanner | None = None,
    ) -> RunDeps:
        """Deps with a fresh run ledger under ``settings.policy.budgets.run``."""
        return cls(
            oracles=oracles,
            store=store,
            ledger=BudgetLedger(settings.policy.budgets.run, scope="run"),
            planner=planner,
        )
