"""The full pipeline (``agent.controller.segment_slide``) as bench methods, and the SIMULATED policy sweep.

Each pipeline method runs the controller twice per slide under the ``default`` policy with the
case's patch size:

- review off and clean off: the raw **zero-shot** labels;
- review on: the cleaned zero-shot mask (``mask_zero_shot.npy``: **zero-shot + clean**) and the
  final mask (``mask.npy``: **+ auto-context + clean**).

Cost comes from the audit store (``calls`` table, cache hits excluded) and focus from its
``patches`` table. The policy sweep drives the controller with the SIMULATED oracle over review
thresholds (tau_g), rounds and per-slide call budgets, and reports Dice against calls.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.bench.evaluation.harness import Case, CaseEnv, Method, Prediction
from tissue_oracle.bench.evaluation.metrics import seg_scores
from tissue_oracle.store.reads import StoreReads
from tissue_oracle.tools.focus import FOCUS_CODES, NO_FOCUS
from tissue_oracle.tools.oracle_protocol import Oracle
from tissue_oracle.tools.schemas import ModelPrice, Role

_ROLES: tuple[Role, ...] = ("oracle", "classifier", "reviewer")


def _oracle_set(oracle: Oracle) -> Any:
    from tissue_oracle.agent.oracle_setup import OracleSet

    return OracleSet(
        by_role=dict.fromkeys(_ROLES, oracle),
        specs=dict.fromkeys(_ROLES, oracle.backend),
        prices={r: ModelPrice() for r in _ROLES},
        attempts=dict.fromkeys(_ROLES, 1),
    )


def bench_policy(case: Case, *, send_size: int, updates: dict[str, Any] | None = None) -> Any:
    """The ``default`` policy at the case's patch size (and thumbnail scale), plus ``updates``."""
    from tissue_oracle.policies.policy import load_policy

    thumb_ds = max(2.0, min(64.0, case.patch_size / 8))
    base = {
        "classify.patch_size": case.patch_size,
        "classify.send_size": max(32, min(send_size, case.patch_size)),
        "thumbnail.downsample": thumb_ds,
        # these rows are the paper's stages (zero-shot, clean, auto-context): ask per patch even
        # when the oracle is classical (the classical map is compared in `bench --suite peers`)
        "classify.classical_map": False,
    }
    return load_policy("default").with_updates({**base, **(updates or {})})


def _store(work_dir: Path) -> Any:
    from tissue_oracle.store.audit_store import AuditStore

    work_dir.mkdir(parents=True, exist_ok=True)
    return AuditStore.open(work_dir / "audit.duckdb")


def _cost(store: Any, run_id: str, slide_id: str) -> dict[str, float]:
    return StoreReads(store.query).paid_calls(run_id, slide_id)


def _focus(store: Any, run_id: str, slide_id: str, case: Case) -> np.ndarray:
    rows = StoreReads(store.query).tissue_focus(run_id, slide_id)
    shape = (math.ceil(case.slide_height / case.patch_size), math.ceil(case.slide_width / case.patch_size))
    grid = np.full(shape, NO_FOCUS, dtype=np.uint8)
    for x, y, focus in rows:
        r, c = y // case.patch_size, x // case.patch_size
        if focus in FOCUS_CODES and r < grid.shape[0] and c < grid.shape[1]:
            grid[r, c] = FOCUS_CODES[focus]
    return grid


def segment(
    case: Case, oracle: Oracle, policy: Any, store: Any, run_id: str, out_dir: Path
) -> dict[str, Any]:
    """One controller run; returns the masks, the summary, and cost and focus from the store."""
    from tissue_oracle.agent.controller import segment_file
    from tissue_oracle.agent.run_settings import RunDeps, RunSettings

    sid = case.path.stem
    settings = RunSettings(run_id=run_id, policy=policy, out_dir=out_dir, use_cache=False)
    deps = RunDeps.for_run(settings, oracles=_oracle_set(oracle), store=store)
    summary = asyncio.run(segment_file(case.path, settings, deps, slide_id=sid))
    folder = out_dir / sid
    return {
        "final": np.load(folder / "mask.npy"),
        "zero_clean": np.load(folder / "mask_zero_shot.npy"),
        "summary": summary,
        "cost": _cost(store, run_id, sid),
        "focus": _focus(store, run_id, sid, case),
    }


def _pred(
    mask: np.ndarray, res: dict[str, Any], stage: str, shot: str, focus: np.ndarray | None
) -> Prediction:
    s = res["summary"]
    cost = res["cost"]
    return Prediction(
        mask=np.asarray(mask, dtype=bool),
        focus=focus,
        calls=cost["calls"],
        patches_sent=s.patches.sent_zero_shot + s.patches.sent_few_shot,
        input_tokens=cost["input_tokens"],
        output_tokens=cost["output_tokens"],
        usd=cost["usd"],
        wall_s=s.seconds,
        extra={
            "stage": stage,
            "shot": shot,
            "refined_regions": sum(1 for r in s.regions if r.refinements),
            "status": s.status,
        },
    )


def pipeline_method(name: str, kind: Any, make_oracle: Any, *, run_tag: str) -> Method:
    """The controller as a method with three ablation variants (see the module docstring)."""

    def run(case: Case, env: CaseEnv) -> dict[str, Prediction]:
        work = (env.work_dir or Path("bench-work")) / "pipeline"
        store = _store(work)
        try:
            oracle = make_oracle(case)
            raw_policy = bench_policy(
                case, send_size=env.send_size,
                updates={"review.enabled": False, "clean.min_tissue_patches": 0, "clean.max_hole_patches": 0},
            )  # fmt: skip
            raw = segment(case, oracle, raw_policy, store, f"{run_tag}-zero-shot", work / f"{run_tag}-zero")
            full = segment(
                case,
                oracle,
                bench_policy(case, send_size=env.send_size),
                store,
                f"{run_tag}-full",
                work / f"{run_tag}-full",
            )
        finally:
            store.close()
        return {
            "zero-shot": _pred(raw["final"], raw, "zero-shot", "zero_shot", raw["focus"]),
            "zero-shot + clean": _pred(full["zero_clean"], raw, "zero-shot + clean", "zero_shot", None),
            "+ auto-context + clean": _pred(
                full["final"], full, "+ auto-context + clean", "few_shot", full["focus"]
            ),
        }

    return Method(name=name, kind=kind, run=run, description="agent.controller.segment_slide, default policy")


def controller_methods(cases: list[Case]) -> list[Method]:
    """The classical pipeline, and the SIMULATED pipeline where cases carry synthetic truth."""
    try:
        import tissue_oracle.agent.controller  # noqa: F401
    except ImportError:
        return []
    from tissue_oracle.bench.evaluation.simulated_oracle import SimulatedOracle
    from tissue_oracle.oracles.classical import ClassicalOracle

    methods = [
        pipeline_method(
            "classical pipeline", "classical", lambda case: ClassicalOracle(), run_tag="classical"
        )
    ]
    if any(c.truth_obj is not None for c in cases):
        methods.append(
            pipeline_method(
                "SIMULATED pipeline", "simulated",
                lambda case: SimulatedOracle(truths={case.path.stem: case.truth_obj}), run_tag="simulated",
            )
        )  # fmt: skip
    return methods


# --------------------------------------------------------------------------- policy sweep


def sweep_settings(naive_calls: int) -> list[dict[str, Any]]:
    """tau_g 1-4 at one round; rounds 0-2 at tau_g 2; per-slide call caps (1-4% of naive) at tau_g 2.

    The caps sit below what an uncapped run spends (a few % of the naive count), so they bind.
    """
    out = [{"setting": "tau_g", "tau_g": t, "max_rounds": 1, "budget": None} for t in (1, 2, 3, 4)]
    out += [{"setting": "rounds", "tau_g": 2, "max_rounds": r, "budget": None} for r in (0, 2)]
    out += [
        {"setting": "budget", "tau_g": 2, "max_rounds": 1, "budget": max(4, int(f * naive_calls))}
        for f in (0.01, 0.02, 0.04)
    ]
    return out


def policy_experiment(
    cases: list[Case], work_dir: Path, *, seed: int = 0, max_slides: int = 6
) -> list[dict[str, Any]]:
    """SIMULATED: mean Dice and calls per slide for each setting, on the artefact-heaviest slides."""
    try:
        import tissue_oracle.agent.controller  # noqa: F401
    except ImportError:
        return []
    from tissue_oracle.bench.evaluation.simulated_oracle import SimulatedOracle

    pool = [c for c in cases if c.truth_obj is not None]
    pool.sort(key=lambda c: -(0 if c.artefact is None else int(c.artefact.sum())))
    pool = pool[:max_slides]
    if not pool:
        return []
    naive = int(np.median([c.naive_calls for c in pool]))
    store = _store(work_dir / "policy")
    points = []
    try:
        for i, setting in enumerate(sweep_settings(naive)):
            dice, calls, refined = [], [], []
            for case in pool:
                updates = {"review.threshold": setting["tau_g"], "review.max_rounds": setting["max_rounds"]}
                if setting["budget"] is not None:
                    updates["budgets.slide.calls"] = setting["budget"]
                policy = bench_policy(case, send_size=32, updates=updates)  # the simulation ignores pixels
                oracle = SimulatedOracle(truths={case.path.stem: case.truth_obj}, seed=seed)
                res = segment(case, oracle, policy, store, f"policy-{i}", work_dir / "policy" / str(i))
                dice.append(seg_scores(res["final"], case.truth_obj.patch_labels(case.patch_size)).dice)
                calls.append(res["cost"]["calls"])
                refined.append(sum(1 for r in res["summary"].regions if r.refinements))
            summary = {"dice": float(np.nanmean(dice)), "calls": float(np.mean(calls))}
            points.append(
                {**setting, **summary, "slides": len(pool), "refined": float(np.mean(refined)),
                 "simulated": True, "naive_calls": naive}
            )  # fmt: skip
    finally:
        store.close()
    return [p for p in points if not math.isnan(p["dice"])]
