"""The reference grid: split sizes, disjointness, determinism, points inside their cells."""

from __future__ import annotations

import numpy as np
import pytest

from synth.params import PARAMS, theta_to_nu
from training.protocol import SPLITS, Protocol

REF = Protocol()


def test_reference_sizes_and_partition():
    assert REF.sizes == {"train": 82224, "val": 7776, "test": 10000}
    ids = {s: REF.split_indices(s) for s in SPLITS}
    assert {s: len(v) for s, v in ids.items()} == REF.sizes
    for v in ids.values():
        assert v.dtype == np.int64 and np.all(np.diff(v) > 0)      # sorted, unique
    union = np.concatenate(list(ids.values()))
    assert len(union) == 10**5 and len(np.unique(union)) == 10**5  # disjoint and complete


def test_val_is_the_central_block_and_test_is_outside_it():
    val_idx = REF.cell_index(REF.split_indices("val"))
    assert val_idx.min() == 2 and val_idx.max() == 7
    for split in ("train", "test"):
        idx = REF.cell_index(REF.split_indices(split))
        assert not np.any(np.all((idx >= 2) & (idx <= 7), axis=1))


def test_each_theta_lies_inside_its_cell_and_in_range():
    ids = np.arange(REF.n_cells)
    lo, hi = REF.cell_bounds(ids)
    nu = REF.nu(ids)
    assert np.all((nu > lo) & (nu < hi))
    # The round trip through physical units costs a few ulps of nu.
    back = theta_to_nu(REF.theta(ids))
    assert np.all((back > lo - 1e-12) & (back < hi + 1e-12))
    theta = REF.theta(ids)
    for k, spec in enumerate(PARAMS):
        assert np.all(theta[:, k] > 0) and np.all(theta[:, k] <= spec.high * (1 + 1e-12))
        assert np.all(theta[:, k] >= spec.low * (1 - 1e-12))


def test_draws_do_not_depend_on_access_order_or_instance():
    ids = REF.split_indices("test")[::-97]              # unsorted, a subset
    fresh = Protocol()
    first = fresh.theta(ids)                            # this instance's first access
    np.testing.assert_array_equal(first, REF.theta("test")[::-97])
    np.testing.assert_array_equal(fresh.split_indices("test"), REF.split_indices("test"))
    np.testing.assert_array_equal(fresh.nu(ids[:5]), fresh.nu(ids)[:5])


def test_seed_changes_draws_and_test_cells():
    other = Protocol(seed=1)
    assert not np.array_equal(other.split_indices("test"), REF.split_indices("test"))
    np.testing.assert_array_equal(other.split_indices("val"), REF.split_indices("val"))
    assert not np.allclose(other.nu("val"), REF.nu("val"))


def test_tiny_variant():
    p = Protocol(cells=4, val_central=2, n_test=20)
    assert p.n_cells == 1024
    assert p.sizes == {"train": 1024 - 32 - 20, "val": 32, "test": 20}
    idx = p.cell_index(p.split_indices("val"))
    assert set(np.unique(idx)) == {1, 2}
    assert p.nu("train").shape == (972, 5) and p.theta("test").shape == (20, 5)


def test_returned_ids_are_copies():
    ids = REF.split_indices("val")
    ids[:] = 0
    assert REF.split_indices("val")[-1] > 0


@pytest.mark.parametrize("kwargs, text", [
    ({"cells": 0}, "Protocol.cells = 0: allowed 1..64"),
    ({"val_central": 5}, "cells - val_central even"),
    ({"n_test": 10**5}, "allowed 0..92224"),
    ({"seed": -1}, "allowed integers >= 0"),
    ({"cells": 4.0}, "allowed integers"),
])
def test_bad_config_is_named(kwargs, text):
    with pytest.raises(ValueError, match=text):
        Protocol(**kwargs)


def test_unknown_split_and_bad_ids_are_named():
    with pytest.raises(ValueError, match=r"unknown split 'validation'; allowed: train, val, test"):
        REF.nu("validation")
    with pytest.raises(ValueError, match=r"cell id 100000 is out of range; allowed 0..99999"):
        REF.theta([0, 100000])
    with pytest.raises(ValueError, match="1-d integer array"):
        REF.nu(np.zeros((2, 2), dtype=int))
