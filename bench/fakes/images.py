"""Small procedural RGB images for oracle tests: textured stained tissue, speckle, ink, blur.

Deterministic by seed. These stand in for synthetic-slide crops where a test needs an exact,
tiny image; accuracy figures use the real synthetic generator (``bench.synth``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND = np.array([242, 241, 245], dtype=np.float32)
EOSIN = np.array([225, 140, 190], dtype=np.float32)
HAEMATOXYLIN = np.array([95, 70, 150], dtype=np.float32)


def tissue_texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(H, W, 3) float image of H&E-like tissue: pink stroma with fibres and purple nuclei."""
    rng = np.random.default_rng(seed)
    h, w = shape
    stroma = ndi.gaussian_filter(rng.random((h, w)), 3.0)
    stroma = (stroma - stroma.min()) / max(float(np.ptp(stroma)), 1e-6)
    image = BACKGROUND + (EOSIN - BACKGROUND) * (0.55 + 0.45 * stroma)[..., None]
    nuclei = np.zeros((h, w), dtype=bool)
    count = max(1, h * w // 900)
    ys, xs = rng.integers(0, h, count), rng.integers(0, w, count)
    nuclei[ys, xs] = True
    nuclei = ndi.binary_dilation(nuclei, iterations=4)
    image[nuclei] = HAEMATOXYLIN + rng.normal(0, 8, (int(nuclei.sum()), 3))
    return image


def disc_mask(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean disc at ``centre`` (x, y) in pixel coordinates."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def compose(mask: np.ndarray, seed: int = 0, blur_sigma: float = 0.0) -> np.ndarray:
    """RGB uint8: tissue texture where ``mask``, glass elsewhere, optionally blurred (sigma in px)."""
    rng = np.random.default_rng(seed + 1)
    tissue = tissue_texture(mask.shape, seed)
    image = np.where(mask[..., None], tissue, BACKGROUND + rng.normal(0, 1.5, (*mask.shape, 3)))
    if blur_sigma > 0:
        image = ndi.gaussian_filter(image, (blur_sigma, blur_sigma, 0))
    return np.clip(image, 0, 255).astype(np.uint8)


def speckle(shape: tuple[int, int], seed: int = 0, density: float = 0.0015) -> np.ndarray:
    """Glass with sparse dark precipitate dots (2-4 px), which look cellular at high zoom."""
    rng = np.random.default_rng(seed)
    image = BACKGROUND + rng.normal(0, 1.5, (*shape, 3))
    dots = rng.random(shape) < density
    dots = ndi.binary_dilation(dots, iterations=1)
    image[dots] = np.array([90, 60, 120]) + rng.normal(0, 10, (int(dots.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def pen_stroke(image: np.ndarray, colour: tuple[int, int, int], width: int = 24) -> np.ndarray:
    """A smooth diagonal ink band drawn over ``image`` (copy returned)."""
    out = image.copy()
    h, w = out.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    band = np.abs(yy - xx * h / w) < width
    out[band] = colour
    return out
