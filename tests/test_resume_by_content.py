"""Resume matches slides by content, refuses a changed policy, and never overwrites another run's folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stage_support import core_slide_pixels
from typer.testing import CliRunner

from tissue_oracle.agent.cli import app
from tissue_oracle.policies.policy import load_policy
from tissue_oracle.store.audit_store import AuditStore

runner = CliRunner()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "small.yaml"
    small = load_policy("default").with_updates(
        {
            "thumbnail.downsample": 32,
            "classify.patch_size": 128,
            "classify.send_size": 64,
            "classify.batch_size": 16,
            "review.crop_size": 256,
        }
    )
    path.write_text(small.to_yaml())
    return path


def write_slide(path: Path, *, flipped: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.ascontiguousarray(core_slide_pixels()[0][::2, ::2])
    Image.fromarray(image[:, ::-1] if flipped else image).save(path, format="PNG")
    return path


def segment(*args: str, policy: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["segment", *args, "--policy", str(policy)], catch_exceptions=False)
    return result.exit_code, result.output


def slide_rows(db: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    with AuditStore.open(db, read_only=True) as store:
        rows = store.query(
            lambda c: c.execute("SELECT run_id, slide_id, status, file_hash FROM slides").fetchall()
        )
    return {(run, sid): (status, digest) for run, sid, status, digest in rows}


def call_count(db: Path) -> int:
    with AuditStore.open(db, read_only=True) as store:
        return int(store.query(lambda c: c.execute("SELECT count(*) FROM calls").fetchall())[0][0])


@pytest.mark.slow
def test_a_changed_file_under_a_finished_name_is_reported_and_segmented_again(
    tmp_path: Path, policy_file: Path
) -> None:
    slide, out = write_slide(tmp_path / "in" / "a.png"), tmp_path / "out"
    code, _ = segment(str(slide), "--out", str(out), "--run-id", "r1", policy=policy_file)
    assert code == 0
    first_hash = slide_rows(out / "audit.duckdb")[("r1", "a")][1]
    first_mask = np.load(out / "a" / "mask.npy")
    write_slide(slide, flipped=True)  # same name, other content
    code, output = segment(str(slide), "--out", str(out), "--run-id", "r1", policy=policy_file)
    assert code == 0, output
    assert "changed since this run finished it" in output
    status, second_hash = slide_rows(out / "audit.duckdb")[("r1", "a")]
    assert status in ("done", "degraded") and second_hash != first_hash
    assert np.array_equal(np.load(out / "a" / "mask.npy"), first_mask[:, ::-1])  # the flipped slide's mask


def test_a_renamed_copy_of_a_finished_slide_is_skipped_by_content(tmp_path: Path, policy_file: Path) -> None:
    slide, out = write_slide(tmp_path / "in" / "a.png"), tmp_path / "out"
    assert segment(str(slide), "--out", str(out), "--run-id", "r1", policy=policy_file)[0] == 0
    calls = call_count(out / "audit.duckdb")
    renamed = slide.rename(slide.with_name("b.png"))
    code, output = segment(str(renamed), "--out", str(out), "--run-id", "r1", policy=policy_file)
    assert code == 0, output
    assert "same content as slide 'a'" in output
    assert call_count(out / "audit.duckdb") == calls
    assert ("r1", "b") not in slide_rows(out / "audit.duckdb")


def test_resuming_under_another_policy_is_refused_before_any_call(tmp_path: Path, policy_file: Path) -> None:
    slides = tmp_path / "in"
    write_slide(slides / "a.png")
    out = tmp_path / "out"
    assert segment(str(slides / "a.png"), "--out", str(out), "--run-id", "r1", policy=policy_file)[0] == 0
    write_slide(slides / "b.png", flipped=True)
    calls = call_count(out / "audit.duckdb")
    code, output = segment(
        str(slides), "--out", str(out), "--run-id", "r1", "--max-calls", "500", policy=policy_file
    )
    assert code == 2
    assert "another policy" in output and "budgets.run.calls: None -> 500" in output
    assert call_count(out / "audit.duckdb") == calls
    assert ("r1", "b") not in slide_rows(out / "audit.duckdb")


def test_resuming_with_another_oracle_override_is_refused(tmp_path: Path, policy_file: Path) -> None:
    slide, out = write_slide(tmp_path / "in" / "a.png"), tmp_path / "out"
    assert segment(str(slide), "--out", str(out), "--run-id", "r1", policy=policy_file)[0] == 0
    code, output = segment(
        str(slide),
        "--out",
        str(out),
        "--run-id",
        "r1",
        "--reviewer",
        "openai:m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        policy=policy_file,
    )
    assert code == 2 and "roles.reviewer" in output


@pytest.mark.slow
def test_a_second_run_into_the_same_out_never_overwrites_the_first(tmp_path: Path, policy_file: Path) -> None:
    slide, out = write_slide(tmp_path / "in" / "a.png"), tmp_path / "out"
    assert segment(str(slide), "--out", str(out), "--run-id", "r1", policy=policy_file)[0] == 0
    first = (out / "a" / "summary.json").read_bytes()
    code, output = segment(str(slide), "--out", str(out), "--run-id", "r2", policy=policy_file)
    assert code == 0, output
    assert (out / "a" / "summary.json").read_bytes() == first
    second = json.loads((out / "a@r2" / "summary.json").read_text())
    assert second["run_id"] == "r2" and "folder_taken" in second["flags"]
    assert any("run 'r1'" in reason for reason in second["reasons"])
    # resuming r2 finds its own folder again
    code, _ = segment(str(slide), "--out", str(out), "--run-id", "r2", policy=policy_file)
    assert code == 0 and not (out / "a@r2@r2").exists()


@pytest.mark.parametrize("name", ["..png", "...png", ".png.png"])
def test_a_dot_named_slide_writes_only_under_out(tmp_path: Path, policy_file: Path, name: str) -> None:
    slide = write_slide(tmp_path / "in" / name)
    parent = tmp_path / "work"
    out = parent / "out"
    out.mkdir(parents=True)
    code, output = segment(str(slide), "--out", str(out), policy=policy_file)
    assert code == 0, output
    assert [p.name for p in parent.iterdir()] == ["out"]  # nothing written beside --out
    written = [p for p in out.rglob("summary.json")]
    assert len(written) == 1 and written[0].parent.parent == out


def test_an_unsafe_run_id_is_a_usage_error(tmp_path: Path, policy_file: Path) -> None:
    slide = write_slide(tmp_path / "in" / "a.png")
    code, output = segment(
        str(slide), "--out", str(tmp_path / "out"), "--run-id", "../../x", policy=policy_file
    )
    assert code == 2 and "run id" in output
