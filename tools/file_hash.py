"""A slide file's content hash: how resume and the audit store tell one file from another.

Two schemes, named in the value so a stored hash always says how it was made:

- ``sha256:<hex>``: sha256 over the whole file, for files up to ``FULL_HASH_MAX_BYTES`` (64 MiB).
  Synthetic slides, PNG/JPEG tiles and small TIFFs are hashed exactly.
- ``sha256-sampled:<hex>``: for larger files (a whole-slide image is 0.3-5 GB, and a resume of
  thousands of slides must not re-read terabytes), sha256 over the file size (8 bytes,
  little-endian), the first and last ``EDGE_BYTES`` (2 MiB: TIFF/BigTIFF headers, the vendor
  properties OpenSlide reads and most IFDs live there), and ``SAMPLES`` (32) blocks of
  ``SAMPLE_BYTES`` (64 KiB) at evenly spaced offsets in between. 6 MiB is read whatever the
  file's size, so resuming 10,000 slides reads 60 GB, not the 30 TB of the slides themselves.
  A re-scan or re-export changes the size or the headers; an edit that keeps the size and
  touches only unsampled bytes of a large file goes unseen, which is the price of a bounded read.

MIRAX (``.mrxs``) keeps its pixels beside the index file: the hash also covers the companion
folder's ``Slidedat.ini`` and the names and sizes of its data files.

``content_hash`` memoises by (path, size, mtime, inode), so the resume check and the slide's
store record hash each file once per process.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from tissue_oracle.tools.hashing import file_digest

FULL_HASH_MAX_BYTES = 64 << 20
EDGE_BYTES = 2 << 20
SAMPLE_BYTES = 64 << 10
SAMPLES = 32


def content_hash(path: str | Path) -> str:
    """The content hash of the file at ``path`` (see the module docstring); raises ``OSError``."""
    p = Path(path)
    st = p.stat()
    return _cached(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4096)
def _cached(path: str, size: int, mtime_ns: int, inode: int) -> str:
    if size <= FULL_HASH_MAX_BYTES:
        scheme, digest = "sha256", file_digest(path)
    else:
        scheme, digest = "sha256-sampled", _sampled(path, size)
    if path.lower().endswith(".mrxs"):
        _add_mirax_companions(digest, Path(path))
    return f"{scheme}:{digest.hexdigest()}"


def _sampled(path: str, size: int) -> hashlib._Hash:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    middle_start, middle_end = EDGE_BYTES, size - EDGE_BYTES
    step = (middle_end - middle_start) // (SAMPLES + 1)
    offsets = [0, *(middle_start + step * (i + 1) for i in range(SAMPLES)), middle_end]
    lengths = [EDGE_BYTES, *([SAMPLE_BYTES] * SAMPLES), EDGE_BYTES]
    with open(path, "rb") as handle:
        for offset, length in zip(offsets, lengths, strict=True):
            handle.seek(offset)
            digest.update(handle.read(length))
    return digest


def _add_mirax_companions(digest: hashlib._Hash, index: Path) -> None:
    folder = index.with_suffix("")
    if not folder.is_dir():
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file():
            continue
        digest.update(f"{entry.name}\0{entry.stat().st_size}\0".encode())
        if entry.name.lower() == "slidedat.ini":
            digest.update(Path(entry.path).read_bytes())
