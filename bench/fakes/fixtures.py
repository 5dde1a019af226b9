"""Request builders and oracle factories shared by the wire tests (procedural images, real sockets)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tissue_oracle.bench.fakes import images
from tissue_oracle.bench.fakes.server import FakeGeminiServer, FakeOpenAIServer, FakeServer
from tissue_oracle.oracles.registry import build_oracle
from tissue_oracle.oracles.vlm import VLMOracle
from tissue_oracle.tools.schemas import (
    Box,
    BoxesRequest,
    PatchLabelsRequest,
    PatchRef,
    PointsRequest,
    RerankRequest,
    ReviewRequest,
)

MODELS = {"openai": "Qwen/Qwen3-VL-8B-Instruct", "gemini": "gemini-2.5-flash"}


def start_server(family: str, **options: object) -> FakeServer:
    cls = FakeOpenAIServer if family == "openai" else FakeGeminiServer
    return cls(**options).start()  # type: ignore[arg-type]


def oracle_for(family: str, server: FakeServer, *, model: str | None = None, **options: Any) -> VLMOracle:
    """An oracle built through the registry, pointed at the fake server, with fast test timings."""
    settings: dict[str, Any] = {
        "timeout_s": 1.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.2,
        "retries": 3,
    }
    settings.update(options)
    spec = f"{family}:{model or MODELS[family]}"
    oracle = build_oracle(spec, base_url=server.base_url, **settings)
    assert isinstance(oracle, VLMOracle)
    return oracle


def boxes_request() -> BoxesRequest:
    mask = images.disc_mask((120, 200), (50, 60), 30) | images.disc_mask((120, 200), (150, 60), 32)
    return BoxesRequest(
        thumbnail=images.compose(mask), downsample=64.0, slide_width=200 * 64, slide_height=120 * 64
    )


def patch_request(n: int = 2) -> PatchLabelsRequest:
    pics = [
        images.compose(images.disc_mask((128, 128), (64, 64), 60), seed=i)
        if i % 2 == 0
        else images.compose(np.zeros((128, 128), bool), seed=i)
        for i in range(n)
    ]
    refs = [PatchRef(x=512 * i, y=0) for i in range(n)]
    return PatchLabelsRequest(patches=refs, images=pics)


def points_request() -> PointsRequest:
    crop = images.compose(images.disc_mask((128, 128), (40, 64), 30))
    return PointsRequest(
        crop=crop, region=Box(x0=4096, y0=2048, x1=4096 + 1024, y1=2048 + 1024), max_points_per_class=2
    )


def rerank_request() -> RerankRequest:
    full = images.disc_mask((96, 96), (48, 48), 60)
    pics = [
        images.compose(full, seed=1, blur_sigma=3.0),
        images.compose(full, seed=2),
        images.speckle((96, 96)),
        images.compose(np.zeros((96, 96), bool)),
    ]
    refs = [PatchRef(x=512 * i, y=0) for i in range(4)]
    return RerankRequest(
        candidates=refs,
        candidate_labels=["tissue", "tissue", "background", "background"],
        images=pics,
        top_k=1,
    )


def review_request() -> ReviewRequest:
    truth = images.disc_mask((128, 128), (64, 64), 40)
    crop = images.compose(truth)
    overlay = crop.copy()
    overlay[truth] = (0.5 * overlay[truth] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
    return ReviewRequest(crop=crop, overlay=overlay, mask=truth, region=Box(x0=0, y0=0, x1=512, y1=512))
