"""Spatial groups of 9 spots for contextual gene reconstruction (CGR, METHOD.md §4): a centre spot and its 8
nearest spots on the array grid, partitioning a slide into non-overlapping groups.

The release partitions greedily but leaves the order unstated; we pin a deterministic rule:

1. Positions in pitch units: hexagonal Visium (array_col steps by 2 within a row, odd rows offset) maps to
   x = col / 2, y = row * sqrt(3) / 2; square legacy ST to x = col, y = row. Every tie (equal distance,
   equal centrality) is broken by (array_row, array_col, then input index), so the groups do not depend on
   the order of the spots in the input.
2. Pass 1 (ideal groups): every spot is a candidate centre, in order of centrality (sum of distances to its
   8 nearest spots, ascending). A candidate makes a group iff it and its
   8 nearest spots are all still unclaimed. On a full square grid this tiles the slide with 3x3 blocks.
3. Pass 2 (leftovers): the unclaimed spots, in the same centrality order recomputed among themselves; each
   unclaimed candidate takes its (up to) 8 nearest unclaimed spots. Groups with fewer than ``min_members``
   spots keep -1 for the missing neighbours or, below that, are not formed.
4. A group whose largest pairwise distance (pitch units) exceeds ``max_spread`` is dropped (its spots stay
   available to later candidates).

Every group lists its centre first, then its members by distance to the centre; each member is among the
centre's nearest spots not claimed by an earlier group.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

GROUP_SIZE = 9
_ROUND = 9  # decimals: distances equal up to float noise count as ties
_TIE_EXTRA = 16  # beyond k: covers a full ring of equidistant spots on hex (6) and square (8) grids


def grid_positions(array_row, array_col, grid: str) -> np.ndarray:
    """float64 [n, 2] (x, y) in units of the spot pitch."""
    row = np.asarray(array_row, dtype=np.float64)
    col = np.asarray(array_col, dtype=np.float64)
    if grid == "hex":
        return np.stack([col * 0.5, row * (np.sqrt(3.0) / 2.0)], axis=1)
    if grid == "square":
        return np.stack([col, row], axis=1)
    raise ValueError(f"grid must be 'hex' or 'square', got {grid!r}")


def _sorted_knn(tree: cKDTree, query: np.ndarray, k: int, tie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours ordered by (distance, tie[index]), so ties are deterministic. Queries extra
    neighbours first: which of several equidistant spots the tree returns at the k-th place is arbitrary."""
    kq = min(tree.n, k + _TIE_EXTRA)
    d, idx = tree.query(query, k=kq)
    d, idx = d.reshape(-1, kq), idx.reshape(-1, kq)
    order = np.lexsort((tie[idx], np.round(d, _ROUND)), axis=-1)[:, :k]
    return np.take_along_axis(d, order, -1), np.take_along_axis(idx, order, -1)


def _grid_rank(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Rank of each spot in (array_row, array_col, index) order: the tie-breaker, so that groups do not
    depend on the order of spots in the input file."""
    rank = np.empty(len(row), np.int64)
    rank[np.lexsort((np.arange(len(row)), col, row))] = np.arange(len(row))
    return rank


def _centrality_order(pos: np.ndarray, tie: np.ndarray) -> np.ndarray:
    k = min(len(pos), GROUP_SIZE)
    d, _ = _sorted_knn(cKDTree(pos), pos, k, tie)
    score = np.round(d.sum(axis=1), 6)
    return np.lexsort((tie, score))


def spatial_groups(array_row, array_col, grid: str, max_spread: float = 10.0,
                   min_members: int = 5) -> np.ndarray:
    """int64 [G, 9]: centre first, then neighbours by distance; indices into the given spots, -1 where a
    group has fewer than 9 spots. Pass only the spots to be grouped (e.g. in-tissue, non-empty)."""
    row = np.asarray(array_row, dtype=np.float64).ravel()
    col = np.asarray(array_col, dtype=np.float64).ravel()
    if row.shape != col.shape:
        raise ValueError(f"array_row and array_col differ in length: {row.shape} vs {col.shape}")
    n = len(row)
    if n == 0:
        return np.zeros((0, GROUP_SIZE), np.int64)
    pos = grid_positions(row, col, grid)
    tie = _grid_rank(row, col)
    claimed = np.zeros(n, bool)
    groups: list[np.ndarray] = []

    def accept(members: np.ndarray) -> bool:
        if len(members) > 1 and pdist(pos[members]).max() > max_spread + 1e-9:
            return False
        claimed[members] = True
        groups.append(members)
        return True

    # pass 1: candidates whose own 8 nearest spots are all free
    if n >= GROUP_SIZE:
        _, nn = _sorted_knn(cKDTree(pos), pos, GROUP_SIZE, tie)
        # the spot itself first even where another spot shares its position
        self_first = np.argsort(nn != np.arange(n)[:, None], axis=1, kind="stable")
        nn = np.take_along_axis(nn, self_first, 1)
        for i in _centrality_order(pos, tie):
            if not claimed[i] and not claimed[nn[i]].any():
                accept(nn[i])

    # pass 2: leftovers take their nearest free spots
    left = np.flatnonzero(~claimed)
    if len(left) >= min_members:
        lpos = pos[left]
        tree = cKDTree(lpos)
        free = np.ones(len(left), bool)
        ltie = tie[left]
        for j in _centrality_order(lpos, ltie):
            if not free[j]:
                continue
            k = min(len(left), 4 * GROUP_SIZE)
            while True:
                _, cand = _sorted_knn(tree, lpos[j], k, ltie)
                cand = cand[0]
                cand = np.concatenate([[j], cand[(cand != j) & free[cand]]])[:GROUP_SIZE]
                if len(cand) == GROUP_SIZE or k == len(left):
                    break
                k = min(len(left), 4 * k)
            if len(cand) < min_members:
                continue
            if accept(left[cand]):
                free[cand] = False

    out = np.full((len(groups), GROUP_SIZE), -1, np.int64)
    for g, members in enumerate(groups):
        out[g, : len(members)] = members
    return out
