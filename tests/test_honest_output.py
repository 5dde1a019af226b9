"""Secrets, markup and escape sequences in what we print and write; honest labels; bad inputs."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stage_support import core_slide_pixels
from store_support import run_record, slide_record
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.agent.cmd_audit import app as audit_app
from tissue_oracle.bench.fakes.server import FakeOpenAIServer
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.scrub import Scrubber

runner = CliRunner()
KEY = "sk-proj-Abc123Def456Ghi789Jkl012"
MODEL = "openai:Qwen/Qwen3-VL-8B-Instruct"


class EchoingKeyServer(FakeOpenAIServer):
    """Answers every request 401 and echoes the key it was sent, as OpenAI's "Incorrect API key
    provided: sk-..." body does (https://platform.openai.com/docs/guides/error-codes)."""

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        key = (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
        self._send(
            handler,
            401,
            {"error": {"message": f"Incorrect API key provided: {key}.", "code": "invalid_api_key"}},
        )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("in")
    Image.fromarray(np.ascontiguousarray(core_slide_pixels()[0][::2, ::2])).save(folder / "a.png")
    policy = folder.parent / "small.yaml"
    policy.write_text(
        load_policy("default")
        .with_updates({"thumbnail.downsample": 32, "classify.patch_size": 128, "classify.send_size": 64,
                       "classify.batch_size": 16, "review.crop_size": 256, "classify.retries": 0})
        .to_yaml()
    )  # fmt: skip
    return folder / "a.png", policy


def test_userinfo_in_a_base_url_is_scrubbed_from_the_command_line() -> None:
    row = Scrubber({})("tissue-oracle segment s --base-url http://alice:hunter22@gpu:8000/v1 --out o")
    assert row is not None and "hunter22" not in row and "alice" not in row and "gpu:8000/v1" in row


def test_a_key_echoed_in_a_401_never_reaches_summary_json_or_the_terminal(
    small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide, policy = small
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with EchoingKeyServer() as server:
        args = ["segment", str(slide), "--out", str(tmp_path / "o"), "--policy", str(policy)]
        result = runner.invoke(
            app, [*args, "--oracle", MODEL, "--reviewer", MODEL, "--base-url", server.base_url]
        )
    summary = (tmp_path / "o" / "a" / "summary.json").read_text()
    assert "Incorrect API key" in summary  # the error is kept, the key is not
    assert KEY not in summary and KEY not in result.output
    assert json.loads(summary)["labelled_as"].startswith("coarse mask only")
    assert result.exit_code == 1 and "no slide got VLM labels" in result.output


def test_no_call_allowed_is_not_labelled_vlm_and_exits_non_zero(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    slide, policy = small
    with FakeOpenAIServer() as server:
        args = ["segment", str(slide), "--out", str(tmp_path / "o"), "--policy", str(policy)]
        result = runner.invoke(
            app, [*args, "--oracle", MODEL, "--max-calls", "0", "--base-url", server.base_url]
        )
    summary = json.loads((tmp_path / "o" / "a" / "summary.json").read_text())
    assert summary["labelled_as"].startswith("coarse mask only") and not summary["labelled_as"].startswith(
        "VLM"
    )
    assert summary["patches"]["decided_by"].get("zero_shot", 0) == 0
    assert result.exit_code == 1 and "coarse mask only" in result.output


def test_markup_and_escape_sequences_in_names_and_errors_are_inert(tmp_path: Path) -> None:
    folder = tmp_path / "a["
    folder.mkdir()
    bad = folder / "red]bad\x1b[2J.svs"  # the path reads ".../a[/red]bad<ESC>[2J.svs"
    bad.write_bytes(b"not a slide")
    result = runner.invoke(app, ["segment", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output  # the slide failed; the table printed
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "\x1b" not in result.output and "[/red]" in result.output.replace("\n", "")


def test_audit_tables_show_hostile_text_inertly(tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    with AuditStore.open(db) as store:
        store.begin_run(run_record())
        store.begin_slide(slide_record("s1"))
        store.finish_slide("run-1", "s1", status="failed", error="boom [/red] \x1b]0;pwned\x07 [bold]x")
    result = runner.invoke(audit_app, ["slides", "run-1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "[/red]" in result.output


def test_a_symlink_loop_and_an_empty_folder_are_reported_and_the_batch_goes_on(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    slide, policy = small
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["segment", str(loop), str(empty), str(slide), "--out", str(tmp_path / "o"),
                                 "--policy", str(policy)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "symbolic link loop" in result.output and "no slide files" in result.output
    assert (tmp_path / "o" / "a" / "summary.json").is_file()
