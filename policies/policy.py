"""The policy: roles, every stage parameter, review threshold, rounds, budgets and cascade.

A policy is a YAML file validated by pydantic. Two ship with the package: ``paper`` (the
paper's settings: Qwen3-VL oracle, Gemini reviewer) and ``default`` (the classical oracle in
every role, so that it runs anywhere). ``load_policy`` takes one of those names or a path.

Units: sizes are level-0 pixels unless a field says otherwise; ``*_fraction`` fields are 0-1;
budgets count oracle call attempts, tokens (input + output) and US dollars, and ``None``
means no cap.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tissue_oracle.policies.model_settings import ModelSettings
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.schemas import Role
from tissue_oracle.tools.stage_settings import (
    CASCADE_REQUEST_BATCH,
    ClassifyPatchesSettings,
    CleanSettings,
    ClusterColoursSettings,
    GroundBoxesSettings,
    PointGroundSettings,
    RerankExemplarsSettings,
    ReviewMaskSettings,
)

#: Policies shipped as package data, by name.
BUILTIN_POLICIES: tuple[str, ...] = ("paper", "default")


#: The largest magnitude any number in a policy may have: DuckDB's BIGINT holds 9.2e18, and no
#: real cap, size or count comes near 1e15. ``tokens: 1e23`` used to pass validation and then fail
#: the store's commit.
MAX_POLICY_NUMBER = 10**15


def _numbers_in_range(value: Any, path: str = "") -> None:
    """Raise ``ValueError`` naming the first number that is not finite or exceeds the bound."""
    if isinstance(value, dict):
        for key, item in value.items():
            _numbers_in_range(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _numbers_in_range(item, f"{path}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} is not a finite number")
        if abs(value) > MAX_POLICY_NUMBER:
            raise ValueError(f"{path}: {value!r} is out of range (at most 1e15 in magnitude)")


class _Section(BaseModel):
    """Every policy section rejects unknown keys, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Roles(_Section):
    """Which backend plays each role, as a spec string (``classical``, ``openai:MODEL``, ...)."""

    oracle: str = "classical"
    """Boxes and points (and patch labels unless ``classifier`` is set)."""
    reviewer: str = "classical"
    """Grades masks per region."""
    classifier: str | None = None
    """Patch labels and reranking; ``None`` means the oracle does it."""
    planner: str | None = None
    """An optional LLM (``openai:MODEL``, ``gemini:MODEL``) that drives the stage tools under ``planner``."""

    @property
    def classifier_spec(self) -> str:
        return self.classifier or self.oracle


class ThumbnailParams(_Section):
    downsample: float = Field(default=64.0, gt=1.0, le=4096.0)
    """Thumbnail downsample from level 0 (the paper: 64x)."""


class GroundParams(GroundBoxesSettings, _Section):
    """ground_boxes' own settings (``tools.stage_settings.GroundBoxesSettings``) and its call's caps."""

    max_tokens: int = Field(default=1024, ge=16)
    """Output-token cap of one boxes call."""
    send_size: int = Field(default=1024, ge=64, le=4096)
    """Long side in pixels of the thumbnail sent for grounding (the seed's 1024)."""


class ClusterParams(ClusterColoursSettings, _Section):
    """cluster_colours' own settings (``tools.stage_settings.ClusterColoursSettings``)."""


class ClassifyParams(ClassifyPatchesSettings, _Section):
    """classify_patches' own settings (``tools.stage_settings.ClassifyPatchesSettings``), how many
    questions fly at once, and its calls' caps and retries."""

    max_in_flight: int = Field(default=16, ge=1, le=1024)
    """Oracle questions in flight at once, per slide."""
    max_tokens: int = Field(default=256, ge=16)
    """Output-token cap of one patch-labels call."""
    retries: int = Field(default=3, ge=0, le=10)
    """Transport retries per question (so at most ``retries + 1`` attempts)."""
    timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0)
    classical_map: bool = True
    """When the classical oracle classifies (and reviews), label every patch from one whole-slide
    tissue map (``oracles.classical_dense``) instead of asking it patch by patch: coarse-to-fine
    spares a paid oracle, not a free one."""
    student_map: bool = True
    """When a student (``student:PATH``) classifies, label every grid patch from the slide's tiles
    (``tools.classify_patches.classify_grid``: banded low-resolution reads, 64 patches per forward
    pass) instead of grounding, M1 and gated per-patch reads. Its regions are the pieces of its
    labels, accepted without review (a student ignores exemplars, so Auto-context can't change its
    labels, and the grounding, review and refinement questions cost more than the whole student
    pass), and not patch-cleaned (a student imitates its teacher's final labels). ``false`` runs
    the per-patch flow with review and Auto-context (rerank goes to the oracle role)."""


class ReviewParams(ReviewMaskSettings, _Section):
    """review_mask's own settings (``tools.stage_settings.ReviewMaskSettings``) and the review rules
    ``policies.decide`` applies."""

    enabled: bool = True
    threshold: int = Field(default=2, ge=1, le=4)
    """tau_g: a worst grade above this (worse) triggers Auto-context for the region."""
    max_rounds: int = Field(default=1, ge=0, le=10)
    """Auto-context rounds per region before escalating to a human."""
    max_tokens: int = Field(default=512, ge=16)
    on_review_failure: Literal["escalate", "accept"] = "escalate"
    """What to do with a region whose review call failed."""
    revert_if_worse: bool = True
    """Drop an Auto-context round whose mask the reviewer grades worse than the one before it."""


class AutoContextParams(PointGroundSettings, RerankExemplarsSettings, _Section):
    """point_ground's and rerank_exemplars' own settings (``tools.stage_settings``) and their calls' cap."""

    max_tokens: int = Field(default=512, ge=16)


class CleanParams(CleanSettings, _Section):
    """clean's own settings (``tools.stage_settings.CleanSettings``)."""


def stage_settings(section: BaseModel, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of a tool's own settings ``model`` as the policy ``section`` that holds it sets them.

    ``stage_settings(policy.ground, GroundBoxesSettings)`` gives ``pad_fraction``, ``retries``...;
    the caller adds what it supplies per call (thumbnail, downsample, region).
    """
    if not isinstance(section, model):
        raise TypeError(f"policy section {type(section).__name__!r} does not hold {model.__name__!r}")
    return section.model_dump(include=set(model.model_fields))


#: The stage tools a planner may be allowed to call (``tools.toolset``).
PlannerTool = Literal[
    "ground_boxes",
    "cluster_colours",
    "classify_patches",
    "point_ground",
    "rerank_exemplars",
    "review_mask",
    "clean",
]


class PlannerParams(_Section):
    """Guard rails of the LLM planner (``roles.planner``); stage settings always come from this policy."""

    allowed_tools: list[PlannerTool] = Field(default_factory=lambda: list(get_args(PlannerTool)))
    """Tools the planner sees and may call; a call to any other tool hands the slide to the policy."""
    max_turns: int = Field(default=40, ge=1, le=1000)
    """Model requests per slide before the policy takes over."""
    max_tokens: int | None = Field(default=200_000, ge=1)
    """Planner tokens (input + output) per slide before the policy takes over; None: no cap."""
    loop_repeats: int = Field(default=3, ge=2, le=20)
    """The same tool call (name and arguments) this many times in a row is a loop."""


class Budget(_Section):
    """A hard cap; ``None`` means no cap on that quantity."""

    calls: int | None = Field(default=None, ge=0, le=MAX_POLICY_NUMBER)
    tokens: int | None = Field(default=None, ge=0, le=MAX_POLICY_NUMBER)
    usd: float | None = Field(default=None, ge=0.0, le=MAX_POLICY_NUMBER)


#: Caps in force when a policy file has no ``budgets`` (or leaves out ``slide`` or ``run``). A
#: policy that writes ``null`` for a cap means no cap on purpose; leaving the section out is not
#: a decision, so it gets these: 20,000 calls and 10 USD per slide, 100 USD per run.
DEFAULT_SLIDE_BUDGET = Budget(calls=20_000, usd=10.0)
DEFAULT_RUN_BUDGET = Budget(usd=100.0)


class Budgets(_Section):
    slide: Budget = Field(default_factory=lambda: DEFAULT_SLIDE_BUDGET)
    run: Budget = Field(default_factory=lambda: DEFAULT_RUN_BUDGET)

    def describe(self) -> str:
        """The caps in force, in words: ``per slide: 20000 calls, 10 USD; per run: 100 USD``."""

        def caps(b: Budget) -> str:
            named = ((b.calls, "calls"), (b.tokens, "tokens"), (b.usd, "USD"))
            return ", ".join(f"{value:g} {unit}" for value, unit in named if value is not None) or "no cap"

        return f"per slide: {caps(self.slide)}; per run: {caps(self.run)}"


class CascadeParams(_Section):
    enabled: bool = False
    student: str | None = None
    """Spec of the student (``student:PATH``) that answers first."""
    confidence: float = Field(default=0.9, ge=0.0, le=1.0)
    """Student answers at or above this confidence are kept; the rest go to the classifier."""
    request_batch: int = Field(default=CASCADE_REQUEST_BATCH, ge=8, le=4096)
    """Patches the student labels per cascade question; its unsure ones are then asked
    ``classify.batch_size`` per oracle question, so a larger request leaves fewer part-filled."""

    @model_validator(mode="after")
    def _student_when_enabled(self) -> CascadeParams:
        if self.enabled and not self.student:
            raise ValueError("cascade.enabled needs cascade.student (e.g. 'student:model.pt')")
        return self


class Policy(_Section):
    """Everything the controller needs to decide; loaded from YAML by ``load_policy``."""

    name: str = "custom"
    description: str = ""
    roles: Roles = Field(default_factory=Roles)
    thumbnail: ThumbnailParams = Field(default_factory=ThumbnailParams)
    ground: GroundParams = Field(default_factory=GroundParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    classify: ClassifyParams = Field(default_factory=ClassifyParams)
    review: ReviewParams = Field(default_factory=ReviewParams)
    autocontext: AutoContextParams = Field(default_factory=AutoContextParams)
    clean: CleanParams = Field(default_factory=CleanParams)
    budgets: Budgets = Field(default_factory=Budgets)
    cascade: CascadeParams = Field(default_factory=CascadeParams)
    planner: PlannerParams = Field(default_factory=PlannerParams)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    """Call settings per model: spec glob (``gemini:gemini-3*``) -> temperature, thinking, cap, price."""
    role_settings: dict[Role, ModelSettings] = Field(default_factory=dict)
    """Call settings per role, over ``models`` (e.g. the reviewer's temperature)."""

    @model_validator(mode="before")
    @classmethod
    def _bounded_numbers(cls, data: Any) -> Any:
        _numbers_in_range(data)
        return data

    def to_yaml(self) -> str:
        """Canonical YAML: sorted keys, every field written, so equal policies hash equal."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True, default_flow_style=False)

    @property
    def policy_hash(self) -> str:
        """sha256 (hex, 16 chars) of the canonical YAML."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]

    def with_updates(self, updates: dict[str, Any]) -> Policy:
        """A copy with dotted-path updates (``{"roles.oracle": "gemini:x", "budgets.run.usd": 5}``).

        The result is validated again, so an override can't produce an invalid policy.
        """
        data = self.model_dump(mode="json")
        for dotted, value in updates.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"unknown policy field {dotted!r}")
                node = node[key]
            if leaf not in node:
                raise ConfigError(f"unknown policy field {dotted!r}; known here: {sorted(node)}")
            node[leaf] = value
        return _validate(data, source="overrides")


def _validate(data: Any, *, source: str) -> Policy:
    if not isinstance(data, dict):
        raise ConfigError(f"{source!r}: a policy must be a YAML mapping, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source!r}: invalid policy: {problems}. Fix the field(s) named.") from exc


def builtin_policy_path(name: str) -> Path:
    """Where a shipped policy's YAML lives (package data)."""
    return Path(str(resources.files("tissue_oracle.policies").joinpath(f"{name}.yaml")))


def load_policy(name_or_path: str | Path) -> Policy:
    """A shipped policy by name (``paper``, ``default``) or a YAML file by path.

    Raises ``ConfigError`` naming the known policies for an unknown name, and naming the file
    and the offending fields for an invalid one.
    """
    text_name = str(name_or_path)
    if text_name in BUILTIN_POLICIES:
        path = builtin_policy_path(text_name)
    else:
        path = Path(text_name)
        if not path.is_file():
            raise ConfigError(
                f"unknown policy {text_name!r}: not a shipped policy ({', '.join(BUILTIN_POLICIES)}) "
                "and no such file. Give one of those names or a path to a policy YAML."
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{str(path)!r}: can't read the policy YAML ({exc}). Check the file.") from exc
    return _validate(data, source=str(path))
