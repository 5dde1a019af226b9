"""The thresholds of the classical whole-slide map (``oracles.tissue_map``), in one frozen record.

Every OD is the summed 3-channel optical density against the local glass; areas are in patches
of the map image (``tissue_map.PATCH_PX`` pixels a side).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True, frozen=True)
class MapParams:
    """Thresholds of the whole-slide rules (summed 3-channel OD against the local glass)."""

    seed_od_min: float = 0.07
    """A seed's 3x3 minimum OD: a continuous stained substrate, not dots on glass."""
    seed_chroma: float = 0.05
    """A seed's local saturation above the glass's own."""
    seed_min_area: float = 1 / 32
    """Seed components smaller than this share of a patch are ignored."""
    grow_od: float = 0.035
    """Weak evidence: local mean OD at least this ..."""
    grow_chroma: float = 0.025
    """... with local saturation this far above the glass's (faint stain, blurred edges)."""
    dense_od: float = 0.45
    """Local mean OD above which a pixel is evidence whatever its colour (silver, elastic, folds)."""
    min_piece_area: float = 0.25
    """Tissue components smaller than this share of a patch are dropped (dust, debris, crystals)."""
    under_ink_reach: float = 0.5
    """Ink that tissue closes around within this many patches is a stroke across tissue: tissue."""
    stain_under_ink: bool = True
    """Ink pixels whose OD colour shows stain beyond the pen's own ink are tissue (``under_ink``)."""
    edge_od: float = 0.5
    """An edge pixel of the map is kept when its own OD reaches this share of the substrate's
    next to it (else it is the halo of growth's 3x3 mean: the half-inside rule of the truth)."""
    halo_od: float = 0.4
    """Edge pixels under this share of the mean OD of the tissue behind them are halo (peeled) ..."""
    halo_passes: int = 2
    """... in this many passes: growth's 3x3 means and the closing spread the map up to 2 px into glass ..."""
    halo_min_od: float = 0.14
    """... where that tissue's mean OD reaches this (4x grow_od: a fainter piece's rim is never grown)."""
    halo_cap_od: float = 0.35
    """The tissue's mean counts each pixel's OD up to this: nuclei and silver or elastic fibres
    would raise it above the substrate a rim pixel is blended from."""
    max_hole_area: float = 4.0
    """Holes up to this many patches are filled (lumina, pale cytoplasm)."""
    stained_hole_od: float = 0.03
    """A larger hole of the final map is filled too when its median OD (ink aside) is above this:
    a fat lobule or pale stroma enclosed by a section, not a lumen or a tear (glass)."""
    fluorescence_luminance: float = 60.0
    """Median luminance below which the background is dark: fluorescence."""
    nearly_all_tissue: float = 0.9
    """Tissue share of the image above which the glass reference is doubtful."""
    all_glass: float = 0.001
    """Tissue share of the image below which the slide is reported as glass."""
    speckle_spike: float = 0.12
    """OD by which a dot stands above its 3x3 grey opening (a granule, a nucleus, a fibre)."""
    speckle_iso: float = 0.023
    """Share of isolated dots (dark spikes of at most 2 px) above which a weak piece is speckle ..."""
    speckle_contrast: float = 2.5
    """... when its 90th-percentile OD is also this many times its median (dark dots on a haze)."""
    speckle_haze_od: float = 0.2
    """... and its median OD is a haze's, under this (a fragment of nucleated tissue is denser)."""
    speckle_strong: bool = True
    """Test pieces of strong stain too: a saturated (magenta) precipitate haze beside pale tissue."""
    line_dark: float = 2.0
    """A piece's dark pixels are those this many times its median OD (nuclei, fibres, granules) ..."""
    line_min_area: float = 0.025
    """... joined into a line where their component holds at least this share of a patch ..."""
    line_max_area: float = 1.0
    """... and at most this many patches (a coverslip edge or a border line merged into a haze is one
    line longer than a patch: not a membrane) ..."""
    line_share: float = 0.62
    """... and a piece whose dark pixels are at least this share joined (membranes, fibres) is tissue,
    not precipitate (granules: dots and clusters) ..."""
    line_piece_area: float = 2.0
    """... when the piece covers at least this many patches (a smaller one's share is noise)."""
    attached_share: float = 0.2
    """A weak piece the speckle test drops is kept when at least this share of the ring just outside
    it is stained tissue the map keeps (loose stroma and fat continuing a section) ..."""
    attached_min_area: float = 2.0
    """... it covers at least this many patches ..."""
    attached_iso: float = 0.031
    """... and under this share of its pixels are isolated dark dots (sparse nuclei; precipitate
    against tissue is denser)."""
    flat_strip_texture: float = 0.06
    """A piece lying along the image's edge (long side parallel to it, at least 4 patches and 4x its
    depth) is a tint or shadow, not tissue, when its mean OD residual from a 5x5 median is under this
    share of its median OD: flat (a strip beyond the coverslip 0.033-0.038; strip-shaped tissue 0.249
    or more) ..."""
    flat_strips: bool = True
    """... whether that test runs (strong strips too: the weak-strip rule reads only weak pixels)."""
    membrane_loops: bool = True
    """Find faint tissue by its membranes: clusters of small dark loops where the map found nothing."""
    loop_dark: float = 0.1
    """A loop's pixels reach this OD (a silver or PAS membrane over a substrate near glass) ..."""
    loop_min_area: float = 0.025
    """... its component holds at least this share of a patch ..."""
    loop_max_area: float = 1.0
    """... and at most this many patches ..."""
    loop_hole: float = 0.3
    """... and encloses holes of at least this share of its own area (a closed outline, not a clump)."""
    loop_reach: float = 0.3
    """Loops within twice this many patches of each other form one cluster ..."""
    loop_min_count: int = 3
    """... which marks tissue when it holds at least this many loops (glass holds one or two by chance) ..."""
    loop_substrate_od: float = 0.04
    """... and grows into the substrate whose wide mean OD (a quarter-patch window) is above this ..."""
    loop_cap_od: float = 0.3
    """... each pixel's OD counted up to this (membranes would lift a glass rim's mean) ..."""
    loop_grow_reach: float = 0.5
    """... up to this many patches beyond the loops' hull."""


DEFAULT_MAP_PARAMS = MapParams()
