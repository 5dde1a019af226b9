"""The methods the peers bench runs, as whole-slide masks: CLAM re-implemented in process, and the
peer packages (tiatoolbox, lazyslide, histolab) each in its own virtualenv under ``.peers/``
(``bash bench/peers/install.sh``), run as subprocesses by ``bench/peers/peer_runner.py``.

``peer_bench`` scores them on the patch grid, ``peer_pen`` on the pixels of real thumbnails.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tissue_oracle.bench.evaluation.clam_segment import ClamParams, clam_mask

ROOT = Path(__file__).resolve().parents[2]
PEER_ENVS = {
    "tiatoolbox_otsu": "tiatoolbox",
    "tiatoolbox_morph": "tiatoolbox",
    "lazyslide": "lazyslide",
    "histolab": "histolab",
}
METHODS = (
    "clam_otsu",
    "clam_sthresh8",
    "tiatoolbox_otsu",
    "tiatoolbox_morph",
    "lazyslide",
    "histolab",
    "ours",
)


def clam_slide_mask(path: Path, params: ClamParams) -> tuple[np.ndarray, int, int, float]:
    """CLAM's mask of a slide at its own thumbnail scale, the slide's size, and seconds."""
    from tissue_oracle.tools.slides import open_slide

    started = time.perf_counter()
    with open_slide(path) as slide:
        width, height = slide.dimensions
        downsample = min(64.0, max(1.0, max(width, height) / 512))
        mask = clam_mask(slide.thumbnail(downsample), downsample, params)
    return mask, width, height, time.perf_counter() - started


def peer_mask(name: str, path: Path, scale: float | None = None) -> tuple[np.ndarray, float] | str:
    """A subprocess peer's mask (spanning the slide, at the peer's resolution) and seconds, or why
    it did not run; ``scale``: tiatoolbox's thumbnail scale (None: the runner's default)."""
    env = ROOT / ".peers" / PEER_ENVS[name]
    python = env / "bin" / "python"
    if not (env / ".ok").is_file() or not python.is_file():  # install.sh writes .ok when done
        return f"skipped: {env} is missing or incomplete (bash bench/peers/install.sh)"
    runner = ROOT / "bench" / "peers" / "peer_runner.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.npz"
        args = [str(python), str(runner), name, str(path), str(out)] + ([] if scale is None else [str(scale)])
        proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"failed: {tail[0][:200]}"
        data = np.load(out)
        return np.asarray(data["mask"], dtype=bool), float(data["seconds"])


def mask_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks (patch grids or pixels); 1.0 when both are empty."""
    denom = float(pred.sum() + ref.sum())
    return 1.0 if denom == 0 else 2 * float((pred & ref).sum()) / denom
