"""Issue 11's demonstration: the README's headline command against fakes that behave like vLLM and Gemini.

LOOPBACK FAKE SERVERS, NOT A VLM: every answer below comes from ``bench/fakes`` (pixel analysis
over the real wire protocols). The figures show what the client does with the services'
behaviours (routing, thinking, quotas, coordinates, limits), never a model's accuracy.

    python -m tissue_oracle.bench.perf.endpoint_demo --out /tmp/endpoint-demo

1. ``segment --oracle openai:Qwen/... --base-url VLLM --self-hosted --reviewer gemini:gemini-2.5-pro
   --max-usd 20`` with Gemini reached through ``GOOGLE_GEMINI_BASE_URL``, in two fake modes: plain,
   and "real" (Gemini thinks 3000 tokens per answer and the first request meets a RetryInfo 429).
   Reported: usable reviews, where Gemini's requests went, and the USD they were priced at.
2. The same slides with a Qwen2.5-VL fake (absolute pixels) and a Qwen3-VL fake (0-1000): masks.
3. ``probe`` against each fake mode.
4. The wall time one RetryInfo 429 costs one question, against the same question without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.bench.fakes import fixtures
from tissue_oracle.bench.fakes.server import FakeGeminiServer, FakeOpenAIServer, FakeServer
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.store.reads import StoreReads

LABEL = "LOOPBACK FAKE SERVERS (pixel analysis, not a VLM)"
QWEN3 = "openai:Qwen/Qwen3-VL-8B-Instruct"
QWEN25 = "openai:Qwen/Qwen2.5-VL-7B-Instruct"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = [sys.executable, "-m", "tissue_oracle.agent.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=env, check=False)


def _env(out: Path, gemini: FakeServer | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {"GEMINI_API_KEY": "fake", "OPENAI_API_KEY": "fake", "TISSUE_ORACLE_CACHE_DIR": str(out / "cache")}
    )
    if gemini is not None:
        env["GOOGLE_GEMINI_BASE_URL"] = gemini.base_url
    return env


def _reviews(db: Path) -> dict[str, Any]:
    calls = StoreReads.open_read_only(db).role_calls("reviewer")
    return {
        "review_rows_ok": calls["rows_ok"],
        "review_rows": calls["rows"],
        "reviews_asked": calls["asked"],
        "reviews_usable": calls["answered"],
        "gemini_usd": round(calls["usd"], 6),
        "unpriced_rows": calls["unpriced_rows"],
    }


def headline(out: Path, slides: list[Path], mode: str) -> dict[str, Any]:
    """The README's headline command, once, against a vLLM fake and a Gemini fake."""
    thinking = 3000 if mode == "real" else 0
    with FakeOpenAIServer() as vllm, FakeGeminiServer(thought_tokens=thinking, retry_delay_s=2.0) as gemini:
        if mode == "real":
            gemini.inject("quota_window")
        run_out = out / f"headline-{mode}"
        started = time.perf_counter()
        done = _cli(
            "segment", *map(str, slides), "--out", str(run_out), "--oracle", QWEN3,
            "--base-url", vllm.base_url, "--self-hosted",
            "--reviewer", "gemini:gemini-2.5-pro", "--max-usd", "20",
            env=_env(out, gemini),
        )  # fmt: skip
        wall = time.perf_counter() - started
        vllm_generate = sum(1 for e in vllm.log if "generateContent" in str(e.get("path")))
        result = {
            "mode": mode,
            "exit_code": done.returncode,
            "wall_s": round(wall, 1),
            "gemini_fake_requests": gemini.requests,
            "vllm_fake_requests": vllm.requests,
            "generateContent_sent_to_vllm": vllm_generate,
            **_reviews(run_out / "audit.duckdb"),
        }
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-800:]
    return result


#: A Qwen2.5-VL server under a name today's rule read as Qwen3-VL (0-1000): the old misreading.
QWEN25_MISREAD = "openai:Qwen/Qwen-2.5-VL-renamed"


def _boxes(run_out: Path, slide: Path) -> list[list[int]]:
    summary = json.loads((run_out / slide.stem / "summary.json").read_text())
    return [[b["x0"], b["y0"], b["x1"], b["y1"]] for b in summary["boxes"]]


def masks_agree(out: Path, slides: list[Path]) -> dict[str, Any]:
    """Qwen2.5-VL (pixels) and Qwen3-VL (0-1000) fakes on the same slides: boxes and masks compared,
    and the Qwen2.5 fake read as 0-1000 (what every ``qwen*`` name got before) beside them."""
    runs = {}
    for name, spec, profile in (
        ("qwen2.5", QWEN25, PROFILES["qwen2.5-vl"]),
        ("qwen3", QWEN3, PROFILES["qwen3-vl"]),
        ("qwen2.5 read as 0-1000", QWEN25_MISREAD, PROFILES["qwen2.5-vl"]),
    ):
        with FakeOpenAIServer(profile=profile) as vllm:
            run_out = out / f"masks-{name.replace(' ', '_')}"
            done = _cli(
                "segment", *map(str, slides), "--out", str(run_out), "--oracle", spec,
                "--base-url", vllm.base_url, "--self-hosted", env=_env(out, None),
            )  # fmt: skip
            runs[name] = (run_out, done.returncode)
    per_slide = {}
    for slide in slides:
        masks = {name: np.load(run_out / slide.stem / "mask.npy") for name, (run_out, _) in runs.items()}
        qwen3 = masks["qwen3"]
        per_slide[slide.stem] = {
            "boxes_qwen3": _boxes(runs["qwen3"][0], slide),
            "boxes_qwen2.5": _boxes(runs["qwen2.5"][0], slide),
            "boxes_qwen2.5_read_as_0_1000": _boxes(runs["qwen2.5 read as 0-1000"][0], slide),
            "mask_patches_equal_to_qwen3": {
                name: f"{int((m == qwen3).sum())}/{m.size}" for name, m in masks.items() if name != "qwen3"
            },
        }
    return {"exit_codes": {k: v[1] for k, v in runs.items()}, "slides": per_slide}


def probes(out: Path) -> list[dict[str, Any]]:
    """``tissue-oracle probe`` against each fake mode; the JSON reports, trimmed to the checks."""
    modes: list[tuple[str, list[str], Any]] = [
        ("vLLM Qwen3-VL", [QWEN3, "--self-hosted"], FakeOpenAIServer()),
        ("vLLM Qwen2.5-VL", [QWEN25, "--self-hosted"], FakeOpenAIServer(profile=PROFILES["qwen2.5-vl"])),
        ("vLLM, --limit-mm-per-prompt image=2", [QWEN3, "--self-hosted"], FakeOpenAIServer(max_images=2)),
        ("Gemini 2.5 Pro, thinking 3000", ["gemini:gemini-2.5-pro", "--role", "reviewer", "--max-usd", "20"],
         FakeGeminiServer(thought_tokens=3000)),
        ("Gemini 3 Pro, thinking 20000", ["gemini:gemini-3-pro-preview", "--role", "reviewer"],
         FakeGeminiServer(thought_tokens=20000)),
    ]  # fmt: skip
    reports = []
    for title, args, server in modes:
        with server:
            url = server.base_url if isinstance(server, FakeOpenAIServer) else f"gemini={server.base_url}"
            done = _cli(
                "probe", *args, "--base-url", url, "--db", str(out / "probe" / "audit.duckdb"), "--json",
                env=_env(out, None),
            )  # fmt: skip
        data: dict[str, Any] = (
            json.loads(done.stdout) if done.stdout.strip().startswith("{") else {"error": done.stderr[-400:]}
        )
        marks = {True: "ok", False: "FAILED", None: "skipped"}
        checks = {c["name"]: f"{marks[c['ok']]}: {c['detail']}" for c in data.get("checks", [])}
        reports.append(
            {"mode": title, "exit_code": done.returncode, "profile": data.get("profile"), "checks": checks}
        )
    return reports


def retry_info_cost(delay_s: float = 2.0, repeats: int = 3) -> dict[str, Any]:
    """Wall seconds of one boxes question with and without a RetryInfo 429 in front (median of repeats)."""
    os.environ.setdefault("GEMINI_API_KEY", "fake")

    def once(with_429: bool) -> float:
        with FakeGeminiServer(retry_delay_s=delay_s) as gemini:
            if with_429:
                gemini.inject("quota_window")
            oracle = fixtures.oracle_for("gemini", gemini, timeout_s=10.0)
            from tissue_oracle.store.memory import MemoryRecorder
            from tissue_oracle.tools.oracle_protocol import CallContext

            ctx = CallContext(
                run_id="r", slide_id="s", stage="ground_boxes", role="oracle", recorder=MemoryRecorder()
            )

            async def ask() -> float:
                started = time.perf_counter()
                try:
                    await oracle.boxes(fixtures.boxes_request(), ctx)
                finally:
                    await oracle.aclose()
                return time.perf_counter() - started

            return asyncio.run(ask())

    plain = sorted(once(False) for _ in range(repeats))[repeats // 2]
    limited = sorted(once(True) for _ in range(repeats))[repeats // 2]
    return {
        "retry_delay_s": delay_s,
        "question_s_without_429": round(plain, 3),
        "question_s_with_429": round(limited, 3),
        "extra_s": round(limited - plain, 3),
        "extra_over_retry_delay": round((limited - plain) / delay_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("endpoint-demo"))
    parser.add_argument("--slides", type=int, default=3, help="slides for the headline runs")
    parser.add_argument("--mask-slides", type=int, default=5, help="slides for the Qwen2.5/Qwen3 masks")
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    from tissue_oracle.bench.cmd_demo import demo_slides

    args.out.mkdir(parents=True, exist_ok=True)
    slides = demo_slides(args.out / "slides", count=max(args.slides, args.mask_slides), size=args.size)
    results = {
        "label": LABEL,
        "headline": [headline(args.out, slides[: args.slides], mode) for mode in ("plain", "real")],
        "qwen25_vs_qwen3_masks": masks_agree(args.out, slides[: args.mask_slides]),
        "probe": probes(args.out),
        "retry_info_429": retry_info_cost(),
    }
    (args.out / "endpoint_demo.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
