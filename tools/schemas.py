"""Record and message types shared by every layer.

Coordinate frames are named in field names and docstrings, because mixing them up is the
classic bug here:

- ``level0_xy``: pixels of the slide's full-resolution level (level 0).
- ``thumb_xy``: pixels of a thumbnail taken at a stated downsample from level 0.
- ``norm1000``: 0-1000 normalised image coordinates, as VLMs answer them.

Every ``Box``, ``Point`` and ``PatchRef`` in this module is in the level-0 frame. Conversion
from a model's answer into this frame happens in exactly one place (``oracles.profiles``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Label = Literal["tissue", "background"]
Focus = Literal["sharp", "mild_blur", "out_of_focus"]
Stage = Literal[
    "ground_boxes",
    "cluster_colours",
    "classify_patches",
    "point_ground",
    "rerank_exemplars",
    "review_mask",
    "clean",
    "distil",
    "plan",
]
Role = Literal["oracle", "reviewer", "classifier", "planner"]
Question = Literal["boxes", "patch_labels", "points", "rerank", "review"]
Action = Literal["accept", "refine", "escalate"]
#: Which step produced a patch label. ``coarse`` means the coarse mask M1 decided (outside the
#: 5% gate, or budget ran out), ``zero_shot``/``few_shot`` mean an oracle call decided.
LabelSource = Literal["coarse", "zero_shot", "few_shot", "clean", "student", "cascade"]

ALL_QUESTIONS: frozenset[Question] = frozenset({"boxes", "patch_labels", "points", "rerank", "review"})


# --------------------------------------------------------------------------- geometry


class Box(BaseModel):
    """An axis-aligned rectangle in the level-0 frame: ``[x0, x1) x [y0, y1)`` pixels."""

    model_config = ConfigDict(frozen=True)

    x0: int
    y0: int
    x1: int
    y1: int
    label: str = "tissue"

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"empty box: ({self.x0}, {self.y0}, {self.x1}, {self.y1})")
        return self

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height


class Point(BaseModel):
    """A labelled point in the level-0 frame."""

    model_config = ConfigDict(frozen=True)

    x: int
    y: int
    label: Label


class PatchRef(BaseModel):
    """A square patch: top-left corner and side length in level-0 pixels."""

    model_config = ConfigDict(frozen=True)

    x: int
    y: int
    size: int = 512

    @property
    def box(self) -> Box:
        return Box(x0=self.x, y0=self.y, x1=self.x + self.size, y1=self.y + self.size)


class PatchGrid(BaseModel):
    """A regular grid of ``patch_size`` level-0 patches covering a slide from (0, 0).

    Cell ``(row, col)`` covers level-0 pixels ``[col*patch_size, (col+1)*patch_size)`` by
    ``[row*patch_size, (row+1)*patch_size)``. The last row and column may run past the slide
    edge; readers pad with background.
    """

    model_config = ConfigDict(frozen=True)

    slide_width: int
    slide_height: int
    patch_size: int = 512

    @property
    def cols(self) -> int:
        return math.ceil(self.slide_width / self.patch_size)

    @property
    def rows(self) -> int:
        return math.ceil(self.slide_height / self.patch_size)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols), the shape of every per-patch array on this grid."""
        return (self.rows, self.cols)

    def ref(self, row: int, col: int) -> PatchRef:
        return PatchRef(x=col * self.patch_size, y=row * self.patch_size, size=self.patch_size)

    def cell_of(self, level0_x: int, level0_y: int) -> tuple[int, int]:
        """(row, col) of the cell holding a level-0 pixel."""
        return (level0_y // self.patch_size, level0_x // self.patch_size)

    def cells(self) -> Iterator[tuple[int, int]]:
        for row in range(self.rows):
            for col in range(self.cols):
                yield row, col


# --------------------------------------------------------------------------- answers


class Usage(BaseModel):
    """What one oracle answer cost. Cache hits report ``cache_hit=True`` and zero cost."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    cache_hit: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            usd=self.usd + other.usd,
            cache_hit=self.cache_hit and other.cache_hit,
        )


class PatchLabel(BaseModel):
    """One patch's label with its focus grade and where the label came from."""

    ref: PatchRef
    label: Label
    focus: Focus | None = None
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    source: LabelSource = "zero_shot"


class Grades(BaseModel):
    """A reviewer's grades of a mask on one region.

    Grades are 1-4: 1 is >=95%, 2 is 80-95%, 3 is 50-80%, 4 is below 50%. The percentages are
    the reviewer's own estimates (0-100).
    """

    precision: int = Field(ge=1, le=4)
    recall: int = Field(ge=1, le=4)
    precision_pct: float | None = Field(default=None, ge=0.0, le=100.0)
    recall_pct: float | None = Field(default=None, ge=0.0, le=100.0)
    notes: str = ""

    @property
    def worst(self) -> int:
        return max(self.precision, self.recall)


def grade_from_percent(pct: float) -> int:
    """The paper's 1-4 grade for a precision or recall percentage."""
    if pct >= 95.0:
        return 1
    if pct >= 80.0:
        return 2
    if pct >= 50.0:
        return 3
    return 4


class Exemplar(BaseModel):
    """A labelled example patch for few-shot classification (image carried as RGB uint8)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    ref: PatchRef
    label: Label
    focus: Focus | None = None
    image: np.ndarray = Field(repr=False)
    score: float | None = None


# --------------------------------------------------------------------------- oracle requests
# Images travel as RGB uint8 numpy arrays (H, W, 3). Each request also carries where the image
# came from in the level-0 frame, so that the store can record coordinates next to image hashes.


class _ImageRequest(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)


class BoxesRequest(_ImageRequest):
    """Find one box per tissue section on a thumbnail taken at ``downsample`` from level 0."""

    thumbnail: np.ndarray = Field(repr=False)
    downsample: float
    slide_width: int
    slide_height: int


class BoxesAnswer(BaseModel):
    boxes: list[Box]
    usage: Usage = Field(default_factory=Usage)


class PatchLabelsRequest(_ImageRequest):
    """Label each patch tissue/background and grade its focus. Exemplars make it few-shot."""

    patches: list[PatchRef]
    images: list[np.ndarray] = Field(repr=False)
    exemplars: list[Exemplar] = Field(default_factory=list)

    @model_validator(mode="after")
    def _aligned(self) -> PatchLabelsRequest:
        if len(self.patches) != len(self.images):
            raise ValueError(f"{len(self.patches)} patches but {len(self.images)} images")
        return self


class PatchLabelsAnswer(BaseModel):
    """One label per requested patch, in request order."""

    labels: list[PatchLabel]
    usage: Usage = Field(default_factory=Usage)


class PointsRequest(_ImageRequest):
    """Find tissue and background points on a crop covering ``region`` (level 0)."""

    crop: np.ndarray = Field(repr=False)
    region: Box
    max_points_per_class: int = 5


class PointsAnswer(BaseModel):
    points: list[Point]
    usage: Usage = Field(default_factory=Usage)


class RerankRequest(_ImageRequest):
    """Pick the best ``top_k`` candidates per class; tissue picks must be in focus."""

    candidates: list[PatchRef]
    candidate_labels: list[Label]
    images: list[np.ndarray] = Field(repr=False)
    top_k: int = 1


class RerankAnswer(BaseModel):
    """Chosen exemplars, best first within each class (images copied from the request)."""

    exemplars: list[Exemplar]
    usage: Usage = Field(default_factory=Usage)


class ReviewRequest(_ImageRequest):
    """Grade a mask on one region: the crop, and the same crop with the mask overlaid.

    ``mask`` is the boolean mask at the crop's resolution, so non-VLM reviewers can use it.
    """

    crop: np.ndarray = Field(repr=False)
    overlay: np.ndarray = Field(repr=False)
    mask: np.ndarray = Field(repr=False)
    region: Box


class ReviewAnswer(BaseModel):
    grades: Grades
    usage: Usage = Field(default_factory=Usage)


# --------------------------------------------------------------------------- store records


class RunRecord(BaseModel):
    """One curation run, one row of ``runs``."""

    run_id: str
    started_at: datetime = Field(default_factory=datetime.now)
    finished_at: datetime | None = None
    policy_name: str
    policy_yaml: str
    policy_hash: str
    tool_version: str
    command_line: str
    status: Literal["running", "finished", "failed", "interrupted"] = "running"


class SlideRecord(BaseModel):
    """One slide within a run, one row of ``slides``. Dimensions are level-0 pixels."""

    run_id: str
    slide_id: str
    path: str
    file_hash: str | None = None
    width: int | None = None
    height: int | None = None
    mpp: float | None = None
    vendor: str | None = None
    status: Literal["running", "done", "failed", "degraded", "skipped"] = "running"
    error: str | None = None
    flags: list[str] = Field(default_factory=list)
    started_at: datetime = Field(default_factory=datetime.now)
    finished_at: datetime | None = None


class CallRecord(BaseModel):
    """One oracle call attempt, exactly one row of the store's ``calls`` table.

    ``request_json`` never holds image bytes or secrets: images are named by ``image_hashes``
    (sha256 of the encoded bytes sent) with their level-0 ``image_coords`` ``[x, y, w, h]``.
    """

    run_id: str
    slide_id: str
    stage: Stage
    role: Role
    backend: str
    model: str
    template: str | None = None
    template_hash: str | None = None
    request_hash: str
    image_hashes: list[str] = Field(default_factory=list)
    image_coords: list[list[int]] = Field(default_factory=list)
    request_json: str = "{}"
    response_raw: str | None = None
    parsed_json: str | None = None
    ok: bool
    error: str | None = None
    attempt: int = 1
    latency_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    """USD of this attempt; None when the model's price is unknown."""
    cache_hit: bool = False
    started_at: datetime = Field(default_factory=datetime.now)


class DecisionRecord(BaseModel):
    """One policy decision about one region, one row of ``decisions``."""

    run_id: str
    slide_id: str
    region: int
    round: int
    grades: Grades | None
    action: Action
    reason: str
    budget_left_calls: int | None = None
    budget_left_tokens: int | None = None
    budget_left_usd: float | None = None
    decided_at: datetime = Field(default_factory=datetime.now)


class PatchRecord(BaseModel):
    """One patch's final label, one row of ``patches`` (distillation reads its labels here)."""

    run_id: str
    slide_id: str
    x: int
    y: int
    size: int
    label: Label
    focus: Focus | None = None
    confidence: float = 1.0
    source: LabelSource


class OutputRecord(BaseModel):
    """One file written for a slide, one row of ``outputs``."""

    run_id: str
    slide_id: str
    path: str
    kind: str
    sha256: str
    bytes: int


class ModelPrice(BaseModel):
    """USD per million tokens for one model; the table lives in ``policies``."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    known: bool = True
    """False when no price is known: calls are recorded with cost unknown (``None``)."""

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD of one call (0 when the price is unknown; see :meth:`recorded_cost`)."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6

    def recorded_cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """What a call row records: the cost, or None when the price is unknown."""
        return self.cost(input_tokens, output_tokens) if self.known else None


# --------------------------------------------------------------------------- recorder seam


@runtime_checkable
class CallRecorder(Protocol):
    """What an oracle needs from the store: write one call row, and look up a cached answer.

    ``cached_call`` returns the most recent successful record with this request hash, or None.
    The store implements it over DuckDB; tests may use an in-memory one.
    """

    def record_call(self, record: CallRecord) -> None: ...

    def cached_call(self, request_hash: str) -> CallRecord | None: ...


_IMAGE_FIELDS = {"image", "images", "thumbnail", "crop", "overlay", "mask"}


def to_jsonable(obj: Any) -> Any:
    """Pydantic models and numpy scalars to plain JSON types (arrays are not allowed here)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude=_IMAGE_FIELDS)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --------------------------------------------------------------------------- student checkpoint


#: ``format`` key of a student checkpoint (``student.pt``) written by distil and read by ``student:PATH``.
STUDENT_CHECKPOINT_FORMAT = "tissue-oracle-student/1"


class StudentSpec(BaseModel):
    """How a distilled student sees patches; stored in its checkpoint, shared by trainer and oracle.

    A patch of ``patch_size`` level-0 pixels is shown to the network as ``patch_px`` x ``patch_px``
    RGB. Class index 1 is ``tissue``, 0 is ``background``.
    """

    model_config = ConfigDict(frozen=True)

    arch: str = "mobilenetv3_large_100"
    num_classes: int = 2
    patch_px: int = 64
    patch_size: int = 512
    temperature: float = Field(default=1.0, gt=0.0)
    """Logits are divided by this before the softmax (temperature scaling, fitted on validation)."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_input(self, images: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(N, patch_px, patch_px, 3)`` to normalised float32 ``(N, 3, patch_px, patch_px)``."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        scaled: np.ndarray = (images.astype(np.float32) / np.float32(255.0) - mean) / std
        return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
