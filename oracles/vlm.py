"""The VLM oracle: the five questions as prompts with images, over any transport, audited and cached.

Each question renders its template from ``prompts/`` with the model profile's key names, encodes
its images (downscaled to the question's side in ``image_sides``, else ``image_max_side``; for a
pixel-coordinate profile then resized to the model processor's own size; deterministic bytes),
sends the model's temperature and thinking allowance, asks for JSON matching a
schema (structured output), validates the answer (``oracles.answers``; coordinates through
``oracles.profiles``) and goes through the cache and the bounded attempt loop. Patch labels are
one call per patch by default (``patch_batch`` patches per call when set); the calls run
concurrently, at most ``max_in_flight`` at once for this oracle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tissue_oracle import prompts
from tissue_oracle.oracles import answers, base
from tissue_oracle.oracles.base import AnswerT, CallSpec, EncodedImage, ImageFormat, WireCodec
from tissue_oracle.oracles.model_families import thinking_plan
from tissue_oracle.oracles.profiles import ImageFrame, ModelProfile, profile_for_model, smart_resize
from tissue_oracle.oracles.transport import Thinking, Transport, TransportRequest
from tissue_oracle.oracles.vlm_attempts import Asking, AttemptPolicy, PendingQuestion, attempt_question
from tissue_oracle.tools.errors import ConfigError, OracleError
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import (
    ALL_QUESTIONS,
    Box,
    BoxesAnswer,
    BoxesRequest,
    Exemplar,
    ModelPrice,
    PatchLabel,
    PatchLabelsAnswer,
    PatchLabelsRequest,
    PatchRef,
    PointsAnswer,
    PointsRequest,
    Question,
    RerankAnswer,
    RerankRequest,
    ReviewAnswer,
    ReviewRequest,
    Usage,
)

#: In-flight requests per HTTP connection pool of the openai transport (see transport_openai).
CONNECTIONS_PER_POOL = 8


@dataclass(kw_only=True)
class VLMOracle:
    """A vision-language model behind a transport, answering all five questions."""

    transport: Transport
    """Sends one request (openai SDK, google-genai, or a test transport)."""
    profile: ModelProfile
    """Key names and coordinate order of this model family."""
    model: str
    """Model name as the server knows it."""
    price: ModelPrice | None = None
    """USD per million tokens; None records zero cost."""
    max_in_flight: int = 16
    """Requests in flight at once, for this oracle."""
    retries: int = 3
    """Retries after the first attempt."""
    timeout_s: float = 120.0
    """Seconds per request."""
    max_tokens: int = 256
    """Output token cap of the answer per request (thinking has its own allowance on top)."""
    temperature: float = 0.0
    """Sampling temperature sent with every request."""
    thinking: Thinking | None = None
    """Thinking allowance sent with every request (None: no thinking setting)."""
    image_max_side: int = 1024
    """Images are downscaled to at most this many pixels on the long side..."""
    image_sides: dict[Question, int] = field(default_factory=dict)
    """...unless their question has its own side here (the grounding thumbnail, review crops)."""
    image_format: ImageFormat = "JPEG"
    """How images are encoded for the wire."""
    patch_batch: int = 1
    """Patches per classification call."""
    backoff_base_s: float = 0.5
    """First retry wait (doubles per retry, jittered)."""
    backoff_max_s: float = 20.0
    """Longest backoff wait when the server names none."""
    retry_after_max_s: float = 120.0
    """Longest wait a server may ask for (Retry-After, RetryInfo); a longer one ends the question."""
    questions: frozenset[Question] = field(default=ALL_QUESTIONS)
    is_vlm: bool = True
    backend: str = field(init=False)
    _slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = field(
        default=None, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.backend = self.transport.name
        if self.max_in_flight < 1 or self.retries < 0 or self.patch_batch < 1:
            raise ConfigError("max_in_flight and patch_batch must be >= 1 and retries >= 0.")

    @property
    def output_token_cap(self) -> int:
        """Most output tokens one request can bill: the answer's cap plus any thinking room."""
        return thinking_plan(self.backend, self.model, self.thinking, self.max_tokens).output_cap

    # ------------------------------------------------------------------ plumbing

    def _semaphore(self) -> asyncio.Semaphore:
        """The in-flight bound, one per event loop (tests run several loops)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_in_flight))
        return self._slots[1]

    async def _encode(self, images: list[np.ndarray], question: Question) -> list[EncodedImage]:
        side = self.image_sides.get(question, self.image_max_side)
        resize = smart_resize if self.profile.scale == "pixels" else None
        return await asyncio.to_thread(
            lambda: [
                base.encode_image(im, max_side=side, fmt=self.image_format, resize=resize) for im in images
            ]
        )

    async def _ask(
        self,
        ctx: CallContext,
        question: Question,
        rendered: prompts.Rendered,
        images: list[EncodedImage],
        coords: list[list[int]],
        schema: dict[str, Any],
        validate: Callable[[Any], AnswerT],
        codec: WireCodec[AnswerT],
    ) -> AnswerT:
        params = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "schema": schema,
            "profile": self.profile.name,
        }
        if self.thinking is not None:
            params["thinking"] = dataclasses.asdict(self.thinking)
        key = base.request_hash(
            self.backend, self.model, question, rendered.text, [i.data for i in images], params
        )
        shown = [{"sha256": i.sha256, "mime": i.mime, "width": i.width, "height": i.height} for i in images]
        spec = CallSpec(
            backend=self.backend,
            model=self.model,
            question=question,
            request_hash=key,
            template=rendered.name,
            template_hash=rendered.sha256,
            image_hashes=[i.sha256 for i in images],
            image_coords=coords,
            request_json=base.canonical_json({"prompt": rendered.text, "images": shown, **params}),
        )
        request = TransportRequest(
            model=self.model,
            prompt=rendered.text,
            images=images,
            schema=schema,
            schema_name=f"{question}_answer",
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            thinking=self.thinking,
            timeout_s=self.timeout_s,
        )
        policy = AttemptPolicy(
            retries=self.retries,
            timeout_s=self.timeout_s,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            retry_after_max_s=self.retry_after_max_s,
        )

        async def compute() -> AnswerT:
            return await attempt_question(
                PendingQuestion(ctx=ctx, spec=spec, request=request, validate=validate, codec=codec),
                Asking(transport=self.transport, policy=policy, price=self.price, slots=self._semaphore()),
            )

        return await base.answer_with_cache(ctx, spec, codec, compute)

    # ------------------------------------------------------------------ questions

    async def boxes(self, req: BoxesRequest, ctx: CallContext) -> BoxesAnswer:
        """Level-0 boxes, clamped to the slide; the thumbnail spans ``shape * downsample`` level-0 px."""
        height, width = req.thumbnail.shape[:2]
        images = await self._encode([req.thumbnail], "boxes")
        frame = ImageFrame(
            x0=0,
            y0=0,
            width=round(width * req.downsample),
            height=round(height * req.downsample),
            pixel_width=images[0].width,
            pixel_height=images[0].height,
        )
        rendered = prompts.render(
            "ground_boxes",
            box_key=self.profile.box_key,
            box_format=self.profile.box_format,
            coordinate_rule=self.profile.coordinate_rule(images[0].width, images[0].height),
        )

        def validate(value: Any) -> BoxesAnswer:
            boxes = []
            for b in answers.boxes_from(value, self.profile, frame):
                x1, y1 = min(b.x1, req.slide_width), min(b.y1, req.slide_height)
                if x1 > b.x0 and y1 > b.y0:
                    boxes.append(Box(x0=b.x0, y0=b.y0, x1=x1, y1=y1, label=b.label))
            return BoxesAnswer(boxes=boxes)

        coords = [[0, 0, frame.width, frame.height]]
        schema = answers.boxes_schema(self.profile)
        return await self._ask(ctx, "boxes", rendered, images, coords, schema, validate, base.BOXES_CODEC)

    async def patch_labels(self, req: PatchLabelsRequest, ctx: CallContext) -> PatchLabelsAnswer:
        """Labels in request order; ``OracleError`` if any batch fails after its retries."""
        shots = await self._encode([ex.image for ex in req.exemplars], "patch_labels")
        batches = [
            (req.patches[i : i + self.patch_batch], req.images[i : i + self.patch_batch])
            for i in range(0, len(req.patches), self.patch_batch)
        ]
        results = await asyncio.gather(
            *(self._label_batch(ctx, req.exemplars, shots, refs, imgs) for refs, imgs in batches),
            return_exceptions=True,
        )
        labels: list[PatchLabel] = []
        usage = Usage()
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, OracleError):
                    raise result
                raise OracleError(
                    f"{self.backend}:{self.model} failed labelling patches: {result!r}"
                ) from result
            labels += result.labels
            usage = usage + result.usage
        return PatchLabelsAnswer(labels=labels, usage=usage)

    async def _label_batch(
        self,
        ctx: CallContext,
        exemplars: list[Exemplar],
        shots: list[EncodedImage],
        refs: list[PatchRef],
        images: list[np.ndarray],
    ) -> PatchLabelsAnswer:
        rendered = _classify_prompt(exemplars, len(refs))
        source = "few_shot" if exemplars else "zero_shot"

        def validate(value: Any) -> PatchLabelsAnswer:
            pairs = answers.labels_from(value, len(refs))
            return PatchLabelsAnswer(
                labels=[
                    PatchLabel(ref=ref, label=label, focus=focus, source=source)
                    for ref, (label, focus) in zip(refs, pairs, strict=True)
                ]
            )

        encoded = shots + await self._encode(images, "patch_labels")
        coords = [base.image_coords_of(r.x, r.y, r.size, r.size) for r in [e.ref for e in exemplars] + refs]
        schema = answers.labels_schema(len(refs))
        codec = base.PATCH_LABELS_CODEC
        return await self._ask(ctx, "patch_labels", rendered, encoded, coords, schema, validate, codec)

    async def points(self, req: PointsRequest, ctx: CallContext) -> PointsAnswer:
        """Level-0 points inside ``req.region``, at most ``max_points_per_class`` per class."""
        r = req.region
        images = await self._encode([req.crop], "points")
        sent = images[0]
        frame = ImageFrame(
            x0=r.x0, y0=r.y0, width=r.width, height=r.height, pixel_width=sent.width, pixel_height=sent.height
        )
        rendered = prompts.render(
            "point_ground",
            max_points=req.max_points_per_class,
            point_key=self.profile.point_key,
            point_format=self.profile.point_format,
            coordinate_rule=self.profile.coordinate_rule(sent.width, sent.height),
        )

        def validate(value: Any) -> PointsAnswer:
            found = answers.points_from(value, self.profile, frame)
            kept = [p for p in found if p.label == "tissue"][: req.max_points_per_class]
            kept += [p for p in found if p.label == "background"][: req.max_points_per_class]
            return PointsAnswer(points=kept)

        coords = [base.image_coords_of(r.x0, r.y0, r.width, r.height)]
        schema = answers.points_schema(self.profile)
        return await self._ask(ctx, "points", rendered, images, coords, schema, validate, base.POINTS_CODEC)

    async def rerank(self, req: RerankRequest, ctx: CallContext) -> RerankAnswer:
        """The model's top ``top_k`` per class among candidates proposed for that class."""
        lines = ", ".join(f"{i + 1}: {label}" for i, label in enumerate(req.candidate_labels))
        rendered = prompts.render(
            "rerank_exemplars", n_candidates=len(req.candidates), candidate_lines=lines, top_k=req.top_k
        )

        def validate(value: Any) -> RerankAnswer:
            picks = answers.rerank_from(value, list(req.candidate_labels), req.top_k)
            exemplars = [
                Exemplar(ref=req.candidates[i], label=label, image=req.images[i], score=1.0 / (rank + 1))
                for label, chosen in picks.items()
                for rank, i in enumerate(chosen)
            ]
            return RerankAnswer(exemplars=exemplars)

        images = await self._encode(list(req.images), "rerank")
        coords = [base.image_coords_of(c.x, c.y, c.size, c.size) for c in req.candidates]
        schema = answers.rerank_schema()
        return await self._ask(
            ctx, "rerank", rendered, images, coords, schema, validate, base.rerank_codec(req)
        )

    async def review(self, req: ReviewRequest, ctx: CallContext) -> ReviewAnswer:
        """Precision/recall grades 1-4 with percentages, from the crop and its overlay."""
        rendered = prompts.render("review_mask")

        def validate(value: Any) -> ReviewAnswer:
            return ReviewAnswer(grades=answers.grades_from(value))

        r = req.region
        images = await self._encode([req.crop, req.overlay], "review")
        coords = [base.image_coords_of(r.x0, r.y0, r.width, r.height)] * 2
        schema = answers.review_schema()
        return await self._ask(ctx, "review", rendered, images, coords, schema, validate, base.REVIEW_CODEC)

    async def aclose(self) -> None:
        await self.transport.aclose()


def _classify_prompt(exemplars: list[Exemplar], n_patches: int) -> prompts.Rendered:
    """The classification prompt; with exemplars, the few-shot block is spliced in and both hashes count."""
    if not exemplars:
        return prompts.render("classify_patch", n_patches=n_patches, exemplar_block="", patch_offset_note="")
    lines = "\n".join(
        f"- Example {i + 1}: {ex.label}" + (f" ({ex.focus})" if ex.focus else "")
        for i, ex in enumerate(exemplars)
    )
    block = prompts.render("classify_patch_fewshot", n_exemplars=len(exemplars), exemplar_lines=lines)
    main = prompts.render(
        "classify_patch",
        n_patches=n_patches,
        exemplar_block=block.text,
        patch_offset_note=f", counting only the patches after the {len(exemplars)} example(s)",
    )
    both = hashlib.sha256(f"{main.sha256}+{block.sha256}".encode()).hexdigest()
    return prompts.Rendered(text=main.text, name=block.name, sha256=both)


def build_vlm_oracle(
    family: str,
    model: str,
    *,
    base_url: str | None = None,
    price: ModelPrice | None = None,
    profile: str | None = None,
    **options: Any,
) -> VLMOracle:
    """A VLM oracle over the ``openai`` or ``gemini`` transport; keys come from the environment."""
    timeout_s = float(options.get("timeout_s", 120.0))
    shards = max(1, -(-int(options.get("max_in_flight", 16)) // CONNECTIONS_PER_POOL))
    transport: Transport
    if family == "openai":
        from tissue_oracle.oracles.transport_openai import OpenAITransport

        transport = OpenAITransport(base_url=base_url, timeout_s=timeout_s, pool_shards=shards)
    elif family == "gemini":
        from tissue_oracle.oracles.transport_gemini import GeminiTransport

        transport = GeminiTransport(base_url=base_url, timeout_s=timeout_s, pool_shards=shards)
    else:
        raise ConfigError(f"unknown VLM family {family!r}; use 'openai' or 'gemini'.")
    try:
        return VLMOracle(
            transport=transport,
            profile=profile_for_model(model, profile),
            model=model,
            price=price,
            **options,
        )
    except TypeError as exc:
        raise ConfigError(f"bad option for {family}:{model}: {exc}") from exc
