"""Slide ids are one harmless path component, and a slide folder is provably inside ``--out``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tissue_oracle.agent.slide_ids import OWNER_MARKER, claim_slide_folder, safe_slide_id, slide_ids
from tissue_oracle.tools import file_hash
from tissue_oracle.tools.errors import ConfigError


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("TCGA-A1-0001.DX1", "TCGA-A1-0001.DX1"),
        ("CMU-1", "CMU-1"),
        ("coupe_été", "coupe_été"),
        ("a b", "a_b"),
        ("[/red]x", "__red_x"),
        ("a\x1b[31mb", "a__31mb"),
        ("..\\..\\x", "_.._x"),
        ("audit.duckdb", "slide-audit.duckdb"),
        ("report.html", "slide-report.html"),
        ("shards", "slide-shards"),
    ],
)
def test_safe_slide_id_keeps_plain_names_and_neutralises_the_rest(stem: str, expected: str) -> None:
    assert safe_slide_id(stem) == expected


@pytest.mark.parametrize("stem", [".", "..", "...", "", "\x00", "/"])
def test_dot_and_empty_stems_become_a_named_slide(stem: str) -> None:
    sid = safe_slide_id(stem)
    assert sid.startswith("slide-") and sid not in (".", "..") and "/" not in sid


def test_a_very_long_stem_is_capped() -> None:
    assert len(safe_slide_id("x" * 1000)) <= 96


def test_ids_that_collide_after_sanitising_are_made_unique(tmp_path: Path) -> None:
    ids = slide_ids([tmp_path / "a b.svs", tmp_path / "a_b.svs", tmp_path / "c.svs"])
    assert len(set(ids)) == 3 and ids[2] == "c"
    assert all(i.startswith("a_b-") for i in ids[:2])


def test_a_symlink_planted_at_the_slide_folder_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(outside, target_is_directory=True)
    folder = claim_slide_folder(out, "a", "r1")
    assert folder.path == (out / "a@r1").resolve() and folder.note is not None
    assert list(outside.iterdir()) == []


def test_an_unsafe_slide_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a safe folder name"):
        claim_slide_folder(tmp_path, "..", "r1")


def test_a_folder_someone_else_filled_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("a person's file")
    folder = claim_slide_folder(tmp_path, "a", "r1")
    assert folder.path.name == "a@r1" and not (tmp_path / "a" / OWNER_MARKER).exists()
    assert claim_slide_folder(tmp_path, "a", "r1").path == folder.path  # stable on resume


def test_content_hash_is_exact_for_small_files_and_names_its_scheme(tmp_path: Path) -> None:
    path = tmp_path / "s.tiff"
    data = bytearray(os.urandom(3 << 20))
    path.write_bytes(bytes(data))
    before = file_hash.content_hash(path)
    data[len(data) // 2] ^= 1  # one bit in the middle, same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1, 1))
    after = file_hash.content_hash(path)
    assert before.startswith("sha256:") and after.startswith("sha256:") and before != after


def test_large_files_use_the_bounded_sampled_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_hash, "FULL_HASH_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(file_hash, "EDGE_BYTES", 64 << 10)
    file_hash._cached.cache_clear()
    path = tmp_path / "big.svs"
    data = bytearray(os.urandom(8 << 20))
    path.write_bytes(bytes(data))
    before = file_hash.content_hash(path)
    data[-1] ^= 1  # the tail (IFDs, trailer) is always read
    path.write_bytes(bytes(data))
    after = file_hash.content_hash(path)
    file_hash._cached.cache_clear()
    assert before.startswith("sha256-sampled:") and before != after
