"""Many slides under one policy: expand paths, isolate failures, resume, and share a run budget.

``run_slides`` segments slides one after another (each slide runs its own oracle calls
concurrently), all charging one run ledger, so ``budgets.run`` is a hard cap over the batch.
A slide that fails is recorded as failed and the batch goes on: results already paid for are
kept. A run id that the store already holds resumes (``agent.resume``): slides it finished are
skipped, matched by content hash, and a policy other than the run's is refused.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from tissue_oracle.agent.controller import segment_file
from tissue_oracle.agent.resume import prepare_resume
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.slide_inputs import expand_inputs
from tissue_oracle.agent.summary import NO_VLM_ANSWER, SlideSummary
from tissue_oracle.policies.ledger import BudgetLedger
from tissue_oracle.policies.policy import Policy
from tissue_oracle.tools.errors import ConfigError, TissueOracleError
from tissue_oracle.tools.schemas import RunRecord

#: File suffixes taken from a folder (a file named explicitly is always tried).
SLIDE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".svs",
        ".ndpi",
        ".mrxs",
        ".scn",
        ".bif",
        ".tif",
        ".tiff",
        ".dcm",
        ".vms",
        ".svslide",
        ".png",
        ".jpg",
        ".jpeg",
    }
)


@dataclass(kw_only=True)
class SlideOutcome:
    """What happened to one slide of a run."""

    slide_id: str
    path: Path
    status: Literal["done", "degraded", "failed", "skipped"]
    summary: SlideSummary | None = None
    error: str | None = None
    note: str | None = None
    """Resume's word on the slide: changed since the run finished it, or skipped as a copy."""


@dataclass(kw_only=True)
class RunResult:
    """Every slide's outcome, in input order, and the run's ledger."""

    run_id: str
    out_dir: Path
    outcomes: list[SlideOutcome] = field(default_factory=list)
    ledger: BudgetLedger | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def none_as_asked(self) -> bool:
        """True when no slide got what was asked: each failed, or its VLM classifier answered no
        patch (every call failed, or none was allowed) so only the coarse mask labelled it."""
        return bool(self.outcomes) and all(
            o.status == "failed"
            or (o.summary is not None and o.summary.labelled_as.startswith(NO_VLM_ANSWER))
            for o in self.outcomes
        )

    @property
    def all_failed(self) -> bool:
        """True when every slide failed (the CLI's non-zero exit); a slide skipped on resume had
        finished in an earlier attempt, so it counts as a success."""
        return bool(self.outcomes) and all(o.status == "failed" for o in self.outcomes)


def expand_paths(items: list[str], on_problem: Any = None) -> list[Path]:
    """Files as given, folders' slide files (not recursive), and globs (``agent.slide_inputs``).

    An argument that gives no slide (empty folder, unmatched glob, symlink loop) is passed to
    ``on_problem`` and the others go on; ``ConfigError`` only when no argument gives a slide.
    """
    paths, problems = expand_inputs(items, SLIDE_SUFFIXES)
    if not paths:
        listed = "; ".join(map(str, problems))
        raise ConfigError(f"{listed}: no slide files. Give files, folders or globs of slides.")
    for problem in problems:
        if on_problem is not None:
            on_problem(problem)
    return paths


def new_run_id() -> str:
    return f"run-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def tool_version() -> str:
    try:
        return metadata.version("tissue-oracle")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_record(run_id: str, policy: Policy) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        policy_name=policy.name,
        policy_yaml=policy.to_yaml(),
        policy_hash=policy.policy_hash,
        tool_version=tool_version(),
        command_line=" ".join(sys.argv),
    )


async def run_slides(
    paths: list[Path], settings: RunSettings, deps: RunDeps, *, progress: Any = None
) -> RunResult:
    """Segment ``paths`` in order, all charging ``deps.ledger``; never raises for one slide's failure.

    ``deps.store`` is an open ``AuditStore``; the run is begun and finished in it. ``progress`` is
    an optional callable ``(done, total, slide_id)``.
    """
    store = deps.store
    settings, plans = prepare_resume(paths, settings, store, deps.oracles.specs)
    run_id = settings.run_id
    store.begin_run(run_record(run_id, settings.policy))
    result = RunResult(run_id=run_id, out_dir=settings.out_dir, ledger=deps.ledger)
    status = "interrupted"
    try:
        for i, plan in enumerate(plans):
            path, sid = plan.path, plan.slide_id
            if progress is not None:
                progress(i, len(paths), sid)
            if plan.skip:
                skipped = SlideOutcome(slide_id=sid, path=path, status="skipped", note=plan.note)
                result.outcomes.append(skipped)
                continue
            outcome = await segment_one(path, sid, settings, deps)
            outcome.note = plan.note
            result.outcomes.append(outcome)
        if progress is not None:
            progress(len(paths), len(paths), "")
        status = "failed" if result.all_failed else "finished"
    finally:
        store.finish_run(run_id, status)
    return result


async def segment_one(path: Path, sid: str, settings: RunSettings, deps: RunDeps) -> SlideOutcome:
    """One slide file's outcome; a slide error or a bug is a failed outcome, never an exception."""
    try:
        summary = await segment_file(path, settings, deps, slide_id=sid)
    except TissueOracleError as exc:
        return SlideOutcome(slide_id=sid, path=path, status="failed", error=str(exc))
    except Exception as exc:  # a bug on one slide must not cost the batch; the store has the error
        return SlideOutcome(slide_id=sid, path=path, status="failed", error=f"{type(exc).__name__}: {exc}")
    return SlideOutcome(slide_id=sid, path=path, status=summary.status, summary=summary)
