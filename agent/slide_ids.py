"""Slide ids from file names, and the output folder each slide may write: always inside ``--out``.

A slide id names the slide's folder ``OUT/<id>/`` and its store rows, so a hostile or careless
file name must not steer the outputs. ``safe_slide_id`` keeps letters and digits (any script),
``_``, ``-``, ``+`` and ``.``, replaces everything else (``/``, ``\\``, control characters,
markup brackets...) with ``_``, strips leading dots (``..tiff`` has the stem ``.``; ``...tiff``
the stem ``..``), names a stem with no letter or digit ``slide-<hash>`` and caps the length.
``claim_slide_folder`` then proves the folder's resolved path is a direct child of the resolved
``--out``, so a symlink planted at ``OUT/<id>`` can't lead outside either.

Two runs into one ``--out``: the first to create ``OUT/<id>/`` owns it (a marker file names its
run id). A later run finds it taken and writes ``OUT/<id>@<run_id>/`` instead, and says so; it
never overwrites another run's outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tissue_oracle.tools.errors import ConfigError

#: Longest slide id kept from a file name (file systems allow 255 bytes; the run id may be added).
MAX_ID_CHARS = 96
#: The file in a slide folder that names the run owning it.
OWNER_MARKER = ".tissue-oracle-run"
_UNSAFE = re.compile(r"[^\w.+-]")
#: Names the run itself uses inside ``--out``: the store and its WAL, the report, the escalation
#: queue (by prefix), and the distributed run's shard and lock folders (by name).
_RESERVED_PREFIXES = ("audit.", "report.", "escalations.")
_RESERVED_NAMES = frozenset({"shards", "locks"})
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def safe_slide_id(stem: str) -> str:
    """A slide id that is one harmless path component, from a file stem (see the module doc)."""
    text = unicodedata.normalize("NFC", stem)
    text = _UNSAFE.sub("_", text).lstrip(".")[:MAX_ID_CHARS]
    if not any(ch.isalnum() for ch in text):
        return f"slide-{hashlib.sha256(stem.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    if text.lower().startswith(_RESERVED_PREFIXES) or text.lower() in _RESERVED_NAMES:
        return f"slide-{text}"
    return text


def slide_ids(paths: list[Path]) -> list[str]:
    """Safe ids from the file stems, made unique with a short hash of the path where two collide."""
    ids = [safe_slide_id(p.stem) for p in paths]
    return [
        sid
        if ids.count(sid) == 1
        else f"{sid}-{hashlib.sha256(str(p.resolve()).encode('utf-8', 'surrogateescape')).hexdigest()[:6]}"
        for sid, p in zip(ids, paths, strict=True)
    ]


def check_run_id(run_id: str) -> str:
    """``run_id`` when it is safe in a folder name; ``ConfigError`` otherwise."""
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"run id {run_id!r} is not allowed: use letters, digits, '.', '_', '+' or '-' "
            "(at most 128, starting with a letter or digit)."
        )
    return run_id


@dataclass(frozen=True, kw_only=True)
class SlideFolder:
    """Where a slide's outputs go, and why when it is not ``OUT/<slide_id>``."""

    path: Path
    note: str | None = None


def claim_slide_folder(out_dir: Path, slide_id: str, run_id: str) -> SlideFolder:
    """The folder this run writes ``slide_id``'s outputs to: ``OUT/<id>`` unless another run owns it.

    Raises ``ConfigError`` when ``slide_id`` is not a safe component or no candidate folder is
    both inside ``out_dir`` and free or owned by ``run_id``.
    """
    if safe_slide_id(slide_id) != slide_id:
        raise ConfigError(f"slide id {slide_id!r} is not a safe folder name; ids come from safe_slide_id().")
    check_run_id(run_id)
    root = out_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    first = root / slide_id
    for candidate in (first, root / f"{slide_id}@{run_id}"):
        owner = _claim(root, candidate, run_id)
        if owner == run_id:
            note = None
            if candidate != first:
                note = (
                    f"{str(first)!r} holds outputs of {_describe(first)}; this run's outputs are in "
                    f"{str(candidate)!r}"
                )
            return SlideFolder(path=candidate, note=note)
    raise ConfigError(
        f"no folder for slide {slide_id!r} in {str(root)!r}: {str(first)!r} and its run-specific "
        "alternative are taken by other runs or are not plain folders. Use another --out."
    )


def _claim(root: Path, folder: Path, run_id: str) -> str | None:
    """Create ``folder`` for ``run_id`` if free; return its owner's run id (None: unusable)."""
    if folder.is_symlink() or folder.resolve().parent != root:
        return None
    try:
        folder.mkdir()
    except FileExistsError:
        if not folder.is_dir():
            return None
    except OSError:
        return None
    marker = folder / OWNER_MARKER
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return _owner(folder)
    except OSError:
        return None
    if any(p.name != OWNER_MARKER for p in folder.iterdir()) and _summary_run(folder) != run_id:
        # A folder that held outputs before markers existed, or something a person put there:
        # not ours to overwrite.
        os.close(fd)
        marker.unlink()
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(run_id)
    return run_id


def _owner(folder: Path) -> str | None:
    marker = folder / OWNER_MARKER
    if marker.is_file() and not marker.is_symlink():
        return marker.read_text(encoding="utf-8", errors="replace").strip() or None
    return None


def _summary_run(folder: Path) -> str | None:
    try:
        run = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) else None


def _describe(folder: Path) -> str:
    owner = _owner(folder) or _summary_run(folder)
    return f"run {owner!r}" if owner else "something other than this run"
