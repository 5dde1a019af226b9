"""The ``student`` backend: a distilled MobileNetV3 answers the patch-label question, fast and free.

``build(path)`` (what the registry's ``student:PATH`` calls) loads a ``student.pt`` written by
``tissue-oracle distil``. Patches are resized to the student's ``patch_px`` and classified in batches
on CPU or GPU; each batch is one call and writes one ``calls`` row (zero tokens, zero cost), through
the same cache rules as every backend. Confidence is the softmax maximum of the temperature-scaled
logits (``StudentSpec.temperature``, fitted on the validation split by distil). The student is not a
VLM and grades no focus (``focus`` is None). It asks the stage for patches at its own ``patch_px``
(``image_px``: read from a low pyramid level) and ``batch_size`` per question (``request_batch``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tissue_oracle.oracles.base import (
    PATCH_LABELS_CODEC,
    CallSpec,
    array_bytes,
    as_rgb_uint8,
    canonical_json,
    compute_locally,
    image_coords_of,
    request_hash,
    sha256_hex,
)
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.hashing import sha256_file
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    STUDENT_CHECKPOINT_FORMAT,
    BoxesAnswer,
    BoxesRequest,
    PatchLabel,
    PatchLabelsAnswer,
    PatchLabelsRequest,
    PointsAnswer,
    PointsRequest,
    Question,
    RerankAnswer,
    RerankRequest,
    ReviewAnswer,
    ReviewRequest,
    StudentSpec,
    Usage,
)

_LABELS = ("background", "tissue")


class StudentOracle:
    """A trained student; answers ``patch_labels`` only."""

    backend = "student"
    questions: frozenset[Question] = frozenset({"patch_labels"})
    is_vlm = False

    def __init__(
        self, *, path: Path, spec: StudentSpec, state_dict: dict[str, Any], device: str, batch_size: int
    ):
        import timm
        import torch

        self.path = path
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.image_px = spec.patch_px
        """Read patches at this side: the stage then reads from a low pyramid level."""
        self.request_batch = batch_size
        """Patches per question the stage should send: one forward pass, one call row."""
        digest = sha256_file(path)
        self.model = f"{spec.arch}@{digest[:12]}"
        """Names the exact weights, so cached answers never cross between students."""
        net = timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes)
        net.load_state_dict(state_dict)
        self._net = net.to(device).eval()
        self._torch = torch

    # ----------------------------------------------------------------------- the one question

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        """Label every patch, one recorded call per batch of ``batch_size`` patches."""
        labels: list[PatchLabel] = []
        usage = Usage()
        for start in range(0, len(req.patches), self.batch_size):
            stop = start + self.batch_size
            images = [self._fit(im) for im in req.images[start:stop]]
            refs = req.patches[start:stop]
            spec = self._call_spec(refs, images)
            batch = PatchLabelsRequest(patches=refs, images=images)
            answer = await compute_locally(ctx, spec, PATCH_LABELS_CODEC, partial(self.classify, batch))
            labels += answer.labels
            usage = usage + answer.usage
        return PatchLabelsAnswer(labels=labels, usage=usage)

    def classify(self, req: PatchLabelsRequest) -> PatchLabelsAnswer:
        """Synchronous batched inference (images already at ``patch_px``); no recording."""
        if not req.patches:
            return PatchLabelsAnswer(labels=[])
        x = np.stack([self._fit(im) for im in req.images])
        with self._torch.no_grad():
            logits = self._net(self._torch.from_numpy(self.spec.to_input(x)).to(self.device))
            probs = self._torch.softmax(logits.float() / self.spec.temperature, dim=1).cpu().numpy()
        cls = probs.argmax(1)
        return PatchLabelsAnswer(
            labels=[
                PatchLabel(ref=ref, label=_LABELS[int(c)], confidence=float(p[c]), source="student")
                for ref, c, p in zip(req.patches, cls, probs, strict=True)
            ]
        )

    def _fit(self, image: np.ndarray) -> np.ndarray:
        arr = as_rgb_uint8(image)
        px = self.spec.patch_px
        if arr.shape[:2] == (px, px):
            return arr
        return np.asarray(Image.fromarray(arr).resize((px, px), Image.Resampling.BOX))

    def _call_spec(self, refs: list[Any], images: list[np.ndarray]) -> CallSpec:
        params = {"patch_px": self.spec.patch_px}
        blobs = [array_bytes(im) for im in images]
        coords = [image_coords_of(r.x, r.y, r.size, r.size) for r in refs]
        return CallSpec(
            backend=self.backend,
            model=self.model,
            question="patch_labels",
            request_hash=request_hash(self.backend, self.model, "patch_labels", "", blobs, params),
            image_hashes=[sha256_hex(b) for b in blobs],
            image_coords=coords,
            request_json=canonical_json({"n_patches": len(refs), **params}),
        )

    # ----------------------------------------------------------------------- the rest: refused

    def _refuse(self, question: str) -> ConfigError:
        return ConfigError(
            f"the student backend answers only 'patch_labels', not {question!r}; "
            "assign that role to a VLM or the classical oracle"
        )

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        raise self._refuse("boxes")

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        raise self._refuse("points")

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        raise self._refuse("rerank")

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        raise self._refuse("review")

    async def aclose(self) -> None:
        return None


def load_checkpoint(path: Path) -> tuple[StudentSpec, dict[str, Any]]:
    """The spec and weights of a ``student.pt``; errors say what the file should be."""
    import torch

    if not path.is_file():
        raise ConfigError(
            f"student checkpoint {str(path)!r} does not exist; train one with `tissue-oracle distil`"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a bad file
        raise ConfigError(f"cannot load student checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != STUDENT_CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{str(path)!r} is not a tissue-oracle student checkpoint "
            f"(expected format {STUDENT_CHECKPOINT_FORMAT!r}); train one with `tissue-oracle distil`"
        )
    return StudentSpec.model_validate(obj["spec"]), dict(obj["state_dict"])


def build(
    path: str | Path, *, device: str = "auto", batch_size: int = 64, threads: int = 1, **options: Any
) -> StudentOracle:
    """The ``student:PATH`` factory. ``device`` is ``cpu``, ``cuda`` or ``auto`` (GPU when present).

    On CPU, torch uses at most ``threads`` threads (process-wide): the stage's patch reads run in
    other threads, and more torch threads than free cores is several times slower on a shared machine.
    """
    import torch

    if options:
        raise ConfigError(
            f"unknown student options {sorted(options)}; valid: ['batch_size', 'device', 'threads']"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"student device {device!r} is not one of ['auto', 'cpu', 'cuda']")
    if device == "cpu":
        torch.set_num_threads(max(1, min(int(threads), torch.get_num_threads())))
    spec, state = load_checkpoint(Path(path))
    return StudentOracle(
        path=Path(path), spec=spec, state_dict=state, device=device, batch_size=int(batch_size)
    )
