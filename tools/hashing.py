"""sha256 of a file's bytes, read in 1 MiB blocks (never the whole file in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of everything in ``path``."""
    return file_digest(path).hexdigest()


def file_digest(path: Path | str) -> hashlib._Hash:
    """A sha256 object fed with everything in ``path`` (to feed more, or to take its hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest
