"""Shared pieces of the stage-tool tests: a virtual slide with exact truth, deps, a fault injector.

The slide is a numpy array opened with ``open_slide``: pale glass with two round stained cores
carrying nucleus-like dots, so that the classical oracle, K-means and the stage geometry all
see something realistic, and the truth mask is known exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from tissue_oracle.oracles.classical import ClassicalOracle
from tissue_oracle.store.memory import MemoryRecorder
from tissue_oracle.tools.errors import BudgetExceededError, OracleError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import Box, Question, Role, Stage
from tissue_oracle.tools.slides import open_slide
from tissue_oracle.tools.stage_deps import StageDeps

SLIDE_W, SLIDE_H = 4096, 3072
#: (centre x, centre y, radius), level-0 px.
CORES = ((1100, 1200, 600), (2900, 1900, 650))


@functools.lru_cache(maxsize=1)
def core_slide_pixels() -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, boolean truth) of the two-core virtual slide; arrays are read-only."""
    rng = np.random.default_rng(7)
    ys, xs = np.ogrid[0:SLIDE_H, 0:SLIDE_W]
    truth = np.zeros((SLIDE_H, SLIDE_W), dtype=bool)
    for cx, cy, r in CORES:
        truth |= (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    grey = rng.integers(232, 241, size=(SLIDE_H, SLIDE_W), dtype=np.uint8)
    out = np.repeat(grey[:, :, None], 3, axis=2)
    count = int(truth.sum())
    stroma = np.array([214, 140, 182], dtype=np.int16)
    out[truth] = np.clip(stroma + rng.integers(-16, 17, size=(count, 3), dtype=np.int16), 0, 255).astype(
        np.uint8
    )
    # Nuclei: 5x5 dark purple squares at random tissue pixels (about one per 400 tissue pixels).
    ty, tx = np.nonzero(truth)
    pick = rng.choice(count, count // 400, replace=False)
    offsets = np.arange(-2, 3)
    ny = np.clip(ty[pick][:, None, None] + offsets[None, :, None], 0, SLIDE_H - 1)
    nx = np.clip(tx[pick][:, None, None] + offsets[None, None, :], 0, SLIDE_W - 1)
    nuclei = np.zeros_like(truth)
    nuclei[ny, nx] = True
    out[nuclei & truth] = (95, 55, 140)
    out.flags.writeable = False
    truth.flags.writeable = False
    return out, truth


def blurred_core_slide() -> Any:
    """A 1024 x 1024 virtual slide cut from the middle of the first core, out of focus (sigma 6 px)."""
    from scipy import ndimage

    image, _ = core_slide_pixels()
    cx, cy, _r = CORES[0]
    crop = image[cy - 512 : cy + 512, cx - 512 : cx + 512].astype(np.float32)
    blurred = ndimage.gaussian_filter(crop, sigma=(6, 6, 0))
    return open_slide(np.clip(blurred, 0, 255).astype(np.uint8), name="blurred-core")


def core_boxes() -> list[Box]:
    """Tight level-0 boxes of the two cores."""
    return [Box(x0=cx - r, y0=cy - r, x1=cx + r + 1, y1=cy + r + 1) for cx, cy, r in CORES]


def open_core_slide() -> Any:
    image, _ = core_slide_pixels()
    return open_slide(image, name="two-cores")


def context_factory(recorder: MemoryRecorder, **flags: bool) -> Callable[[Stage, Role], CallContext]:
    def make(stage: Stage, role: Role) -> CallContext:
        return CallContext(
            run_id="run-1", slide_id="two-cores", stage=stage, role=role, recorder=recorder, **flags
        )

    return make


def make_deps(
    slide: Any, oracle: Oracle | None = None, *, reviewer: Oracle | None = None, max_in_flight: int = 4
) -> tuple[StageDeps, MemoryRecorder]:
    """Deps with the classical oracle in every role unless told otherwise, recording in memory."""
    recorder = MemoryRecorder()
    main = oracle if oracle is not None else ClassicalOracle()
    oracles: dict[Role, Oracle] = {"oracle": main, "reviewer": reviewer if reviewer is not None else main}
    deps = StageDeps(
        slide=slide, oracles=oracles, context=context_factory(recorder), max_in_flight=max_in_flight
    )
    return deps, recorder


@dataclass(kw_only=True)
class FaultyOracle:
    """Wraps a real oracle and injects failures by call number (1-based, per question).

    Only the failures are injected; every answer that does come back is the inner oracle's.
    """

    inner: Oracle
    fail: dict[Question, set[int]] = field(default_factory=dict)
    """Call numbers that raise ``OracleError``."""
    budget_after: int | None = None
    """Total calls allowed before every further call raises ``BudgetExceededError``."""
    calls: dict[Question, int] = field(default_factory=dict)
    total: int = 0

    def __post_init__(self) -> None:
        self.backend, self.model = self.inner.backend, self.inner.model
        self.questions, self.is_vlm = self.inner.questions, self.inner.is_vlm

    def _gate(self, question: Question) -> None:
        if self.budget_after is not None and self.total >= self.budget_after:
            raise BudgetExceededError(f"slide budget of {self.budget_after} calls is spent")
        self.total += 1
        self.calls[question] = self.calls.get(question, 0) + 1
        if self.calls[question] in self.fail.get(question, set()):
            raise OracleError(f"injected failure on {question} call {self.calls[question]}")

    async def boxes(self, req: Any, ctx: CallContext) -> Any:
        self._gate("boxes")
        return await self.inner.boxes(req, ctx)

    async def patch_labels(self, req: Any, ctx: CallContext) -> Any:
        self._gate("patch_labels")
        return await self.inner.patch_labels(req, ctx)

    async def points(self, req: Any, ctx: CallContext) -> Any:
        self._gate("points")
        return await self.inner.points(req, ctx)

    async def rerank(self, req: Any, ctx: CallContext) -> Any:
        self._gate("rerank")
        return await self.inner.rerank(req, ctx)

    async def review(self, req: Any, ctx: CallContext) -> Any:
        self._gate("review")
        return await self.inner.review(req, ctx)

    async def aclose(self) -> None:
        await self.inner.aclose()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def segment_two_cores(policy: Any, classifier: Any, out_dir: Any, classifier_spec: str = "classical") -> Any:
    """``segment_slide`` on the two-core slide with ``classifier`` as the classifier and the classical
    oracle in the other roles (questions the classifier can't answer go to the oracle); returns
    ``(summary, recorder)``."""
    import asyncio

    from tissue_oracle.agent.controller import segment_slide
    from tissue_oracle.agent.oracle_setup import OracleSet
    from tissue_oracle.agent.run_settings import RunDeps, RunSettings
    from tissue_oracle.policies.prices import FREE

    classical = ClassicalOracle()
    roles: tuple[Role, ...] = ("oracle", "classifier", "reviewer")
    routed = dict.fromkeys(classical.questions - classifier.questions, "oracle")
    oracles = OracleSet(
        by_role={"oracle": classical, "classifier": classifier, "reviewer": classical},
        specs={"oracle": "classical", "classifier": classifier_spec, "reviewer": "classical"},
        prices=dict.fromkeys(roles, FREE),
        attempts=dict.fromkeys(roles, 1),
        routes={"classifier": routed} if routed else {},
    )
    recorder = MemoryRecorder()
    settings = RunSettings(run_id="r", policy=policy, out_dir=out_dir)
    image, _ = core_slide_pixels()
    with open_slide(image, name="two-cores") as slide:
        summary = asyncio.run(
            segment_slide(slide, settings, RunDeps.for_run(settings, oracles=oracles, store=recorder))
        )
    return summary, recorder


def granule_haze_on_glass(
    od: np.ndarray, zone: np.ndarray, haze_colour: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """``od`` plus a precipitate zone (a patchy haze of ``haze_colour`` dotted with dark granules),
    rendered over noisy glass (Beer-Lambert) as RGB uint8."""
    h, w = zone.shape
    haze = np.clip(ndi.gaussian_filter(rng.random((h, w)), 4) * 6 - 2.5, 0.3, 1.0)
    od[zone] += np.array(haze_colour) * haze[zone, None]
    grains = zone & (rng.random((h, w)) < 0.12)
    od[grains] += np.array([0.6, 0.7, 0.5]) * rng.uniform(0.6, 1.2, (int(grains.sum()), 1))
    glass = np.array([236.0, 233.0, 238.0]) + rng.normal(0, 1.5, (h, w, 1))
    return np.clip(glass * 10 ** (-od), 0, 255).astype(np.uint8)
