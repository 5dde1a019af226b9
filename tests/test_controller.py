"""The controller end to end: a two-core virtual slide, the classical oracle, a real DuckDB store.

Checks that every call, decision, patch and output lands in the store, that the summary agrees
with the store, that review can trigger Auto-context, and that a spent budget degrades the slide
instead of breaking a cap.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stage_support import core_slide_pixels

from tissue_oracle.agent.controller import segment_slide
from tissue_oracle.agent.oracle_setup import build_oracles
from tissue_oracle.agent.outputs import OUTPUT_NAMES
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.runs import run_record
from tissue_oracle.agent.summary import SlideSummary
from tissue_oracle.policies.policy import Policy, load_policy
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.slides import open_slide

PATCH = 256


def small_policy(**updates: Any) -> Policy:
    """The default policy on a small grid (256 px patches sent at 128 px, 512 px review crops)."""
    base = {
        "classify.patch_size": PATCH,
        "classify.send_size": 128,
        "classify.batch_size": 16,
        "review.crop_size": 512,
        "classify.classical_map": False,  # these tests exercise the coarse-to-fine structure
    }
    return load_policy("default").with_updates(base | updates)


def truth_patches() -> np.ndarray:
    """Patch-level truth of the two-core slide: tissue when at least half the patch is tissue."""
    _, truth = core_slide_pixels()
    rows, cols = -(-truth.shape[0] // PATCH), -(-truth.shape[1] // PATCH)
    padded = np.zeros((rows * PATCH, cols * PATCH), dtype=bool)
    padded[: truth.shape[0], : truth.shape[1]] = truth
    return padded.reshape(rows, PATCH, cols, PATCH).mean(axis=(1, 3)) >= 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def run(policy: Policy, store: Any, out: Path, run_id: str = "run-1") -> SlideSummary:
    image, _ = core_slide_pixels()

    async def main() -> SlideSummary:
        oracles = build_oracles(policy)
        try:
            with open_slide(image, name="two-cores") as slide:
                settings = RunSettings(run_id=run_id, policy=policy, out_dir=out)
                deps = RunDeps.for_run(settings, oracles=oracles, store=store)
                return await segment_slide(slide, settings, deps)
        finally:
            await oracles.aclose()

    return asyncio.run(main())


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with AuditStore.open(db, read_only=True) as store:
        return store.query(lambda conn: conn.execute(sql).fetchall())


def test_every_call_decision_patch_and_output_is_in_the_store(tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    policy = small_policy()
    with AuditStore.open(db) as store:
        store.begin_run(run_record("run-1", policy))
        summary = run(policy, store, tmp_path)
        store.finish_run("run-1", "finished")

    assert summary.labelled_as == "classical (no VLM)"
    assert all(not o["is_vlm"] for o in summary.oracles.values())
    paid, hits = rows(db, "SELECT count(*) FILTER (NOT cache_hit), count(*) FILTER (cache_hit) FROM calls")[0]
    assert (paid, hits) == (summary.totals.calls, summary.totals.cache_hits) and paid > 0
    by_stage = dict(rows(db, "SELECT stage, count(*) FILTER (NOT cache_hit) FROM calls GROUP BY stage"))
    assert {s: n for s, n in by_stage.items() if n} == {
        s: st.calls for s, st in summary.stages.items() if st.calls
    }
    assert rows(db, "SELECT count(*) FROM calls WHERE run_id <> 'run-1' OR slide_id <> 'two-cores'") == [(0,)]
    decisions = rows(db, "SELECT region, round, action FROM decisions ORDER BY region, round")
    assert decisions == [(r.index, d.round, d.action) for r in summary.regions for d in r.rounds]
    assert len(summary.regions) == 2 and all(r.rounds for r in summary.regions)
    outputs = dict(rows(db, "SELECT kind, path FROM outputs"))
    assert set(outputs) == set(OUTPUT_NAMES) and all(Path(p).is_file() for p in outputs.values())
    assert rows(db, "SELECT status FROM slides") == [(summary.status,)]

    final = np.load(tmp_path / "two-cores" / "mask.npy")
    tissue_rows = rows(db, "SELECT x, y FROM patches WHERE label = 'tissue'")
    assert sorted((y // PATCH, x // PATCH) for x, y in tissue_rows) == sorted(
        zip(*np.nonzero(final), strict=True)
    )
    assert final.sum() == summary.patches.tissue
    assert dice(final, truth_patches()) >= 0.8
    # coarse-to-fine: far fewer questions than one per patch of the slide
    assert summary.totals.calls < summary.patches.naive_calls / 4


def test_strict_review_triggers_auto_context_per_region(tmp_path: Path) -> None:
    recorder = MemoryRecorder()
    policy = small_policy(**{"review.threshold": 1, "review.max_rounds": 1, "review.revert_if_worse": False})
    summary = run(policy, recorder, tmp_path)

    refined = [r for r in summary.regions if r.refinements]
    assert refined, [r.rounds for r in summary.regions]
    assert all(r.rounds[0].action == "refine" and r.rounds[0].exemplars for r in refined)
    stages = {c.stage for c in recorder.calls}
    assert {"point_ground", "rerank_exemplars"} <= stages
    assert any(p.source == "few_shot" for p in recorder.patches)
    actions = sorted((d.region, d.round, d.action) for d in recorder.decisions)
    assert actions == [(r.index, d.round, d.action) for r in summary.regions for d in r.rounds]
    assert summary.regions[0].rounds[-1].action in ("accept", "escalate")
    zero = np.load(tmp_path / "two-cores" / "mask_zero_shot.npy")
    final = np.load(tmp_path / "two-cores" / "mask.npy")
    before, after = dice(zero, truth_patches()), dice(final, truth_patches())
    print(f"Auto-context Dice: zero-shot {before:.3f} -> final {after:.3f}")


def test_review_disabled_accepts_without_asking_the_reviewer(tmp_path: Path) -> None:
    recorder = MemoryRecorder()
    summary = run(small_policy(**{"review.enabled": False}), recorder, tmp_path)
    assert {c.stage for c in recorder.calls} == {"ground_boxes", "classify_patches"}
    assert [d.action for d in recorder.decisions] == ["accept"] * len(summary.regions)
    assert summary.flags == [] and summary.status == "done"


@pytest.mark.parametrize("cap", [2, 5])
def test_spent_slide_budget_degrades_and_flags_the_slide(tmp_path: Path, cap: int) -> None:
    db = tmp_path / "audit.duckdb"
    policy = small_policy(**{"budgets.slide.calls": cap})
    with AuditStore.open(db) as store:
        store.begin_run(run_record("run-1", policy))
        summary = run(policy, store, tmp_path)

    assert summary.status == "degraded"
    assert {"budget_exhausted", "needs_human_review"} <= set(summary.flags)
    assert any("budget" in reason for reason in summary.reasons)
    assert rows(db, "SELECT count(*) FROM calls WHERE NOT cache_hit") == [(summary.totals.calls,)]
    assert summary.totals.calls <= cap
    status, error, flags = rows(db, "SELECT status, error, flags FROM slides")[0]
    assert status == "degraded" and "budget" in error and "needs_human_review" in flags
    # the slide still has a complete mask: unanswered patches kept the coarse label
    assert (tmp_path / "two-cores" / "summary.json").is_file()
    assert all(r.needs_human_review and "budget" in r.reason for r in summary.regions)
    if cap == 2:  # the zero-shot pass itself ran out: its unanswered patches kept the coarse label
        assert summary.patches.coarse_fallback > 0


def test_failed_questions_keep_the_coarse_label_and_ask_for_a_human(tmp_path: Path) -> None:
    from stage_support import FaultyOracle, segment_two_cores

    from tissue_oracle.oracles.classical import ClassicalOracle

    policy = small_policy(**{"review.enabled": False, "classify.batch_size": 4})
    faulty = FaultyOracle(inner=ClassicalOracle(), fail={"patch_labels": {1, 2}})
    summary, recorder = segment_two_cores(policy, faulty, tmp_path)
    assert summary.patches.coarse_fallback == 8  # two failed questions of four patches each
    assert {"oracle_errors", "needs_human_review"} <= set(summary.flags) and summary.status == "done"
    assert any("coarse label after oracle errors" in r for r in summary.reasons)
    assert sum(p.source == "coarse" for p in recorder.patches) >= 8
