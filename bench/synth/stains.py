"""Stain families: how tissue components absorb light, with per-slide colour variation.

Colour follows Beer-Lambert: ``rgb = glass * exp(-OD)``, where the optical density ``OD`` is a
sum over components of (component field) x (the stain's OD vector for that component). A slide
draws its own stain vectors and strengths from the family's, so two H&E slides differ the way
two labs' H&E do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from tissue_oracle.bench.synth.tissue import COMPONENTS
from tissue_oracle.tools.errors import ConfigError

StainName = Literal["he", "pas", "jones", "evg", "masson", "ihc"]
STAINS: tuple[str, ...] = get_args(StainName)

# Unit OD vectors (R, G, B absorbance): dyes absorb the colours complementary to how they look.
_HEMATOXYLIN = (0.65, 0.70, 0.29)
_EOSIN = (0.07, 0.99, 0.11)
_DAB = (0.27, 0.57, 0.78)
_PAS_MAGENTA = (0.22, 0.92, 0.32)
_SILVER = (0.55, 0.58, 0.62)  # grey-brown to black deposits
_IRON_HEMATOXYLIN = (0.58, 0.62, 0.52)  # Weigert: black-brown nuclei
_ELASTIN_BLACK = (0.58, 0.58, 0.57)
_FUCHSIN_RED = (0.10, 0.88, 0.47)
_PICRIC_YELLOW = (0.04, 0.22, 0.97)
_ANILINE_BLUE = (0.80, 0.56, 0.12)
_SCARLET_RED = (0.06, 0.90, 0.43)
_LIGHT_GREEN = (0.75, 0.18, 0.60)

#: family -> component -> (unit OD vector, strength). Components absent from a family don't stain.
_FAMILIES: dict[str, dict[str, tuple[tuple[float, float, float], float]]] = {
    "he": {
        "nuclei": (_HEMATOXYLIN, 1.25),
        "cytoplasm": (_EOSIN, 0.55),
        "collagen": (_EOSIN, 0.6),
        "membrane": (_EOSIN, 0.45),
        "elastic": (_EOSIN, 0.25),
    },
    "pas": {
        "nuclei": (_HEMATOXYLIN, 1.1),
        "cytoplasm": (_PAS_MAGENTA, 0.22),
        "collagen": (_PAS_MAGENTA, 0.18),
        "membrane": (_PAS_MAGENTA, 1.1),
        "elastic": (_PAS_MAGENTA, 0.1),
    },
    "jones": {
        "nuclei": (_HEMATOXYLIN, 0.55),
        "cytoplasm": (_EOSIN, 0.18),
        "collagen": (_SILVER, 0.22),
        "membrane": (_SILVER, 1.8),
        "elastic": (_SILVER, 0.3),
    },
    "evg": {
        "nuclei": (_IRON_HEMATOXYLIN, 1.1),
        "cytoplasm": (_PICRIC_YELLOW, 0.55),
        "collagen": (_FUCHSIN_RED, 0.85),
        "membrane": (_FUCHSIN_RED, 0.45),
        "elastic": (_ELASTIN_BLACK, 2.2),
    },
    "masson": {
        "nuclei": (_IRON_HEMATOXYLIN, 1.1),
        "cytoplasm": (_SCARLET_RED, 0.6),
        "collagen": (_ANILINE_BLUE, 0.9),
        "membrane": (_ANILINE_BLUE, 0.5),
        "elastic": (_SCARLET_RED, 0.2),
    },
    "ihc": {
        "nuclei": (_HEMATOXYLIN, 0.75),
        "cytoplasm": (_LIGHT_GREEN, 0.03),
        "collagen": (_HEMATOXYLIN, 0.06),
        "membrane": (_HEMATOXYLIN, 0.08),
        "marker": (_DAB, 0.9),
    },
}

#: The stain each family's *precipitate* and speckle takes (the dye that crashes out).
PRECIPITATE = {
    "he": _HEMATOXYLIN,
    "pas": _PAS_MAGENTA,
    "jones": _SILVER,
    "evg": _ELASTIN_BLACK,
    "masson": _IRON_HEMATOXYLIN,
    "ihc": _DAB,
}


@dataclass(frozen=True, kw_only=True)
class SlideStain:
    """A stain as drawn for one slide."""

    name: str
    """Family name, one of STAINS."""
    matrix: np.ndarray
    """(3, len(COMPONENTS)) OD per unit component field."""
    glass: np.ndarray
    """(3,) background RGB in [0, 1] (glass plus mounting medium, before illumination)."""
    precipitate: np.ndarray
    """(3,) OD vector of this slide's stain precipitate / speckle."""


def draw_stain(name: str, rng: np.random.Generator) -> SlideStain:
    """This slide's version of stain family ``name``: jittered hue, strength and background."""
    if name not in _FAMILIES:
        raise ConfigError(f"unknown stain {name!r}; known stains: {', '.join(STAINS)}")
    matrix = np.zeros((3, len(COMPONENTS)), dtype=np.float32)
    # Real sections absorb a lot more than a glance at one 512 px patch suggests; 1.6 calibrates
    # thumbnail optical density (tissue OD sum ~0.4-0.9) to scanned slides.
    strength = 1.6 * rng.uniform(0.7, 1.3)
    for comp, (vec, amount) in _FAMILIES[name].items():
        matrix[:, COMPONENTS.index(comp)] = _jitter(vec, rng) * amount * strength * rng.uniform(0.8, 1.2)
    glass = np.clip(rng.normal([0.94, 0.93, 0.95], 0.008), 0.88, 0.99).astype(np.float32)
    precip = _jitter(PRECIPITATE[name], rng) * rng.uniform(0.9, 1.3)
    return SlideStain(name=name, matrix=matrix, glass=glass, precipitate=precip.astype(np.float32))


def _jitter(vec: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    v = np.clip(np.asarray(vec) + rng.normal(0, 0.06, 3), 0.02, None)
    return (v / np.linalg.norm(v)).astype(np.float32)


def optical_density(stain: SlideStain, fields: np.ndarray) -> np.ndarray:
    """OD (3, h, w) of component ``fields`` (len(COMPONENTS), h, w) under ``stain``."""
    n, h, w = fields.shape
    return (stain.matrix @ fields.reshape(n, h * w)).reshape(3, h, w)
