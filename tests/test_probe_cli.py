"""``tissue-oracle probe`` against the loopback fakes: each check, the audit rows, and segment's reuse."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.agent.cmd_probe import run_probe_command
from tissue_oracle.agent.oracle_setup import build_oracles
from tissue_oracle.bench.fakes.server import FakeGeminiServer, FakeOpenAIServer
from tissue_oracle.oracles.profiles import PROFILES
from tissue_oracle.policies.policy import load_policy

runner = CliRunner()


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)


def _checks(report: object) -> dict[str, bool | None]:
    return {c.name: c.ok for c in report.checks}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("profile", "model", "convention"),
    [
        ("qwen3-vl", "Qwen/Qwen3-VL-8B-Instruct", "norm1000-xy"),
        ("qwen2.5-vl", "Qwen/Qwen2.5-VL-7B-Instruct", "pixels-xy"),
    ],
)
def test_probe_tells_the_qwen_conventions_apart(
    tmp_path: Path, profile: str, model: str, convention: str
) -> None:
    with FakeOpenAIServer(profile=PROFILES[profile]) as vllm:  # type: ignore[arg-type]
        report, cached = run_probe_command(
            f"openai:{model}",
            base_urls=[vllm.base_url],
            policy_name="default",
            role="oracle",
            max_usd=None,
            self_hosted=True,
            db=tmp_path / "audit.duckdb",
        )
    assert report.ok, report.checks
    assert (report.convention, report.profile) == (convention, profile)
    assert json.loads(cached.read_text())["profile"] == profile
    with duckdb.connect(str(tmp_path / "audit.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT stage) FROM calls WHERE slide_id = 'probe'"
        ).fetchone()
    assert rows == (vllm.requests, 3)  # every probe request is one audited row


def test_probe_finds_gemini_order_and_prices_it(tmp_path: Path) -> None:
    with FakeGeminiServer(thought_tokens=2000) as gemini:
        report, _ = run_probe_command(
            "gemini:gemini-2.5-pro",
            base_urls=[f"gemini={gemini.base_url}"],
            policy_name="default",
            role="reviewer",
            max_usd=5.0,
            self_hosted=False,
            db=tmp_path / "audit.duckdb",
        )
    assert report.ok, report.checks
    assert report.convention == "norm1000-yx" and report.profile == "gemini"
    assert report.usd_per_call is not None and report.usd_per_call > 0 and "cap binds" in report.cap


def test_probe_reports_the_image_limit(tmp_path: Path) -> None:
    with FakeOpenAIServer(max_images=2) as vllm:
        report, _ = run_probe_command(
            "openai:Qwen/Qwen3-VL-8B-Instruct",
            base_urls=[vllm.base_url],
            policy_name="default",
            role="oracle",
            max_usd=None,
            self_hosted=True,
            db=tmp_path / "audit.duckdb",
        )
    assert _checks(report)["images per prompt"] is False and report.max_images == 2


def test_probe_sees_thinking_eat_the_cap(tmp_path: Path) -> None:
    with FakeGeminiServer(thought_tokens=20000) as gemini:  # Gemini 3 at level high may think past our room
        report, _ = run_probe_command(
            "gemini:gemini-3-pro-preview",
            base_urls=[f"gemini={gemini.base_url}"],
            policy_name="default",
            role="reviewer",
            max_usd=None,
            self_hosted=False,
            db=tmp_path / "audit.duckdb",
        )
    assert _checks(report)["thinking and output cap"] is False
    assert "answer cut off" in next(c.detail for c in report.checks if c.name == "thinking and output cap")


def test_probe_cli_reports_a_wrong_url_and_exits_1(tmp_path: Path) -> None:
    with FakeOpenAIServer() as vllm:
        result = runner.invoke(
            app,
            [
                "probe",
                "openai:Qwen/Qwen3-VL-8B-Instruct",
                "--base-url",
                vllm.root + "/nope",
                "--self-hosted",
                "--db",
                str(tmp_path / "a.duckdb"),
                "--json",
            ],
        )
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    reach = data["checks"][0]
    assert reach["name"] == "reach" and reach["ok"] is False and "404" in reach["detail"]


def test_segment_uses_the_profile_a_probe_found(tmp_path: Path) -> None:
    model = "openai:acme/Tissue-VL"  # a name that says nothing about its coordinates
    with FakeOpenAIServer(profile=PROFILES["qwen2.5-vl"]) as vllm:
        run_probe_command(
            model,
            base_urls=[vllm.base_url],
            policy_name="default",
            role="oracle",
            max_usd=None,
            self_hosted=True,
            db=tmp_path / "audit.duckdb",
        )
        policy = load_policy("default").with_updates(
            {"roles.oracle": model, "models": {"openai:*": {"price": "self-hosted"}}}
        )
        oracles = build_oracles(policy, base_urls={"*": vllm.base_url})
    assert oracles.by_role["oracle"].profile.name == "qwen2.5-vl"  # type: ignore[attr-defined]
    assert any("cached probe" in note for note in oracles.notes)
