"""What every stage tool receives: the slide, the oracles by role, and the call context.

The stage functions hold no state: everything they touch arrives in ``StageDeps`` or in their
input model. ``Workspace`` is the one exception by design: the pydantic-ai toolset
(``tools.toolset``) keeps what earlier tool calls produced there, because an LLM planner passes
only small JSON arguments and can't hand masks or images from one tool to the next.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import CallContext, Oracle
from tissue_oracle.tools.schemas import Box, Role, Stage

if TYPE_CHECKING:
    from tissue_oracle.tools.classify_patches import ClassifyPatchesOutput
    from tissue_oracle.tools.clean import CleanOutput
    from tissue_oracle.tools.cluster_colours import ClusterColoursOutput
    from tissue_oracle.tools.point_ground import PointGroundOutput
    from tissue_oracle.tools.rerank_exemplars import RerankExemplarsOutput
    from tissue_oracle.tools.review_mask import ReviewMaskOutput
    from tissue_oracle.tools.slide_base import Slide

T = TypeVar("T")


@dataclass(kw_only=True)
class Workspace:
    """What the toolset's earlier calls produced for one slide (unused by the stage functions)."""

    boxes: list[Box] = field(default_factory=list)
    """Regions from ``ground_boxes``, level-0 frame; tools name them by index."""
    coarse: ClusterColoursOutput | None = None
    """The coarse mask M1 from ``cluster_colours``."""
    labels: ClassifyPatchesOutput | None = None
    """The slide's current patch labels (zero-shot, then overwritten per refined region)."""
    points: dict[int, PointGroundOutput] = field(default_factory=dict)
    """Points per region index, from ``point_ground``."""
    exemplars: dict[int, RerankExemplarsOutput] = field(default_factory=dict)
    """Exemplars per region index, from ``rerank_exemplars``."""
    review: ReviewMaskOutput | None = None
    """The latest ``review_mask`` answer."""
    cleaned: CleanOutput | None = None
    """The latest ``clean`` result."""


@dataclass(kw_only=True)
class StageDeps:
    """Everything a stage needs besides its input model."""

    slide: Slide
    """The slide being processed (``tools.slides.open_slide``); level 0 is never read whole."""
    oracles: Mapping[Role, Oracle]
    """The backend for each role. ``classifier`` falls back to ``oracle`` when absent, as in the policy."""
    context: Callable[[Stage, Role], CallContext]
    """Builds the audit/caching context of one call from the asking stage and the role answering."""
    max_in_flight: int = 16
    """Oracle questions in flight at once for this slide, over all stages and regions."""
    executor: Executor | None = None
    """Threads for patch reads and CPU work; ``None`` uses asyncio's default executor."""
    workspace: Workspace = field(default_factory=Workspace)
    """The toolset's scratchpad (see the module docstring)."""
    _slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = field(
        default=None, init=False, repr=False
    )

    def oracle(self, role: Role) -> Oracle:
        """The backend playing ``role``; ``ConfigError`` lists the roles that are set."""
        if role in self.oracles:
            return self.oracles[role]
        if role == "classifier" and "oracle" in self.oracles:
            return self.oracles["oracle"]
        raise ConfigError(f"no backend for role {role!r}; roles set: {sorted(self.oracles)}")

    @property
    def slots(self) -> asyncio.Semaphore:
        """The slide-wide semaphore bounding oracle calls in flight (one per event loop, lazily)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            # An asyncio semaphore belongs to one loop; deps outlive a loop in sync callers (asyncio.run).
            self._slots = (loop, asyncio.Semaphore(self.max_in_flight))
        return self._slots[1]

    async def in_thread(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``func`` (a patch read, a K-means) on the executor, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args, **kwargs))
