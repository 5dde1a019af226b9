"""Record factories shared by the store, audit CLI and replay tests."""

from __future__ import annotations

from tissue_oracle.tools.schemas import (
    CallRecord,
    DecisionRecord,
    Grades,
    OutputRecord,
    PatchRecord,
    RunRecord,
    SlideRecord,
)


def run_record(run_id: str = "run-1") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        policy_name="default",
        policy_yaml="review_threshold: 2\n",
        policy_hash="p" * 64,
        tool_version="0.1.0",
        command_line="tissue-oracle run slides/ --out out",
    )


def slide_record(slide_id: str, run_id: str = "run-1") -> SlideRecord:
    return SlideRecord(
        run_id=run_id, slide_id=slide_id, path=f"/data/{slide_id}.svs", width=4096, height=2048, mpp=0.25
    )


def call_record(
    request_hash: str,
    *,
    run_id: str = "run-1",
    slide_id: str = "s1",
    ok: bool = True,
    response: str = '{"label": "tissue"}',
    stage: str = "classify_patches",
    role: str = "oracle",
    cost: float = 0.001,
) -> CallRecord:
    return CallRecord.model_validate(
        {
            "run_id": run_id,
            "slide_id": slide_id,
            "stage": stage,
            "role": role,
            "backend": "openai",
            "model": "qwen3-vl-8b",
            "template": "classify_patch",
            "template_hash": "t" * 64,
            "request_hash": request_hash,
            "image_hashes": ["i" * 64],
            "image_coords": [[512, 1024, 512, 512]],
            "request_json": '{"temperature": 0}',
            "response_raw": response,
            "parsed_json": response,
            "ok": ok,
            "error": None if ok else "HTTP 500",
            "input_tokens": 900,
            "output_tokens": 40,
            "cost_usd": cost,
        }
    )


def decision_record(slide_id: str, region: int = 0, run_id: str = "run-1") -> DecisionRecord:
    return DecisionRecord(
        run_id=run_id,
        slide_id=slide_id,
        region=region,
        round=0,
        grades=Grades(precision=1, recall=3, precision_pct=97.0, recall_pct=70.0),
        action="refine",
        reason="recall grade 3 is worse than the threshold 2",
        budget_left_calls=100,
    )


def patch_records(slide_id: str, n: int, run_id: str = "run-1") -> list[PatchRecord]:
    return [
        PatchRecord(
            run_id=run_id, slide_id=slide_id, x=512 * i, y=0, size=512, label="tissue", source="zero_shot"
        )
        for i in range(n)
    ]


def output_record(slide_id: str, run_id: str = "run-1") -> OutputRecord:
    return OutputRecord(
        run_id=run_id,
        slide_id=slide_id,
        path=f"out/{slide_id}/mask.png",
        kind="mask",
        sha256="m" * 64,
        bytes=10,
    )
