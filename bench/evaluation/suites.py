"""Benchmark suites: which slides, with which reference, at which patch size.

- ``quick``: a few tiny synthetic slides (CI-sized: seconds).
- ``synthetic``: the ``leica-like``, ``stress`` and ``zoo`` presets at their default sizes.
- ``real``: the shared real images (``../shared/data/real``): histolab's algorithmic tissue
  masks are scored as AGREEMENT with histolab, never accuracy; HistoQC's human pen and
  coverslip-edge masks are artefact references (share of marked patches called tissue).
- ``folder``: any folder of slides with masks (``bench.labelled`` pairing rules).

Flat images smaller than ``SMALL_SIDE`` pixels are thumbnails, not slides: they get a small
patch size (``small_patch``) so their grid has enough cells to mean something.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tissue_oracle.bench.evaluation.harness import Case, ReferenceKind
from tissue_oracle.bench.evaluation.labelled import LabelledPair, find_pairs, load_mask, mask_fraction
from tissue_oracle.bench.evaluation.simulated_oracle import NOT_ON_GLASS
from tissue_oracle.bench.synth.truth import Truth
from tissue_oracle.tools.errors import ConfigError

SMALL_SIDE = 2500
#: A patch counts as holding an artefact when the artefact covers at least this share of it.
ARTEFACT_FRACTION = 0.05
#: Stains of the shared real images, from MANIFEST.md and their sources (names say IHC or H&E).
_REAL_STAINS = {"kidney-48-5": "IHC", "models__coverslip_edge_ihc__coverslip_edge": "IHC"}


@dataclass(kw_only=True, frozen=True)
class SuiteSpec:
    """What a suite runs: its synthetic presets (name -> count, size) or a data folder."""

    name: str
    presets: tuple[tuple[str, int, int | None], ...] = ()
    """(preset, slide count, size or None for the preset's default)."""
    patch_size: int = 512
    """Level-0 patch side for slides; thumbnails use ``small_patch``."""
    small_patch: int = 32
    send_size: int = 128
    """Pixels per side of patch images sent to oracles (read from the pyramid). The classical focus
    grade needs full resolution: at 128 px for 512 px patches it never sees blur."""
    reviewer_stains: int = 3
    policy_experiment: bool = True
    """Run the SIMULATED policy experiment (needs the controller)."""
    policy_slides: int = 3
    """Slides in the policy experiment (the artefact-heaviest first)."""


SUITES: dict[str, SuiteSpec] = {
    "quick": SuiteSpec(
        name="quick", presets=(("tiny", 3, None),), patch_size=128, send_size=64, policy_slides=1
    ),
    "synthetic": SuiteSpec(
        name="synthetic",
        presets=(("leica-like", 4, None), ("stress", 3, None), ("zoo", 2, None)),
        patch_size=512,
        send_size=512,
    ),
    "real": SuiteSpec(name="real", policy_experiment=False),
    "folder": SuiteSpec(name="folder", policy_experiment=False),
}


def get_suite(name: str) -> SuiteSpec:
    if name not in SUITES:
        raise ConfigError(f"unknown bench suite {name!r}; choose one of {sorted(SUITES)!r}")
    return SUITES[name]


# --------------------------------------------------------------------------- synthetic


def synthetic_cases(spec: SuiteSpec, data_dir: Path, *, seed: int = 0) -> list[Case]:
    """Generate (or reuse) each preset's slides under ``data_dir`` and load their exact truth."""
    from tissue_oracle.bench.synth.generate import generate_set
    from tissue_oracle.bench.synth.truth import load_truth

    cases = []
    for preset, count, size in spec.presets:
        paths = _existing(data_dir / preset, preset, count, seed)
        if paths is None:
            paths = generate_set(data_dir / preset, preset=preset, count=count, seed=seed, size=size)
        for path in paths:
            truth = load_truth(path)
            cases.append(_synthetic_case(path, truth, preset, spec.patch_size))
    return cases


def _existing(folder: Path, preset: str, count: int, seed: int) -> list[Path] | None:
    """The set ``generate_set`` would write, when it is already there with its truth (reused)."""
    from tissue_oracle.bench.synth.truth import truth_folder

    paths = [folder / f"{preset}_{seed}_{i:03d}.tiff" for i in range(count)]
    if all(p.is_file() and (truth_folder(p) / "meta.json").is_file() for p in paths):
        return paths
    return None


def _synthetic_case(path: Path, truth: Truth, preset: str, patch_size: int) -> Case:
    labels = truth.patch_labels(patch_size)
    marked = [
        m
        for name, m in truth.patch_artefacts(patch_size, ARTEFACT_FRACTION).items()
        if name not in NOT_ON_GLASS
    ]
    artefact = np.logical_or.reduce(marked) & ~labels if marked else None
    return Case(
        slide_id=f"{preset}/{path.stem}",
        path=path,
        stain=str(truth.stain),
        group=preset,
        slide_width=truth.slide_width,
        slide_height=truth.slide_height,
        patch_size=patch_size,
        thumb_downsample=thumb_downsample(patch_size),
        reference_kind="truth",
        reference="synthetic ground truth (exact)",
        truth=labels,
        focus=truth.patch_focus(patch_size),
        artefact=artefact,
        artefact_reference="synthetic artefact masks (glass patches with >=5% artefact)",
        truth_obj=truth,
    )


def thumb_downsample(patch_size: int) -> float:
    """Thumbnail downsample for thumbnail-level methods: at least 16 thumbnail px per patch side."""
    return float(max(1, min(32, patch_size // 16)))


# --------------------------------------------------------------------------- labelled folders


def labelled_cases(
    folder: Path,
    *,
    patch_size: int = 512,
    small_patch: int = 32,
    group: str | None = None,
    reference_kind: ReferenceKind = "truth",
    reference: str = "user masks",
    beside_role: str = "tissue",
    artefact_reference: str = "artefact masks",
) -> list[Case]:
    """Cases for every slide in ``folder`` that has a tissue or artefact mask."""
    from tissue_oracle.tools.slides import open_slide

    cases = []
    for pair in find_pairs(folder, beside_role=beside_role):
        if pair.tissue is None and not pair.artefacts:
            continue
        with open_slide(pair.image) as slide:
            width, height = slide.dimensions
        ps = small_patch if max(width, height) <= SMALL_SIDE else patch_size
        kind: ReferenceKind = reference_kind if pair.tissue is not None else "artefact_only"
        cases.append(
            Case(
                slide_id=pair.image.stem,
                path=pair.image,
                stain=_REAL_STAINS.get(pair.image.stem, _stain_from_name(pair.image.stem)),
                group=group or pair.image.parent.name,
                slide_width=width,
                slide_height=height,
                patch_size=ps,
                thumb_downsample=1.0 if ps <= small_patch else thumb_downsample(ps),
                reference_kind=kind,
                reference=reference if pair.tissue is not None else "",
                truth=_grid(pair.tissue, width, height, ps),
                artefact=_artefact_grid(pair, width, height, ps),
                artefact_reference=artefact_reference if pair.artefacts else "",
            )
        )
    return cases


def _grid(
    path: Path | None, width: int, height: int, patch_size: int, threshold: float = 0.5
) -> np.ndarray | None:
    if path is None:
        return None
    mask = load_mask(path, slide_width=width, slide_height=height)
    return mask_fraction(mask, width, height, patch_size) >= threshold


def _artefact_grid(pair: LabelledPair, width: int, height: int, patch_size: int) -> np.ndarray | None:
    if not pair.artefacts:
        return None
    # Pen strokes and coverslip edges are thin: a patch is marked when they cover 5% of it.
    grids = [_grid(p, width, height, patch_size, ARTEFACT_FRACTION) for p in pair.artefacts.values()]
    return np.logical_or.reduce([g for g in grids if g is not None])


def _stain_from_name(stem: str) -> str:
    low = stem.lower()
    return "IHC" if "ihc" in low else "H&E"


def real_cases(root: Path, spec: SuiteSpec) -> list[Case]:
    """The shared real images: histolab tissue masks (agreement) and HistoQC human artefact masks.

    Only histolab's *tissue* masks are used: its ``*-pen-marks-mask.npy`` arrays are algorithmic
    too, and mark the complement of the pen in places, so they'd be a second-hand reference.
    """
    if not root.is_dir():
        raise ConfigError(
            f"real data folder {str(root)!r} is absent; set TISSUE_ORACLE_REAL_DATA or skip 'real'"
        )
    cases = labelled_cases(
        root,
        patch_size=spec.patch_size // 8,
        small_patch=spec.small_patch,
        group="real",
        reference_kind="agreement",
        reference="histolab's algorithmic tissue mask: AGREEMENT with histolab, not accuracy",
        beside_role="human_artefact",
        artefact_reference="HistoQC human pen / coverslip-edge mask",
    )
    for case in cases:
        case.group = "real: histolab masks" if case.truth is not None else "real: HistoQC artefact masks"
        if case.artefact is not None and case.truth is None:
            continue
        # histolab's pen masks are not a human reference (see the docstring): drop them.
        case.artefact, case.artefact_reference = None, ""
    return cases
