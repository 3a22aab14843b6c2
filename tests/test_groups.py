"""Spatial groups for CGR: distinct, disjoint members; the centre's neighbours are its nearest free spots;
the spread rule; hexagonal and square grids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from stamp_st.preprocessing.groups import grid_positions, spatial_groups


def hex_grid(n_rows=40, n_cols=64):
    rows, cols = [], []
    for r in range(n_rows):
        for c in range(r % 2, n_cols, 2):  # Visium: col steps by 2, odd rows shifted by one
            rows.append(r)
            cols.append(c)
    return np.array(rows), np.array(cols)


def check_invariants(groups, pos, max_spread):
    members = groups[groups >= 0]
    assert len(np.unique(members)) == len(members), "a spot is in two groups or twice in one"
    assert (groups[:, 0] >= 0).all()
    claimed = np.zeros(len(pos), bool)
    for g in groups:
        m = g[g >= 0]
        assert pdist(pos[m]).max() <= max_spread + 1e-9
        d = np.linalg.norm(pos[m] - pos[m[0]], axis=1)
        assert np.all(np.diff(d) >= -1e-9), "members are listed by distance to the centre"
        # every member is at least as close to the centre as any spot that was still free
        free = ~claimed
        free[m] = False
        if free.any():
            d_free = np.linalg.norm(pos[free] - pos[m[0]], axis=1)
            assert d.max() <= d_free.min() + 1e-9
        claimed[m] = True


def test_square_grid_tiles_with_3x3_blocks():
    r, c = np.mgrid[0:30, 0:27]
    r, c = r.ravel(), c.ravel()
    groups = spatial_groups(r, c, "square")
    assert groups.shape == (90, 9) and (groups >= 0).all()
    assert len(np.unique(groups)) == len(r)
    for g in groups:  # each group is a 3x3 block centred on its first spot
        assert set(zip(r[g] - r[g[0]], c[g] - c[g[0]])) == {(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)}
    check_invariants(groups, grid_positions(r, c, "square"), 10)


def test_hex_grid_groups_are_compact_nearest_and_disjoint():
    r, c = hex_grid()
    pos = grid_positions(r, c, "hex")
    nn_dist = np.sort(np.linalg.norm(pos[:, None] - pos[None], axis=-1), axis=1)[:, 1]
    assert np.allclose(nn_dist, 1.0)  # the conversion gives unit pitch on a Visium grid
    groups = spatial_groups(r, c, "hex")
    check_invariants(groups, pos, 10)
    full = (groups >= 0).all(axis=1)
    assert full.mean() > 0.9
    # a full interior group: centre, its 6 touching neighbours, 2 of the next ring
    d = np.linalg.norm(pos[groups[full]] - pos[groups[full, :1]], axis=-1)
    assert np.isclose(d[:, 1:7], 1.0).all(1).mean() > 0.5
    # deterministic, and invariant to the input order
    np.testing.assert_array_equal(groups, spatial_groups(r, c, "hex"))
    perm = np.random.default_rng(0).permutation(len(r))
    g2 = spatial_groups(r[perm], c[perm], "hex")
    as_sets = lambda gs, ids: sorted(tuple(sorted(ids[x] for x in g if x >= 0)) for g in gs)  # noqa: E731
    assert as_sets(groups, np.arange(len(r))) == as_sets(g2, perm)


def test_spread_rule_and_partial_groups():
    # five spots in a line, 3 pitches apart: span 12
    r, c = np.zeros(5), np.arange(5) * 3.0
    assert spatial_groups(r, c, "square", max_spread=10).shape == (0, 9)
    g = spatial_groups(r, c, "square", max_spread=12)
    assert g.shape == (1, 9) and (g[0, 5:] == -1).all() and g[0, 0] == 2  # the middle spot is the centre
    assert spatial_groups(r, c, "square", max_spread=12, min_members=6).shape == (0, 9)


def test_sparse_tissue_respects_spread():
    r, c = hex_grid(30, 40)
    keep = np.random.default_rng(1).random(len(r)) < 0.3  # patchy tissue: groups would reach far
    pos = grid_positions(r[keep], c[keep], "hex")
    for spread in (3.0, 10.0):
        groups = spatial_groups(r[keep], c[keep], "hex", max_spread=spread)
        assert len(groups) > 0
        check_invariants(groups, pos, spread)


def test_bad_grid_and_empty():
    with pytest.raises(ValueError):
        spatial_groups([0], [0], "hexagonal")
    assert spatial_groups([], [], "hex").shape == (0, 9)
    assert spatial_groups([0, 0], [0, 2], "hex").shape == (0, 9)  # fewer than min_members
