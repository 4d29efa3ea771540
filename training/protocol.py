"""The reference protocol: a grid of cells over ``nu``, one sound per cell, splits.

Every parameter's normalized axis ``[-1, 1]`` (see :mod:`synth.params`) is cut
into ``cells`` equal intervals, so the grid has ``cells**5`` cells. Each cell
gets one point drawn uniformly inside it (uniform in ``nu``, i.e. log-uniform
in the log-scaled parameters, as the design's sampling scales say). The splits:

- ``val``: the ``val_central**5`` central cells (cell index
  ``(cells - val_central) / 2 .. (cells + val_central) / 2 - 1`` on every
  axis; indices 2..7 of 0..9 in the reference protocol);
- ``test``: ``n_test`` of the other cells, chosen at random with the seed;
- ``train``: all remaining cells.

Reference sizes: 82224 / 7776 / 10000 of 100000 cells.

Cell ids are flat C-order indices of the per-axis cell indices in
:data:`synth.params.NAMES` order (``f0`` most significant, ``alpha`` least).
All random draws are made once for the whole grid from
``numpy.random.SeedSequence(seed)``, so a cell's point does not depend on which
cells are asked for, or in what order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from synth.params import nu_to_theta

__all__ = ["Protocol", "SPLITS"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
_DIM = 5


@dataclass(frozen=True)
class Protocol:
    """Frozen configuration of the grid and its splits; the arrays derive from it.

    Parameters
    ----------
    cells : int
        Cells per parameter axis (reference 10); the grid has ``cells**5`` cells.
    seed : int
        Seed of the in-cell draws and of the choice of test cells (reference 0).
    val_central : int
        Central cells per axis forming the validation block (reference 6);
        ``cells - val_central`` must be even so that the block is centred.
    n_test : int
        Number of test cells, drawn from the cells outside the validation block
        (reference 10000).

    Examples
    --------
    >>> p = Protocol()
    >>> p.sizes
    {'train': 82224, 'val': 7776, 'test': 10000}
    >>> p.theta("val").shape
    (7776, 5)
    """

    cells: int = 10
    seed: int = 0
    val_central: int = 6
    n_test: int = 10_000

    def __post_init__(self) -> None:
        for name in ("cells", "seed", "val_central", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"Protocol.{name} = {value!r}: allowed integers")
        if not 1 <= self.cells <= 64:
            raise ValueError(f"Protocol.cells = {self.cells}: allowed 1..64 cells per axis")
        if self.seed < 0:
            raise ValueError(f"Protocol.seed = {self.seed}: allowed integers >= 0")
        if not 0 <= self.val_central <= self.cells or (self.cells - self.val_central) % 2:
            raise ValueError(f"Protocol.val_central = {self.val_central}: allowed 0..{self.cells} "
                             f"with cells - val_central even (a centred block)")
        free = self.cells**_DIM - self.val_central**_DIM
        if not 0 <= self.n_test <= free:
            raise ValueError(f"Protocol.n_test = {self.n_test}: allowed 0..{free} (the cells "
                             f"outside the {self.val_central}^5 validation block)")

    # -- structure ---------------------------------------------------------------

    @property
    def n_cells(self) -> int:
        """Number of cells, ``cells**5``."""
        return self.cells**_DIM

    @property
    def sizes(self) -> dict[str, int]:
        """Number of cells in each split, ``{"train": ..., "val": ..., "test": ...}``."""
        n_val = self.val_central**_DIM
        return {"train": self.n_cells - n_val - self.n_test, "val": n_val, "test": self.n_test}

    def to_dict(self) -> dict[str, int]:
        """The configuration as plain ints (for file headers)."""
        return {k: int(v) for k, v in asdict(self).items()}

    def cell_index(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per-axis cell indices of cell ids: ``[n]`` -> ``[n, 5]`` int64 in ``0..cells-1``."""
        ids = self._check_ids(ids)
        return np.stack(np.unravel_index(ids, (self.cells,) * _DIM), axis=-1).astype(np.int64)

    def cell_bounds(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ``nu`` edges of cells, each ``[n, 5]`` float64."""
        idx = self.cell_index(ids)
        width = 2.0 / self.cells
        return -1.0 + idx * width, -1.0 + (idx + 1) * width

    # -- splits ------------------------------------------------------------------

    def split_indices(self, split: str) -> np.ndarray:
        """Sorted cell ids of a split, ``[n]`` int64 (a copy: safe to modify)."""
        return self._splits[_check_split(split)].copy()

    def subset(self, split: str, k: int) -> np.ndarray:
        """The seeded ``k``-cell subset of a split that a run with ``n_train``/``n_val`` = k
        uses, sorted ``[k]`` int64; the whole split when ``k`` is 0 or not smaller."""
        ids = self.split_indices(split)
        if k and k < len(ids):
            rng = np.random.default_rng([self.seed, 7919, len(split)])
            ids = np.sort(rng.choice(ids, size=k, replace=False))
        return ids

    def nu(self, which: str | Sequence[int] | np.ndarray) -> np.ndarray:
        """Normalized coordinates of a split's (or cell ids') points, ``[n, 5]`` float64.

        Each point lies strictly inside its cell: ``lo < nu < hi`` per axis.
        """
        ids = self.split_indices(which) if isinstance(which, str) else self._check_ids(which)
        return self._nu_all[ids]

    def theta(self, which: str | Sequence[int] | np.ndarray) -> np.ndarray:
        """Physical parameters ``(f0 Hz, tau s, p, D, alpha)`` of the points, ``[n, 5]``."""
        return nu_to_theta(self.nu(which))

    # -- the draws, made once per instance ------------------------------------------

    @cached_property
    def _nu_all(self) -> np.ndarray:
        offsets_seed, _ = np.random.SeedSequence(self.seed).spawn(2)
        rng = np.random.Generator(np.random.PCG64(offsets_seed))
        # (k + 1/2) / 2^52 is exact and lies strictly in (0, 1): a point is never
        # on a cell edge, so alpha (whose nu = -1 is alpha = 0) is always > 0.
        k = rng.integers(0, 2**52, size=(self.n_cells, _DIM), dtype=np.int64)
        u = (k.astype(np.float64) + 0.5) / 2.0**52
        idx = self.cell_index(np.arange(self.n_cells))
        nu = -1.0 + (idx + u) * (2.0 / self.cells)
        nu.setflags(write=False)
        return nu

    @cached_property
    def _splits(self) -> dict[str, np.ndarray]:
        _, test_seed = np.random.SeedSequence(self.seed).spawn(2)
        idx = self.cell_index(np.arange(self.n_cells))
        start = (self.cells - self.val_central) // 2
        central = np.all((idx >= start) & (idx < start + self.val_central), axis=1)
        val = np.flatnonzero(central)
        others = np.flatnonzero(~central)
        rng = np.random.Generator(np.random.PCG64(test_seed))
        test = np.sort(rng.choice(others, size=self.n_test, replace=False))
        train = np.setdiff1d(others, test, assume_unique=True)
        return {"train": train.astype(np.int64), "val": val.astype(np.int64),
                "test": test.astype(np.int64)}

    def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"cell ids must be a 1-d integer array; got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_cells):
            bad = arr[(arr < 0) | (arr >= self.n_cells)][0]
            raise ValueError(f"cell id {bad} is out of range; allowed 0..{self.n_cells - 1}")
        return arr


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return split
