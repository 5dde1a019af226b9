"""Preflight of one model endpoint before money is spent: reach, auth, structured output, images per
prompt, coordinate convention, room for thinking, and price per call.

Every probe request goes through the same transport a run uses and is written as one ``calls``
row (slide ``probe``), so a probe is audited and priced like any call. The coordinate check sends
a synthetic 560x280 image (sides multiples of 28, so a Qwen2.5-VL processor keeps it as is) with
one tissue-like rectangle at a known place, asks for its box in the model's own format, and
scores each reading of the four numbers against the truth: 0-1000 ``[x, y]`` (Qwen3-VL), 0-1000
``[y, x]`` (Gemini), absolute pixels ``[x, y]`` (Qwen2.5-VL) or ``[y, x]``.

Results are cached per endpoint and model (:func:`save_probe`, :func:`load_probe`) so that
``segment`` can pick the profile the probe found.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tissue_oracle import prompts
from tissue_oracle.oracles import answers, base
from tissue_oracle.oracles.answers import AnswerError, parse_json_text
from tissue_oracle.oracles.base import CallSpec, EncodedImage
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.oracles.transport import (
    Thinking,
    Transport,
    TransportError,
    TransportRequest,
    TransportResponse,
    image_limit_of,
)
from tissue_oracle.tools.oracle_protocol import CallContext
from tissue_oracle.tools.schemas import ModelPrice, Question, Stage

Convention = Literal["norm1000-xy", "norm1000-yx", "pixels-xy", "pixels-yx"]
#: The profile that reads each convention (``pixels-yx`` has none).
PROFILE_OF: dict[Convention, str] = {
    "norm1000-xy": "qwen3-vl",
    "norm1000-yx": "gemini",
    "pixels-xy": "qwen2.5-vl",
}
PROBE_HEIGHT, PROBE_WIDTH = 280, 560
#: The rectangle's pixels ``(x0, y0, x1, y1)``: off-centre and wide, so swapped axes score low.
TRUTH_BOX = (336, 56, 476, 168)
MIN_IOU = 0.5
BOX_PROMPT = (
    "This image shows one rectangular piece of pink stained tissue on blank glass. Give the bounding "
    'box of the tissue in your usual grounding format, as 4 numbers under the key "box". Answer with '
    'JSON only: {"boxes": [{"box": [four numbers], "label": "tissue"}]}'
)
COUNT_PROMPT = 'How many images are above? Answer with JSON only: {"count": N}'


@dataclass(kw_only=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool | None
    """True passed, False failed, None not run (an earlier check failed)."""
    detail: str


@dataclass(kw_only=True)
class ProbeReport:
    """What the probe found about one ``backend:model`` at one endpoint."""

    spec: str
    endpoint: str
    checked_at: str
    checks: list[Check] = field(default_factory=list)
    convention: Convention | None = None
    profile: str | None = None
    max_images: int | None = None
    """Images per prompt the server refused above (None: no limit met up to what was sent)."""
    images_accepted: int = 0
    usd_per_call: float | None = None
    cap: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def probe_image() -> np.ndarray:
    """The synthetic slide: glass with one H&E-pink textured rectangle at :data:`TRUTH_BOX`."""
    rng = np.random.default_rng(11)
    image = np.empty((PROBE_HEIGHT, PROBE_WIDTH, 3), np.float32)
    image[:] = (242, 241, 245)
    x0, y0, x1, y1 = TRUTH_BOX
    tissue = np.array([225, 140, 190], np.float32) + rng.normal(0, 12, (y1 - y0, x1 - x0, 3))
    nuclei = rng.random((y1 - y0, x1 - x0)) < 0.02
    tissue[nuclei] = (95, 70, 150)
    image[y0:y1, x0:x1] = tissue
    return np.clip(image, 0, 255).astype(np.uint8)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def read_convention(numbers: list[float]) -> tuple[Convention | None, float]:
    """The convention under which ``numbers`` best fit :data:`TRUTH_BOX`, and that fit's IoU."""
    a, b, c, d = (float(n) for n in numbers)
    readings: dict[Convention, tuple[float, float, float, float]] = {
        "norm1000-xy": (
            a * PROBE_WIDTH / 1000,
            b * PROBE_HEIGHT / 1000,
            c * PROBE_WIDTH / 1000,
            d * PROBE_HEIGHT / 1000,
        ),
        "norm1000-yx": (
            b * PROBE_WIDTH / 1000,
            a * PROBE_HEIGHT / 1000,
            d * PROBE_WIDTH / 1000,
            c * PROBE_HEIGHT / 1000,
        ),
        "pixels-xy": (a, b, c, d),
        "pixels-yx": (b, a, d, c),
    }
    truth = tuple(float(v) for v in TRUTH_BOX)
    scores = {name: _iou(box, truth) for name, box in readings.items()}
    best = max(scores, key=lambda name: scores[name])
    return (best if scores[best] >= MIN_IOU else None), scores[best]


@dataclass(kw_only=True)
class Prober:
    """Sends the probe requests through one transport and writes one row per request."""

    transport: Transport
    backend: str
    model: str
    ctx_for: Any
    """``stage -> CallContext`` for the rows."""
    price: ModelPrice
    temperature: float = 0.0
    thinking: Thinking | None = None
    answer_tokens: int = 1024
    timeout_s: float = 60.0
    spent: list[float] = field(default_factory=list)

    async def send(
        self,
        question: Question,
        stage: Stage,
        prompt: str,
        images: list[EncodedImage],
        schema: dict[str, Any],
    ) -> TransportResponse:
        """One request and its row; raises ``TransportError`` after recording it."""
        params = {"probe": True, "temperature": self.temperature, "max_tokens": self.answer_tokens}
        key = base.request_hash(self.backend, self.model, question, prompt, [i.data for i in images], params)
        spec = CallSpec(
            backend=self.backend,
            model=self.model,
            question=question,
            request_hash=key,
            template="probe",
            image_hashes=[i.sha256 for i in images],
            image_coords=[[0, 0, i.width, i.height] for i in images],
            request_json=base.canonical_json({"prompt": prompt, "n_images": len(images), **params}),
        )
        request = TransportRequest(
            model=self.model,
            prompt=prompt,
            images=images,
            schema=schema,
            schema_name=f"probe_{question}",
            max_tokens=self.answer_tokens,
            temperature=self.temperature,
            thinking=self.thinking,
            timeout_s=self.timeout_s,
        )
        ctx: CallContext = self.ctx_for(stage)
        started = time.perf_counter()
        try:
            response = await self.transport.send(request)
        except TransportError as exc:
            base.record_attempt(
                ctx,
                spec,
                ok=False,
                error=f"{self.transport.name}: {exc}",
                latency_s=time.perf_counter() - started,
            )
            raise
        cost = self.price.recorded_cost(response.input_tokens, response.output_tokens)
        if cost is not None:
            self.spent.append(cost)
        ok = bool(response.text) and not response.hit_output_cap
        base.record_attempt(
            ctx,
            spec,
            ok=ok,
            response_raw=response.text,
            error=None
            if ok
            else f"probe: finish reason {response.finish_reason!r}, text {response.text[:80]!r}",
            latency_s=time.perf_counter() - started,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost_usd=cost,
        )
        return response


def _reach_failure(exc: TransportError) -> Check:
    if exc.status in (401, 403):
        return Check(name="reach", ok=False, detail=f"reachable, but the key was refused: {exc}")
    if exc.status is None:
        return Check(name="reach", ok=False, detail=f"unreachable: {exc}")
    return Check(name="reach", ok=False, detail=str(exc))


async def run_probe(
    prober: Prober, *, images_needed: int, max_usd: float | None, endpoint: str
) -> ProbeReport:
    """All checks in order; later checks are skipped when the endpoint can't be reached."""
    report = ProbeReport(
        spec=f"{prober.backend}:{prober.model}", endpoint=endpoint, checked_at=datetime.now().isoformat()
    )
    image = base.encode_image(probe_image(), fmt="PNG")
    try:
        response = await prober.send(
            "boxes", "ground_boxes", BOX_PROMPT, [image], answers.boxes_schema(PROFILES["generic"])
        )
    except TransportError as exc:
        report.checks.append(_reach_failure(exc))
        report.checks += [
            Check(name=n, ok=None, detail="not run")
            for n in ("structured output", "coordinates", "images per prompt", "thinking and output cap")
        ]
        report.cap = _cap_line(prober.price, None, max_usd)
        return report
    report.checks.append(Check(name="reach", ok=True, detail="reached, key accepted"))
    _read_box(report, response)
    await _count_images(report, prober, images_needed)
    await _check_room(report, prober)
    report.usd_per_call = (
        sum(prober.spent) / len(prober.spent) if prober.spent and prober.price.known else None
    )
    report.cap = _cap_line(prober.price, report.usd_per_call, max_usd)
    report.checks.append(Check(name="price", ok=prober.price.known or max_usd is None, detail=report.cap))
    return report


def _read_box(report: ProbeReport, response: TransportResponse) -> None:
    if response.hit_output_cap:
        detail = (
            f"no answer: the output cap cut it off (finish reason {response.finish_reason!r}, "
            f"{response.thought_tokens} thinking tokens); see 'thinking and output cap'"
        )
        report.checks.append(Check(name="structured output", ok=False, detail=detail))
        report.checks.append(Check(name="coordinates", ok=None, detail="not run"))
        return
    try:
        value = parse_json_text(response.text)
        numbers = value["boxes"][0]["box"]
        if not (isinstance(numbers, list) and len(numbers) == 4):
            raise AnswerError("the box is not 4 numbers")
    except (AnswerError, KeyError, IndexError, TypeError) as exc:
        report.checks.append(
            Check(
                name="structured output",
                ok=False,
                detail=f"answer did not follow the schema: {exc}; text {response.text[:120]!r}",
            )
        )
        report.checks.append(Check(name="coordinates", ok=None, detail="not run"))
        return
    report.checks.append(Check(name="structured output", ok=True, detail="answer followed the JSON schema"))
    convention, iou = read_convention([float(n) for n in numbers])
    report.convention = convention
    report.profile = PROFILE_OF.get(convention) if convention else None
    if convention is None:
        detail = f"box {numbers} fits no known convention (best IoU {iou:.2f}); the model may not ground well"
    else:
        detail = f"{convention} (IoU {iou:.2f}); profile {report.profile or 'none: pass --profile'}"
    report.checks.append(Check(name="coordinates", ok=report.profile is not None, detail=detail))


async def _count_images(report: ProbeReport, prober: Prober, needed: int) -> None:
    tiny = base.encode_image(np.full((56, 56, 3), 200, np.uint8), fmt="PNG")
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
    try:
        await prober.send("patch_labels", "classify_patches", COUNT_PROMPT, [tiny] * needed, schema)
    except TransportError as exc:
        limit = image_limit_of(str(exc)) or _stated_limit(str(exc))
        report.max_images = limit
        report.checks.append(Check(name="images per prompt", ok=False, detail=str(exc)))
        return
    report.images_accepted = needed
    report.checks.append(
        Check(
            name="images per prompt",
            ok=True,
            detail=f"{needed} images accepted (what the policy sends at most)",
        )
    )


def _stated_limit(message: str) -> int | None:
    found = [int(w) for w in message.replace("(", " ").split() if w.isdigit()]
    return found[0] if "at most" in message.lower() and found else None


async def _check_room(report: ProbeReport, prober: Prober) -> None:
    crop = base.encode_image(probe_image(), fmt="PNG")
    rendered = prompts.render("review_mask")
    try:
        response = await prober.send(
            "review", "review_mask", rendered.text, [crop, crop], answers.review_schema()
        )
    except TransportError as exc:
        report.checks.append(Check(name="thinking and output cap", ok=False, detail=str(exc)))
        return
    thinking = prober.thinking.budget_tokens if prober.thinking else 0
    spent = f"{response.output_tokens} output tokens ({response.thought_tokens} thinking)"
    if response.hit_output_cap or not response.text:
        detail = (
            f"answer cut off: {spent}, finish reason {response.finish_reason!r}, answer cap "
            f"{prober.answer_tokens} + thinking {thinking}. Raise max_output_tokens or lower thinking "
            "in the policy's models section."
        )
        report.checks.append(Check(name="thinking and output cap", ok=False, detail=detail))
        return
    detail = f"answer fit: {spent} of answer cap {prober.answer_tokens} + thinking {thinking}"
    report.checks.append(Check(name="thinking and output cap", ok=True, detail=detail))


def _cap_line(price: ModelPrice, usd_per_call: float | None, max_usd: float | None) -> str:
    if not price.known:
        return "price unknown: a USD cap is refused (say self-hosted, or give the price in the policy)"
    if price.input_per_mtok == 0 and price.output_per_mtok == 0:
        return "$0 per call (free or self-hosted): a USD cap never binds"
    per_call = f"${usd_per_call:.6f} per probe call" if usd_per_call is not None else "priced"
    if max_usd is None:
        return f"{per_call}; no USD cap set"
    if not usd_per_call:
        return f"{per_call}; the USD cap binds"
    return f"{per_call}; the ${max_usd:g} cap binds after about {int(max_usd / usd_per_call)} such calls"


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``TISSUE_ORACLE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tissue-oracle``, else ``~/.cache/...``."""
    explicit = os.environ.get("TISSUE_ORACLE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "tissue-oracle"


def endpoint_of(backend: str, base_url: str | None) -> str:
    """The endpoint a spec's requests go to, as the cache names it."""
    if base_url:
        return base_url.rstrip("/")
    env = {"gemini": "GOOGLE_GEMINI_BASE_URL", "openai": "OPENAI_BASE_URL"}.get(backend, "")
    return (os.environ.get(env) or f"{backend}-default").rstrip("/")


def _cache_path(spec: str, endpoint: str) -> Path:
    digest = hashlib.sha256(f"{spec}|{endpoint}".encode()).hexdigest()[:16]
    return cache_dir() / "probe" / f"{digest}.json"


def save_probe(report: ProbeReport) -> Path:
    """Write the report where :func:`load_probe` finds it; returns the path."""
    path = _cache_path(report.spec, report.endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2), encoding="utf-8")
    return path


def load_probe(spec: str, endpoint: str) -> dict[str, Any] | None:
    """The cached probe of ``spec`` at ``endpoint``, or None (absent or unreadable)."""
    path = _cache_path(spec, endpoint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
