"""clean: component removal and hole filling on the patch grid, from tables of small grids."""

from __future__ import annotations

import numpy as np
import pytest

from tissue_oracle.tools.clean import CleanInput, clean, fill_small_holes, remove_small_components


def grid(text: str) -> np.ndarray:
    """'#' is tissue, '.' background; one row per line."""
    rows = [line.strip() for line in text.strip().splitlines()]
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


REMOVE_CASES = [
    # (name, grid, min_size, connectivity, expected, removed)
    ("empty grid", "...\n...", 8, 4, "...\n...", 0),
    ("single cell removed", "...\n.#.\n...", 2, 4, "...\n...\n...", 1),
    ("size equal to min kept", "##.\n##.\n...", 4, 4, "##.\n##.\n...", 0),
    ("size one below min removed", "##.\n#..\n...", 4, 4, "...\n...\n...", 1),
    ("diagonal cells are separate under 4", "#.\n.#", 2, 4, "..\n..", 2),
    ("diagonal cells join under 8", "#.\n.#", 2, 8, "#.\n.#", 0),
    ("min size 1 keeps all", "#.\n.#", 1, 4, "#.\n.#", 0),
    ("big kept small removed", "####..#\n####...\n.......", 3, 4, "####...\n####...\n.......", 1),
]


@pytest.mark.parametrize(("name", "before", "min_size", "conn", "after", "removed"), REMOVE_CASES)
def test_remove_small_components(name: str, before: str, min_size: int, conn: int, after: str, removed: int):
    out, count = remove_small_components(grid(before), min_size, conn)
    assert np.array_equal(out, grid(after)), name
    assert count == removed, name


FILL_CASES = [
    # (name, grid, max_size, connectivity, expected, filled)
    ("one-cell hole filled", "###\n#.#\n###", 10, 4, "###\n###\n###", 1),
    ("hole at max size kept", "####\n#..#\n####", 2, 4, "####\n#..#\n####", 0),
    ("hole below max filled", "####\n#..#\n####", 3, 4, "####\n####\n####", 1),
    ("border background never filled", ".##\n###\n###", 10, 4, ".##\n###\n###", 0),
    ("diagonal leak: a hole under 4 is open under 8", "###\n#.#\n##.", 10, 8, "###\n#.#\n##.", 0),
    ("diagonal leak closed under 4", "####\n#.##\n##.#\n####", 10, 4, "####\n####\n####\n####", 2),
    ("max size 0 fills nothing", "###\n#.#\n###", 0, 4, "###\n#.#\n###", 0),
]


@pytest.mark.parametrize(("name", "before", "max_size", "conn", "after", "filled"), FILL_CASES)
def test_fill_small_holes(name: str, before: str, max_size: int, conn: int, after: str, filled: int):
    out, count = fill_small_holes(grid(before), max_size, conn)
    assert np.array_equal(out, grid(after)), name
    assert count == filled, name


def test_clean_paper_defaults_remove_then_fill():
    tissue = np.zeros((12, 12), dtype=bool)
    tissue[1:9, 1:9] = True  # a 64-cell core
    tissue[4:6, 4:6] = False  # a 4-cell hole: filled (< 10)
    tissue[10, 10] = True  # a speck: removed (< 8)
    out = clean(CleanInput(tissue=tissue))
    expected = np.zeros((12, 12), dtype=bool)
    expected[1:9, 1:9] = True
    assert np.array_equal(out.tissue, expected)
    assert (out.removed_components, out.removed_cells) == (1, 1)
    assert (out.filled_holes, out.filled_cells) == (1, 4)
    assert out.changed.sum() == 5
    assert out.changed[10, 10] and out.changed[4, 4]


def test_clean_island_inside_hole_makes_the_hole_whole():
    tissue = grid("#######\n#.....#\n#..#..#\n#.....#\n#######")
    out = clean(CleanInput(tissue=tissue, min_tissue_patches=2, max_hole_patches=16))
    assert out.tissue.all()
    assert out.removed_components == 1 and out.filled_holes == 1


def test_clean_rejects_non_grid():
    with pytest.raises(ValueError, match="2-D"):
        clean(CleanInput(tissue=np.zeros(5, dtype=bool)))


KEEP_LARGEST_CASES = [
    # (name, grid, expected with keep_largest, removed)
    (
        "a biopsy in pieces of 5, 2 and 1 keeps its largest piece",
        "###.#\n##..#\n.....\n#....",
        "###..\n##...\n.....\n.....",
        2,
    ),
    (
        "a large component makes the rule a no-op",
        "#########\n.........\n##.......",
        "#########\n.........\n.........",
        1,
    ),
    ("empty grid stays empty", "...\n...", "...\n...", 0),
]


@pytest.mark.parametrize(("name", "before", "after", "removed"), KEEP_LARGEST_CASES)
def test_keep_largest_never_erases_the_slide(name: str, before: str, after: str, removed: int):
    out, count = remove_small_components(grid(before), 8, 4, keep_largest=True)
    assert np.array_equal(out, grid(after)), name
    assert count == removed, name
    # The paper's rule, for contrast, erases the fragmented biopsy whole.
    if name.startswith("a biopsy"):
        assert not remove_small_components(grid(before), 8, 4)[0].any()
