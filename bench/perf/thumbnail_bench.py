"""Thumbnail time and peak memory on a large pyramidal slide, against baselines in the same run.

    python -m tissue_oracle.bench.perf.thumbnail_bench --size 50000 --out /tmp/thumb-bench

Writes a ``size`` x ``size`` JPEG pyramid (Aperio layout, levels 1/4/16 by default, as many
scanners write) with a cheap procedural tissue pattern, then times each method in a fresh
subprocess so that its peak RSS is its own:

- ``ours``: ``open_slide(path).thumbnail(64)``, chunked reads of the best level;
- ``openslide``: OpenSlide's own ``get_thumbnail``, which reads the best level in one piece;
- ``level0-1/64``: the naive route, decoding level 0 (here a 1/8 x 1/8 corner, 1/64 of the
  slide) and downsampling it; its time and memory scale about 64x for the whole slide.

The slide file is kept in ``--out`` and reused by later runs of the same size.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tissue_oracle.bench.synth.pyramid_writer import write_pyramidal_tiff

METHODS = ("ours", "openslide", "level0-1/64")
# Blocks the pyramid writer asks for start on whole 256-px tiles of their level, so one
# precomputed textured strip (tiled 256-px noise on pink) serves every block by slicing.
_TEXTURE = np.random.default_rng(7).integers(-12, 13, size=(256, 256, 1), dtype=np.int16)
_PINK = np.tile(np.array([205, 130, 175], np.int16) + _TEXTURE, (1, 16, 1)).astype(np.uint8)
_GLASS = 242


def blob_centres(size: int) -> list[tuple[float, float, float]]:
    """Four round 'tissue sections' (cx, cy, r) in level-0 pixels, ~30% of the slide."""
    return [(0.3 * size, 0.3 * size, 0.17 * size), (0.7 * size, 0.35 * size, 0.15 * size),
            (0.35 * size, 0.72 * size, 0.14 * size), (0.72 * size, 0.74 * size, 0.16 * size)]  # fmt: skip


def tissue_source(size: int) -> Callable[[int, int, int, int, int], np.ndarray]:
    """A tile source: pink textured discs on near-white glass, rendered at any downsample.

    Only blocks that straddle a disc's edge pay for a per-pixel test; the rest are filled.
    """
    blobs = blob_centres(size)

    def render(x0: int, y0: int, w0: int, h0: int, ds: int) -> np.ndarray:
        out_h, out_w = math.ceil(h0 / ds), math.ceil(w0 / ds)
        near = [(cx, cy, r) for cx, cy, r in blobs if _overlaps(x0, y0, w0, h0, cx, cy, r)]
        if not near:
            return np.full((out_h, out_w, 3), _GLASS, dtype=np.uint8)
        pink = _PINK[:out_h, :out_w] if out_h <= 256 and out_w <= _PINK.shape[1] else _pink(out_h, out_w)
        if any(_covers(x0, y0, w0, h0, cx, cy, r) for cx, cy, r in near):
            return pink.copy()
        ys = (y0 + (np.arange(out_h) + 0.5) * ds)[:, None]
        xs = (x0 + (np.arange(out_w) + 0.5) * ds)[None, :]
        inside = np.zeros((out_h, out_w), dtype=bool)
        for cx, cy, r in near:
            inside |= (xs - cx) ** 2 + (ys - cy) ** 2 < r * r
        return np.where(inside[:, :, None], pink, np.uint8(_GLASS))

    return render


def _pink(out_h: int, out_w: int) -> np.ndarray:
    reps = (math.ceil(out_h / 256), math.ceil(out_w / _PINK.shape[1]), 1)
    return np.tile(_PINK, reps)[:out_h, :out_w]


def _overlaps(x0: int, y0: int, w0: int, h0: int, cx: float, cy: float, r: float) -> bool:
    nearest_x, nearest_y = min(max(cx, x0), x0 + w0), min(max(cy, y0), y0 + h0)
    return (nearest_x - cx) ** 2 + (nearest_y - cy) ** 2 < r * r


def _covers(x0: int, y0: int, w0: int, h0: int, cx: float, cy: float, r: float) -> bool:
    corners = [(x0, y0), (x0 + w0, y0), (x0, y0 + h0), (x0 + w0, y0 + h0)]
    return all((x - cx) ** 2 + (y - cy) ** 2 < r * r for x, y in corners)


def ensure_slide(out: Path, size: int, downsamples: tuple[int, ...]) -> tuple[Path, float]:
    """The benchmark slide (written unless already there) and the seconds spent writing it."""
    path = out / f"bench-{size}-{'-'.join(map(str, downsamples))}.svs"
    if path.exists():
        return path, 0.0
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    started = time.perf_counter()
    write_pyramidal_tiff(partial, size, size, tissue_source(size), tile_size=256, downsamples=downsamples)
    partial.rename(path)
    return path, time.perf_counter() - started


def measure(method: str, path: Path, downsample: float) -> dict[str, Any]:
    """Run one method in this process; wall time, and peak RSS over the process so far."""
    import openslide

    from tissue_oracle.tools.slides import open_slide

    rss_before = _peak_rss_mb()
    started = time.perf_counter()
    if method == "ours":
        with open_slide(path) as slide:
            image = slide.thumbnail(downsample)
    elif method == "openslide":
        with openslide.OpenSlide(path) as raw:
            width, height = raw.dimensions
            size = (math.ceil(width / downsample), math.ceil(height / downsample))
            image = np.asarray(raw.get_thumbnail(size))
    else:
        with openslide.OpenSlide(path) as raw:
            side = raw.dimensions[0] // 8
            region = raw.read_region((0, 0), 0, (side, side)).convert("RGB")
            image = np.asarray(region.reduce(int(downsample)))
            del region
    seconds = time.perf_counter() - started
    return {"method": method, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": rss_before,
            "shape": list(image.shape)}  # fmt: skip


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_child(method: str, path: Path, downsample: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "tissue_oracle.bench.perf.thumbnail_bench", "--measure", method,
               "--slide", str(path), "--downsample", str(downsample)]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<14}{'seconds':>9}{'peak RSS MB':>13}{'RSS after imports':>19}  output shape"]
    for row in rows:
        lines.append(
            f"{row['method']:<14}{row['seconds']:>9.2f}{row['peak_rss_mb']:>13.0f}{row['rss_before_mb']:>19.0f}"
            f"  {tuple(row['shape'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000, help="slide side in level-0 pixels")
    parser.add_argument("--out", type=Path, default=Path("bench-out/thumbnail"))
    parser.add_argument("--downsample", type=float, default=64.0)
    parser.add_argument("--levels", default="1,4,16", help="pyramid downsamples, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method (best time kept)")
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.slide, args.downsample)))
        return
    downsamples = tuple(int(v) for v in args.levels.split(","))
    path, write_seconds = ensure_slide(args.out, args.size, downsamples)
    print(f"slide {path} ({path.stat().st_size / 1e6:.0f} MB, {args.size}x{args.size}, levels {downsamples});"
          f" written in {write_seconds:.0f} s" if write_seconds else f"slide {path} (reused)")  # fmt: skip
    rows = []
    for method in METHODS:
        runs = [run_child(method, path, args.downsample) for _ in range(args.repeats)]
        rows.append(min(runs, key=lambda r: r["seconds"]))
    print(table(rows))
    naive = rows[-1]
    print(f"level 0 whole (extrapolated x64): ~{naive['seconds'] * 64:.0f} s, and "
          f"~{args.size**2 * 7 / 1e9:.1f} GB for its RGBA + RGB buffers")  # fmt: skip
    (args.out / "results.json").write_text(
        json.dumps({"size": args.size, "levels": downsamples, "rows": rows})
    )


if __name__ == "__main__":
    main()
