"""The student-first cascade in front of a VLM over a real socket, with one oracle question failing.

The loopback OpenAI-compatible server (``bench.fakes``) answers every patch question but the
first, which gets a 500 (``server_error``); the policy allows no retry. The cascade asks the
classifier about every patch its untrained student is unsure of, in questions of 8: the failed
question's 8 patches fall back to the colour mask, and every other answer is kept and stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from stage_support import core_slide_pixels

from tissue_oracle.agent.cmd_segment import run_segment
from tissue_oracle.agent.run_settings import RunSettings
from tissue_oracle.bench.fakes.fixtures import MODELS, start_server
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.tools import distil_train as fit
from tissue_oracle.tools.distil import save_checkpoint
from tissue_oracle.tools.schemas import StudentSpec


@pytest.mark.slow
def test_a_failed_vlm_question_behind_the_cascade_costs_only_its_patches(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    spec = StudentSpec(patch_px=32, patch_size=256)
    student = tmp_path / "student.pt"
    save_checkpoint(student, spec, fit.build_model(spec).state_dict())
    image, _ = core_slide_pixels()
    slides = tmp_path / "slides"
    slides.mkdir()
    Image.fromarray(image).save(slides / "cores.png")
    policy = load_policy("default").with_updates(
        {
            "classify.patch_size": 256,
            "classify.send_size": 128,
            "classify.retries": 0,
            "review.enabled": False,
            "cascade.enabled": True,
            "cascade.student": f"student:{student}",
            "cascade.confidence": 1.0,  # an untrained student is never that sure: the VLM answers
        }
    )
    server = start_server("openai")
    server.inject("server_error")  # the first patch question the server sees
    try:
        done = run_segment(
            [str(slides)],
            RunSettings(run_id="wire", policy=policy, out_dir=tmp_path / "out"),
            overrides={"oracle": "classical", "classifier": f"openai:{MODELS['openai']}"},
            base_urls=[server.base_url],
            show_progress=False,
        )
    finally:
        server.stop()
    assert done.count("failed") == 0
    stages = pq.read_table(tmp_path / "out" / "cores" / "patches.parquet").column("stage").to_pylist()
    by_source = {s: stages.count(s) for s in set(stages)}
    summary = json.loads((tmp_path / "out" / "cores" / "summary.json").read_text())
    assert summary["patches"]["coarse_fallback"] == 8, summary["patches"]  # one question of 8, no more
    assert "oracle_errors" in summary["flags"]
    assert by_source.get("zero_shot", 0) >= 8, by_source  # the VLM's other answers were kept
