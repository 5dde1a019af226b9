"""Planner vs deterministic controller: same masks? What does planning cost in turns and tokens?

Each slide is segmented twice under one policy, each run with its own in-memory store (no
answer is shared through the cache): once by the fixed controller, once by the live planner
driven by a planner model (by default the scripted policy imitator, ``scripted_planner``: no
LLM). The row says whether the two final masks are identical, how many patches differ, the
oracle calls of each run, and the planner's turns and tokens. The imitator's tokens are
pydantic-ai's estimate for a ``FunctionModel`` (message length), and the loopback server's are
a 4-characters-a-token estimate: neither is a real model's bill.

    python -m tissue_oracle.bench.evaluation.planner_bench --out /tmp/planner-bench \\
        [--preset tiny --count 3] [--server]     # --server: plan over the loopback OpenAI wire
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.agent.controller import segment_slide
from tissue_oracle.agent.oracle_setup import build_oracles
from tissue_oracle.agent.planned_slide import LivePlanner
from tissue_oracle.agent.planner import PlannerModel
from tissue_oracle.agent.run_settings import RunDeps, RunSettings
from tissue_oracle.agent.summary import SlideSummary
from tissue_oracle.bench.fakes.scripted_planner import policy_imitator
from tissue_oracle.policies.policy import Policy, load_policy
from tissue_oracle.policies.prices import FREE
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.slide_base import Slide
from tissue_oracle.tools.slides import open_slide


@dataclass(kw_only=True)
class PlannerComparison:
    """One slide, segmented by the controller and by the planner."""

    slide: str
    planner: str
    """The planner model's spec (``function:policy-imitator``: scripted, no LLM)."""
    finished_by: str
    masks_identical: bool
    differing_patches: int
    patches: int
    controller_oracle_calls: int
    planner_oracle_calls: int
    refinements_controller: int
    refinements_planner: int
    planner_turns: int
    planner_input_tokens: int
    planner_output_tokens: int
    controller_s: float
    planner_s: float


def imitator_planner(policy: Policy) -> PlannerModel:
    return PlannerModel(model=policy_imitator(policy), spec="function:policy-imitator", price=FREE)


async def segment_once(
    slide: Slide, policy: Policy, out_dir: Path, planner: PlannerModel | None
) -> tuple[SlideSummary, np.ndarray]:
    """Segment ``slide`` once with a fresh store; the summary and the final patch mask."""
    oracles = build_oracles(policy)
    try:
        settings = RunSettings(run_id="compare", policy=policy, out_dir=out_dir)
        live = None if planner is None else LivePlanner(model=planner)
        deps = RunDeps.for_run(settings, oracles=oracles, store=MemoryRecorder(), planner=live)
        summary = await segment_slide(slide, settings, deps)
    finally:
        await oracles.aclose()
    return summary, np.load(settings.slide_dir(summary.slide_id) / "mask.npy")


async def compare_slide(
    slide: Slide, policy: Policy, out_dir: Path, planner: PlannerModel | None = None
) -> PlannerComparison:
    """Segment ``slide`` by the controller and by ``planner`` (default: the policy imitator)."""
    planner = planner or imitator_planner(policy)
    started = time.perf_counter()
    fixed, fixed_mask = await segment_once(slide, policy, out_dir / "controller", None)
    middle = time.perf_counter()
    planned, planned_mask = await segment_once(slide, policy, out_dir / "planner", planner)
    ended = time.perf_counter()
    report = planned.planner
    assert report is not None, "the planner run carries a planner report"
    differing = int((fixed_mask != planned_mask).sum()) if fixed_mask.shape == planned_mask.shape else -1
    return PlannerComparison(
        slide=slide.name,
        planner=report.spec,
        finished_by=report.finished_by,
        masks_identical=differing == 0,
        differing_patches=differing,
        patches=int(fixed_mask.size),
        controller_oracle_calls=fixed.totals.calls,
        planner_oracle_calls=planned.totals.calls,
        refinements_controller=fixed.refinements,
        refinements_planner=planned.refinements,
        planner_turns=report.turns,
        planner_input_tokens=report.input_tokens,
        planner_output_tokens=report.output_tokens,
        controller_s=round(middle - started, 2),
        planner_s=round(ended - middle, 2),
    )


def markdown(rows: list[PlannerComparison]) -> str:
    head = (
        "| slide | planner | finished by | masks identical | differing patches "
        "| oracle calls (ctrl / planner) | Auto-context rounds (ctrl / planner) | planner turns "
        "| planner tokens in / out | s (ctrl / planner) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r.slide} | {r.planner} | {r.finished_by} | {'yes' if r.masks_identical else 'NO'} "
            f"| {r.differing_patches} of {r.patches} "
            f"| {r.controller_oracle_calls} / {r.planner_oracle_calls} "
            f"| {r.refinements_controller} / {r.refinements_planner} | {r.planner_turns} "
            f"| {r.planner_input_tokens} / {r.planner_output_tokens} | {r.controller_s} / {r.planner_s} |"
        )
    return "\n".join(lines)


async def _run(paths: list[Path], policy: Policy, out: Path, server: Any) -> list[PlannerComparison]:
    rows = []
    for path in paths:
        planner = None
        if server is not None:
            from tissue_oracle.agent.planner import build_planner_model

            planner = build_planner_model(
                "openai:policy-imitator-server", base_urls={"openai": server.base_url}
            )
        with open_slide(path) as slide:
            try:
                rows.append(await compare_slide(slide, policy, out / slide.name, planner))
            finally:
                if planner is not None:
                    await planner.aclose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--policy", default="default")
    parser.add_argument("--preset", default="tiny", help="synthetic preset to generate slides from")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="square slides of this side (px)")
    parser.add_argument(
        "--slides", type=Path, default=None, help="use these slide files instead of generating"
    )
    parser.add_argument("--threshold", type=int, default=None, help="override review.threshold")
    parser.add_argument(
        "--server", action="store_true", help="plan over the loopback OpenAI tool-calling wire"
    )
    args = parser.parse_args(argv)
    from tissue_oracle.bench.synth.generate import generate_set

    # The per-patch coarse-to-fine flow (the stage tools the planner drives), not the classical map.
    policy = load_policy(args.policy).with_updates({"classify.classical_map": False})
    if args.threshold is not None:
        policy = policy.with_updates({"review.threshold": args.threshold})
    if args.slides is not None:
        paths = sorted(p for p in args.slides.iterdir() if p.suffix in (".tif", ".tiff", ".png", ".svs"))
    else:
        paths = generate_set(
            args.out / "slides", preset=args.preset, count=args.count, seed=args.seed, size=args.size
        )
    server = None
    if args.server:
        from tissue_oracle.bench.fakes.tool_server import FakeToolCallingServer

        server = FakeToolCallingServer(policy=policy).start()
    try:
        rows = asyncio.run(_run(paths, policy, args.out / "runs", server))
    finally:
        if server is not None:
            server.stop()
    (args.out / "planner_comparison.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    table = markdown(rows)
    (args.out / "planner_comparison.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
