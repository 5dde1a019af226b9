"""Machinery every oracle backend shares: request hashing, image encoding, the audit row, the cache.

Every backend funnels its calls through :func:`answer_with_cache`, so the cache rule, the replay
rule and the one-row-per-attempt rule live in one place:

- ``ctx.use_cache`` and an ok record with the same request hash: the answer comes from the
  store, a row is written with ``cache_hit=True`` and zero cost;
- else ``ctx.replay_only``: an error row is written and ``ReplayMissError`` is raised;
- else the backend computes, writing one row per attempt through :func:`record_attempt`.

Cached answers travel as a question's *wire form* (``parsed_json``): the answer without its
usage and without image arrays (rerank keeps candidate indices and rebuilds the exemplars from
the request), so any backend can serve any other backend's cached answer for the same request.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError

from tissue_oracle.tools.errors import OracleError, ReplayMissError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    BoxesAnswer,
    CallRecord,
    Exemplar,
    Label,
    PatchLabelsAnswer,
    PointsAnswer,
    Question,
    RerankAnswer,
    RerankRequest,
    ReviewAnswer,
    Usage,
)

AnswerT = TypeVar("AnswerT", bound=BaseModel)
ImageFormat = Literal["PNG", "JPEG"]

# --------------------------------------------------------------------------- hashing


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: the same value always gives the same text (and hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"cannot put {type(obj).__name__!r} into a request hash")


def request_hash(
    backend: str,
    model: str,
    question: Question,
    prompt_text: str,
    image_bytes_list: Sequence[bytes],
    params: dict[str, Any],
) -> str:
    """sha256 hex of a canonical JSON header followed by each image's bytes (length-prefixed).

    Two requests hash equal exactly when the backend, model, question, prompt text, parameters
    and image bytes are all equal: that is the cache key.
    """
    header = canonical_json(
        {"backend": backend, "model": model, "question": question, "prompt": prompt_text, "params": params}
    )
    digest = hashlib.sha256(header.encode())
    for data in image_bytes_list:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def array_bytes(image: np.ndarray) -> bytes:
    """A canonical byte form of an array (shape, dtype, C-order data) for backends that send no file."""
    arr = np.ascontiguousarray(image)
    return f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- images


@dataclass(kw_only=True, frozen=True)
class EncodedImage:
    """An image as sent to a model: encoded bytes, their sha256, and the MIME type."""

    data: bytes
    """The encoded file bytes (PNG or JPEG)."""
    sha256: str
    """sha256 hex of ``data``; this is what the audit row names the image by."""
    mime: str
    """``image/png`` or ``image/jpeg``."""
    width: int
    """Pixel width of the encoded image (after any downscale)."""
    height: int
    """Pixel height of the encoded image (after any downscale)."""


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 view of an RGB, RGBA or grey image array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    return arr[:, :, :3]


def downscale(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink an RGB image so its longer side is at most ``max_side`` pixels (never enlarges)."""
    arr = as_rgb_uint8(image)
    height, width = arr.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return arr
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BOX))


def encode_image(
    image: np.ndarray,
    *,
    max_side: int | None = None,
    fmt: ImageFormat = "PNG",
    quality: int = 90,
    resize: Callable[[int, int], tuple[int, int]] | None = None,
) -> EncodedImage:
    """Deterministic PNG/JPEG bytes of an RGB array, downscaled first to ``max_side``.

    ``resize`` maps the downscaled ``(height, width)`` to the exact size to send (a model's own
    processor size, e.g. ``profiles.smart_resize``). No metadata is written and the encoder
    settings are fixed, so equal pixels give equal bytes (and equal request hashes) from run to run.
    """
    arr = downscale(image, max_side)
    if resize is not None:
        height, width = resize(*arr.shape[:2])
        if (height, width) != arr.shape[:2]:
            arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC))
    buffer = io.BytesIO()
    pil = Image.fromarray(arr, mode="RGB")
    if fmt == "PNG":
        pil.save(buffer, format="PNG", compress_level=6)
        mime = "image/png"
    else:
        pil.save(buffer, format="JPEG", quality=quality, subsampling=0)
        mime = "image/jpeg"
    data = buffer.getvalue()
    return EncodedImage(
        data=data, sha256=sha256_hex(data), mime=mime, width=arr.shape[1], height=arr.shape[0]
    )


# --------------------------------------------------------------------------- audit rows


@dataclass(kw_only=True, frozen=True)
class CallSpec:
    """What identifies one question put to one backend: everything an audit row repeats per attempt."""

    backend: str
    """Backend family (``classical``, ``openai``, ``gemini``...)."""
    model: str
    """Model name as the backend knows it."""
    question: Question
    """Which of the five questions."""
    request_hash: str
    """Cache key from :func:`request_hash`."""
    template: str | None = None
    """Prompt template name, for VLM backends."""
    template_hash: str | None = None
    """sha256 of the template text, for VLM backends."""
    image_hashes: list[str] = field(default_factory=list)
    """sha256 of each image's bytes, in request order."""
    image_coords: list[list[int]] = field(default_factory=list)
    """Level-0 ``[x, y, w, h]`` of each image, in request order."""
    request_json: str = "{}"
    """The request without image bytes or secrets."""


def record_attempt(
    ctx: CallContext,
    spec: CallSpec,
    *,
    ok: bool,
    attempt: int = 1,
    response_raw: str | None = None,
    parsed_json: str | None = None,
    error: str | None = None,
    latency_s: float = 0.0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float | None = 0.0,
    cache_hit: bool = False,
) -> CallRecord:
    """Write exactly one ``calls`` row for one attempt, and return it."""
    record = CallRecord(
        run_id=ctx.run_id,
        slide_id=ctx.slide_id,
        stage=ctx.stage,
        role=ctx.role,
        backend=spec.backend,
        model=spec.model,
        template=spec.template,
        template_hash=spec.template_hash,
        request_hash=spec.request_hash,
        image_hashes=list(spec.image_hashes),
        image_coords=[list(c) for c in spec.image_coords],
        request_json=spec.request_json,
        response_raw=response_raw,
        parsed_json=parsed_json,
        ok=ok,
        error=error,
        attempt=attempt,
        latency_s=latency_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        cache_hit=cache_hit,
    )
    ctx.recorder.record_call(record)
    return record


# --------------------------------------------------------------------------- wire forms


@dataclass(kw_only=True, frozen=True)
class WireCodec(Generic[AnswerT]):
    """How one question's answer becomes ``parsed_json`` and comes back from it."""

    dump: Callable[[AnswerT], str]
    load: Callable[[str], AnswerT]


def _plain_codec(answer_type: type[AnswerT]) -> WireCodec[AnswerT]:
    return WireCodec(
        dump=lambda answer: answer.model_dump_json(exclude={"usage"}),
        load=answer_type.model_validate_json,
    )


class _RerankPick(BaseModel):
    index: int
    label: Label
    focus: str | None = None
    score: float | None = None


def rerank_codec(req: RerankRequest) -> WireCodec[RerankAnswer]:
    """Rerank answers are stored as candidate indices; exemplar images come back from ``req``."""

    def dump(answer: RerankAnswer) -> str:
        index_of = {(ref.x, ref.y, ref.size): i for i, ref in enumerate(req.candidates)}
        picks = [
            _RerankPick(
                index=index_of[(ex.ref.x, ex.ref.y, ex.ref.size)],
                label=ex.label,
                focus=ex.focus,
                score=ex.score,
            ).model_dump()
            for ex in answer.exemplars
        ]
        return canonical_json({"picks": picks})

    def load(text: str) -> RerankAnswer:
        picks = [_RerankPick.model_validate(p) for p in json.loads(text)["picks"]]
        exemplars = [
            Exemplar.model_validate(
                {
                    "ref": req.candidates[p.index],
                    "label": p.label,
                    "focus": p.focus,
                    "image": req.images[p.index],
                    "score": p.score,
                }
            )
            for p in picks
        ]
        return RerankAnswer(exemplars=exemplars)

    return WireCodec(dump=dump, load=load)


BOXES_CODEC = _plain_codec(BoxesAnswer)
PATCH_LABELS_CODEC = _plain_codec(PatchLabelsAnswer)
POINTS_CODEC = _plain_codec(PointsAnswer)
REVIEW_CODEC = _plain_codec(ReviewAnswer)


# --------------------------------------------------------------------------- cache and compute


async def answer_with_cache(
    ctx: CallContext,
    spec: CallSpec,
    codec: WireCodec[AnswerT],
    compute: Callable[[], Awaitable[AnswerT]],
) -> AnswerT:
    """Serve ``spec`` from the store when allowed, else fail in replay mode, else ``compute()``.

    ``compute`` writes its own rows (one per attempt) and returns the answer with its usage; a
    cache hit writes one row here with ``cache_hit=True`` and returns zero usage.
    """
    started = time.perf_counter()
    # A resumed slide first gets back, one per ask, what its interrupted attempt already paid for,
    # cache or not (a stage's retry skips the cache): the recorder's ``resume_slide`` queued it.
    resumed = getattr(ctx.recorder, "resumed_call", None)
    cached = resumed(spec.request_hash) if resumed is not None else None
    if cached is None and (ctx.use_cache or ctx.replay_only):
        cached = ctx.recorder.cached_call(spec.request_hash)
    if cached is not None and cached.ok and cached.parsed_json is not None:
        try:
            answer = codec.load(cached.parsed_json)
        except (ValidationError, ValueError, KeyError, IndexError):
            answer = None  # an older schema's answer: recompute rather than serve junk
        if answer is not None:
            record_attempt(
                ctx,
                spec,
                ok=True,
                response_raw=cached.response_raw,
                parsed_json=cached.parsed_json,
                latency_s=time.perf_counter() - started,
                cache_hit=True,
            )
            return answer.model_copy(update={"usage": Usage(cache_hit=True)})
    if ctx.replay_only:
        who = f"{spec.backend}:{spec.model}"
        message = f"no recorded answer for {spec.question!r} from {who} ({spec.request_hash[:12]})"
        record_attempt(ctx, spec, ok=False, error=message, latency_s=time.perf_counter() - started)
        raise ReplayMissError(f"{message}. Run once with a live backend to record it, or drop replay mode.")
    return await compute()


async def compute_locally(
    ctx: CallContext, spec: CallSpec, codec: WireCodec[AnswerT], fn: Callable[[], AnswerT]
) -> AnswerT:
    """Run a local (non-network) backend's ``fn`` in a worker thread and write its one row.

    The answer gets ``Usage(calls=1)`` and no cost. An unexpected failure is recorded and raised
    as ``OracleError``: local backends have no retries.
    """

    async def compute() -> AnswerT:
        started = time.perf_counter()
        try:
            answer = await asyncio.to_thread(fn)
        except Exception as exc:
            record_attempt(ctx, spec, ok=False, error=repr(exc), latency_s=time.perf_counter() - started)
            raise OracleError(f"{spec.backend} backend failed on {spec.question!r}: {exc}") from exc
        wire = codec.dump(answer)
        record_attempt(
            ctx, spec, ok=True, response_raw=wire, parsed_json=wire, latency_s=time.perf_counter() - started
        )
        return answer.model_copy(update={"usage": Usage(calls=1)})

    return await answer_with_cache(ctx, spec, codec, compute)


def image_coords_of(x: int, y: int, width: int, height: int) -> list[int]:
    """A level-0 ``[x, y, w, h]`` entry for ``CallSpec.image_coords``."""
    return [int(x), int(y), int(width), int(height)]
