"""The stage settings a policy sets, declared once: one model per stage tool.

Each tool's own settings model (``tools.ground_boxes.GroundBoxesParams`` ...) extends its model
here with what the caller supplies per call (the thumbnail's downsample, the answering role);
each section of ``policies.policy.Policy`` extends it with what only the policy needs (output
caps, review rules). The controller and the planner's pinned settings read them back with
``policies.policy.stage_settings``. Pydantic only, so loading a policy stays light.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MIN_PATCH_SIZE = 32
"""The smallest grid patch side (level-0 pixels) a policy may set."""
CASCADE_REQUEST_BATCH = 256
"""Patches the stage sends a student-first cascade per question (``Policy.cascade.request_batch``)."""


class GroundBoxesSettings(BaseModel):
    """The settings of ground_boxes a policy sets (``policies.policy.GroundParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    pad_fraction: float = Field(default=0.25, ge=0.0, le=2.0)
    """Each box grows by this fraction of its width and height (half on each side)."""
    merge_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    """Boxes merge while intersection / smaller box's area is at least this."""
    max_box_fraction: float = Field(default=0.6, gt=0.0, le=1.0)
    """An answer that is one box covering more than this fraction of the slide is rejected."""
    retries: int = Field(default=3, ge=0, le=10)
    """Questions asked again after an empty, rejected or failed answer (at most retries + 1 in all)."""


class ClusterColoursSettings(BaseModel):
    """The settings of cluster_colours a policy sets (``policies.policy.ClusterParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    k_global: int = Field(default=2, ge=2, le=8)
    """K of the global pass (majority cluster = background)."""
    k_local: int = Field(default=3, ge=2, le=8)
    """K of the local pass inside each box (nearest to the global background = background)."""
    background_rule: Literal["majority", "lightest"] = "majority"
    """How the global pass picks background: the paper's ``majority`` cluster, or the ``lightest``
    (highest L*) one, which stays right on slides that are mostly tissue."""


class ClassifyPatchesSettings(BaseModel):
    """The settings of classify_patches a policy sets (``policies.policy.ClassifyParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    patch_size: int = Field(default=512, ge=MIN_PATCH_SIZE, le=8192)
    """Grid patch side, level-0 pixels."""
    gate_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    """A patch is sent only if M1 covers at least this fraction of it (0 sends every patch in scope)."""
    send_size: int = Field(default=512, ge=32, le=4096)
    """Side in pixels of each patch image sent (best pyramid level; capped at ``patch_size``)."""
    batch_size: int = Field(default=1, ge=1, le=64)
    """Patches per question."""


class PointGroundSettings(BaseModel):
    """The settings of point_ground a policy sets (``policies.policy.AutoContextParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    points_per_class: int = Field(default=5, ge=1, le=50)
    """Points asked for per class (tissue, background)."""


class RerankExemplarsSettings(BaseModel):
    """The settings of rerank_exemplars a policy sets (``policies.policy.AutoContextParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    top_k: int = Field(default=1, ge=1, le=16)
    """Exemplars kept per class."""


class ReviewMaskSettings(BaseModel):
    """The settings of review_mask a policy sets (``policies.policy.ReviewParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    crop_size: int = Field(default=1024, ge=64, le=8192)
    """Long side in pixels of each region crop (point grounding sends the same crop)."""


class CleanSettings(BaseModel):
    """The settings of clean, in patches (cells of the patch grid); a policy sets them all
    (``policies.policy.CleanParams`` holds them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_tissue_patches: int = Field(default=8, ge=0)
    """Tissue components with fewer cells than this are removed (0 or 1 keeps everything)."""
    max_hole_patches: int = Field(default=10, ge=0)
    """Enclosed background holes with fewer cells than this are filled (0 or 1 fills nothing)."""
    connectivity: Literal[4, 8] = 4
    """4: cells touch through edges only; 8: corners count too."""
    keep_largest: bool = False
    """Never remove the largest tissue component, so a slide whose only tissue is a small biopsy
    fragment is not erased whole (the paper's rule, ``False``, can empty such a slide)."""
