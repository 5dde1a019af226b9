"""Run one peer tissue detector on one slide, inside that peer's own virtualenv (``.peers/<env>``).

    .peers/<env>/bin/python bench/peers/peer_runner.py PEER SLIDE OUT.npz [SCALE]

PEER is ``histolab`` (TissueMask), ``tiatoolbox_otsu`` (OtsuTissueMasker), ``tiatoolbox_morph``
(MorphologicalMasker) or ``lazyslide`` (``find_tissues``). Writes ``OUT.npz`` with ``mask``
(bool, spanning the whole slide at the peer's own resolution) and ``seconds`` (slide open to
mask, imports excluded). Each peer is called the way its documentation shows, with defaults.
SCALE (default ``BASELINE_SCALE``) is the fraction of level 0 tiatoolbox reads its thumbnail at: a
thumbnail given as the slide is read whole (1.0), or tiatoolbox's mask would be a few pixels wide.
This file runs under the peers' interpreters and imports nothing from tissue_oracle.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

import numpy as np

BASELINE_SCALE = 1 / 32
"""tiatoolbox reads its thumbnail at this fraction of level 0 (1.25x on a 40x slide)."""


def histolab_mask(path: str) -> np.ndarray:
    from histolab.masks import TissueMask
    from histolab.slide import Slide

    with tempfile.TemporaryDirectory() as tmp:
        return np.asarray(TissueMask()(Slide(path, processed_path=tmp)), dtype=bool)


def tiatoolbox_mask(path: str, method: str, scale: float = BASELINE_SCALE) -> np.ndarray:
    from tiatoolbox.tools.tissuemask import MorphologicalMasker, OtsuTissueMasker
    from tiatoolbox.wsicore.wsireader import WSIReader

    wsi = WSIReader.open(path)
    thumb = wsi.slide_thumbnail(resolution=scale, units="baseline")
    if method == "otsu":
        masker: Any = OtsuTissueMasker()
    else:
        mpp = wsi.info.mpp
        masker = MorphologicalMasker(mpp=float(mpp[0]) / scale) if mpp is not None else MorphologicalMasker()
    return np.asarray(masker.fit_transform([thumb])[0], dtype=bool)


def lazyslide_mask(path: str) -> np.ndarray:
    import lazyslide as zs
    from PIL import Image, ImageDraw
    from wsidata import open_wsi

    wsi = open_wsi(path)
    zs.pp.find_tissues(wsi)
    width, height = wsi.properties.shape[1], wsi.properties.shape[0]
    scale = 16
    canvas = Image.new("1", (max(1, width // scale), max(1, height // scale)), 0)
    draw = ImageDraw.Draw(canvas)
    if "tissues" not in wsi.shapes:  # find_tissues logs "No tissue is found." and adds no element
        return np.asarray(canvas, dtype=bool)
    for geom in wsi["tissues"].geometry:
        polys = getattr(geom, "geoms", [geom])
        for poly in polys:
            draw.polygon([(x / scale, y / scale) for x, y in poly.exterior.coords], fill=1)
            for hole in poly.interiors:
                draw.polygon([(x / scale, y / scale) for x, y in hole.coords], fill=0)
    return np.asarray(canvas, dtype=bool)


PEERS = {
    "histolab": lambda p, scale: histolab_mask(p),
    "tiatoolbox_otsu": lambda p, scale: tiatoolbox_mask(p, "otsu", scale),
    "tiatoolbox_morph": lambda p, scale: tiatoolbox_mask(p, "morph", scale),
    "lazyslide": lambda p, scale: lazyslide_mask(p),
}


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[0] not in PEERS:
        print(f"usage: peer_runner.py {{{'|'.join(PEERS)}}} SLIDE OUT.npz [SCALE]", file=sys.stderr)
        return 2
    peer, slide, out = argv[:3]
    scale = float(argv[3]) if len(argv) == 4 else BASELINE_SCALE
    started = time.perf_counter()
    mask = PEERS[peer](slide, scale)
    seconds = time.perf_counter() - started
    np.savez(out, mask=mask, seconds=np.float64(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
