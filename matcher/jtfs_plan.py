"""The JTFS filter plan: every filter, path and size the transform needs, in numpy only.

:func:`plan_jtfs` turns a :class:`JTFSConfig` into a frozen :class:`JTFSPlan`
(kymatio's split of filter design from the backend that applies it);
:class:`matcher.jtfs.JTFS` registers its arrays as buffers and applies them.
Nothing here imports torch. Filters are kymatio 0.3.0's Morlets; a product with
a filter followed by dyadic subsampling is planned as a gather of the filter's
support (:class:`GatherPlan`), the frequential stage of a stack as two linear
maps along ``n1`` (:class:`FreqMaps`). :mod:`matcher.jtfs` describes the transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from kymatio.scattering1d.filter_bank import (compute_params_filterbank,
                                              compute_temporal_support, gauss_1d,
                                              get_max_dyadic_subsampling, morlet_1d)
from kymatio.scattering1d.utils import compute_border_indices

__all__ = ["JTFSConfig", "JTFSPlan", "GatherPlan", "FreqMaps", "Order2Plan", "plan_jtfs",
           "path_meta"]

SIGMA0, ALPHA, R_PSI = 0.1, 5.0, math.sqrt(0.5)   # kymatio's filter-bank constants


@dataclass(frozen=True)
class JTFSConfig:
    """One JTFS configuration (kymatio's names and units).

    Attributes
    ----------
    N : int
        Input length in samples.
    J, Q1, Q2 : int
        Octaves and wavelets per octave of the first- and second-order filters.
    J_fr, Q_fr : int
        Octaves and wavelets per octave of the frequential wavelets (along ``n1``).
    F : int or "global"
        Frequential averaging support in first-order bins (2 octaves = ``2 * Q1``).
    T : int or "global"
        Temporal averaging: a sum over all time (one number per path), or a
        low-pass of support ``T`` samples (``[P, frames]`` per sound, stride
        ``2**floor(log2 T)``; needs ``T >= 2**j2`` of every second-order filter used).
    sr : float
        Sample rate in Hz (used only for ``meta()`` frequencies in Hz).
    eps : float
        Scale of ``Phi = log1p(S / eps)``.
    prune : float
        Relative weight below which a frequential output row is dropped.
    """

    N: int = 2**16
    J: int = 13
    Q1: int = 12
    Q2: int = 1
    J_fr: int = 4
    Q_fr: int = 1
    F: int | str = 24
    T: int | str = "global"
    sr: float = 22050.0
    eps: float = 1e-3
    prune: float = 1e-9

    def __post_init__(self) -> None:
        for name in ("N", "J", "Q1", "Q2", "J_fr", "Q_fr"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"JTFS {name} = {value!r}: allowed integers >= 1")
        if self.N < 2**self.J:
            raise ValueError(f"JTFS N = {self.N} is shorter than 2**J = {2**self.J}: "
                             f"allowed N >= 2**J")
        if not (self.F == "global" or (isinstance(self.F, int) and self.F >= 1)):
            raise ValueError(f"JTFS F = {self.F!r}: allowed an integer >= 1 (first-order "
                             f"bins) or 'global'")
        if not (self.T == "global" or (isinstance(self.T, int) and 1 <= self.T <= self.N)):
            raise ValueError(f"JTFS T = {self.T!r}: allowed an integer in 1..N = {self.N} "
                             f"(samples) or 'global'")
        if not (self.eps > 0 and self.sr > 0 and 0 <= self.prune < 1e-3):
            raise ValueError(f"JTFS eps = {self.eps}, sr = {self.sr}, prune = {self.prune}: "
                             f"allowed eps > 0, sr > 0, 0 <= prune < 1e-3")

    @property
    def t_samples(self) -> int:
        """Support of the temporal low-pass in samples (``2**J`` when global, as kymatio)."""
        return 2**self.J if self.T == "global" else int(self.T)

    @classmethod
    def reference(cls, n_samples: int = 2**16, sr: float = 22050.0) -> "JTFSConfig":
        """Tympan's reference (J=13, Q=(12, 1), Q_fr=1, F=2 octaves) for ``n_samples``-long
        input at ``sr`` Hz (default 2**16 samples at 22050 Hz)."""
        return cls(N=n_samples, sr=sr)


@dataclass(frozen=True, eq=False)
class GatherPlan:
    """``fold(X * f, 2**k) = sum_K X[..., idx] * coef`` (kymatio's subsample_fourier).

    Attributes
    ----------
    idx : np.ndarray, int64, ``[n, K, L / 2**k]`` (a bank) or ``[K, L / 2**k]`` (one filter)
        Input bins (of ``L``) each output bin sums; ``K`` is the most any output receives.
    coef : np.ndarray, float64, same shape
        ``f[idx] / 2**k``, 0 in unused slots.
    """

    idx: np.ndarray
    coef: np.ndarray


@dataclass(frozen=True, eq=False)
class FreqMaps:
    """Frequency scattering of one stack ``y`` ``[n1_max, t]``: ``A @ sum_t |W y|``.

    Attributes
    ----------
    W : np.ndarray, float64, ``[2R, 2 n1_max]``
        Every (frequential filter, subsampled row) kept, a complex ``[R, n1_max]``
        matrix in real block form ``[[Re, -Im], [Im, Re]]``.
    A : np.ndarray, float64, ``[P_block, R]``
        Averaging by ``phi_F``, unpadding and selection to the block's output paths.
    """

    W: np.ndarray
    A: np.ndarray


@dataclass(frozen=True, eq=False)
class Order2Plan:
    """The second-order stack of one ``psi2`` (``n2``): ``Y2(n1, t)`` for ``j1 < j2``.

    Attributes
    ----------
    n2, j2, n1_max : int
        Filter index, its subsampling (log2 of the stride), and how many first-order
        filters have ``j1 < j2`` (the first ones: ``j1`` grows with ``n1``).
    psi2 : tuple of GatherPlan
        ``psi2`` periodized to each first-order group ``j1 < j2``, subsampled by ``2**(j2 - j1)``.
    freq : FreqMaps
    phi_t : GatherPlan or None
        ``phi_T`` at resolution ``j2`` (local ``T`` only).
    """

    n2: int
    j2: int
    n1_max: int
    psi2: tuple[GatherPlan, ...]
    freq: FreqMaps
    phi_t: GatherPlan | None


@dataclass(frozen=True, eq=False)
class JTFSPlan:
    """Everything :class:`matcher.jtfs.JTFS` applies, built once by :func:`plan_jtfs`.

    Arrays are float64 (filters, maps) or int64 (indices); treat them as read-only
    (the module's buffers share their memory).

    Attributes
    ----------
    config : JTFSConfig
    n_pad, pad_left, pad_right, n_fr : int
        Padded length and reflect padding (samples); padded length of the ``n1`` axis.
    frames : (int, int) or None
        Time frames kept after unpadding, at stride ``2**floor(log2 T)``; None for global ``T``.
    groups1 : tuple of int
        First-order subsamplings ``j1``, ascending; each group is a contiguous run of ``n1``.
    phi0 : GatherPlan or None
        ``phi_T`` at full resolution for order 0 (local ``T`` only).
    psi1, phi1 : tuple of GatherPlan
        Per group: its first-order bank subsampled by ``2**j1`` ``[n, K, L]``, and ``phi_T``
        at resolution ``j1`` subsampled to ``2**log2_t``.
    freq1 : FreqMaps
        Order 1 (spin 0 and up only).
    order2 : tuple of Order2Plan
    perm : np.ndarray, int64, ``[P]``
        Output column ``i`` is the ``perm[i]``-th path as computed (order 0, 1, then 2).
    paths : tuple of dict
        One per output column, in output order (``order``, ``n1``, ``n2``, ``n_fr``, ...).
    psi1_meta, psi2_meta : tuple of (xi, sigma, j)
        Centre frequency (cycles/sample), width and subsampling of each temporal filter.
    """

    config: JTFSConfig
    n_pad: int
    pad_left: int
    pad_right: int
    n_fr: int
    frames: tuple[int, int] | None
    groups1: tuple[int, ...]
    phi0: GatherPlan | None
    psi1: tuple[GatherPlan, ...]
    phi1: tuple[GatherPlan, ...]
    freq1: FreqMaps
    order2: tuple[Order2Plan, ...]
    perm: np.ndarray
    paths: tuple[dict[str, Any], ...]
    psi1_meta: tuple[tuple[float, float, int], ...]
    psi2_meta: tuple[tuple[float, float, int], ...]

    @property
    def local(self) -> bool:
        """True with a local ``T`` (time frames kept)."""
        return self.frames is not None

    @property
    def n_paths(self) -> int:
        return len(self.paths)

    def meta(self) -> dict[str, np.ndarray]:
        """What each output column is: see :func:`path_meta`."""
        return path_meta(self.paths, self.psi1_meta, self.psi2_meta, self.config.sr)


def _fold(h: np.ndarray, k: int) -> np.ndarray:
    """Periodize a Fourier filter to length ``len(h) / 2**k`` (kymatio: sum of periods)."""
    return h.reshape(2**k, -1).sum(axis=0)


def _gather_fold(f: np.ndarray, k: int, tol: float = 1e-9) -> GatherPlan:
    """Plan ``fold(X * f, 2**k)`` (kymatio's subsample_fourier: mean of the periods) as a gather.

    Only bins where ``|f|`` exceeds ``tol`` times its peak contribute, and a
    band-pass filter's support is narrow: output bin ``m`` receives the few
    support bins ``b`` with ``b = m (mod L / 2**k)``. ``f`` is ``[n, L]`` (a bank)
    or ``[L]`` (one filter, giving a plan without the leading axis).
    """
    one = f.ndim == 1
    f = np.atleast_2d(f)
    n, length = f.shape
    out = length >> k
    supports = [np.flatnonzero(np.abs(row) > tol * np.abs(row).max()) for row in f]
    depth = max(int(np.bincount(b % out).max()) for b in supports)
    idx = np.zeros((n, depth, out), np.int64)
    coef = np.zeros((n, depth, out), f.dtype)
    for i, bins in enumerate(supports):
        res = bins % out
        order = np.argsort(res, kind="stable")
        bins, res = bins[order], res[order]
        slot = np.arange(len(res)) - np.searchsorted(res, res)       # rank within its residue
        idx[i, slot, res] = bins
        coef[i, slot, res] = f[i, bins] / 2**k
    return GatherPlan(idx[0], coef[0]) if one else GatherPlan(idx, coef)


def _padding(cfg: JTFSConfig) -> tuple[int, int, int]:
    """Padded length and left/right reflect padding, as kymatio's 1-D frontend."""
    phi = gauss_1d(cfg.N, SIGMA0 / cfg.t_samples)
    min_to_pad = 3 * compute_temporal_support(phi.reshape(1, -1), criterion_amplitude=1e-3)
    j_pad = min(int(np.ceil(np.log2(cfg.N + 2 * min_to_pad))),
                int(np.floor(np.log2(3 * cfg.N - 2))))
    n_pad = 2**j_pad
    left = (n_pad - cfg.N) // 2
    return n_pad, left, n_pad - cfg.N - left


def _bank(J: int, Q: int, n: int, signed: bool = False) -> list[dict[str, Any]]:
    """Morlet filters (Fourier, length ``n``) of kymatio's design; both spins if ``signed``."""
    xis, sigmas, _ = compute_params_filterbank(SIGMA0 / 2**J, Q, ALPHA, R_PSI)
    pairs = list(zip(xis, sigmas))
    if signed:
        pairs += [(-xi, s) for xi, s in zip(xis, sigmas)]
    return [{"xi": xi, "sigma": s, "j": get_max_dyadic_subsampling(abs(xi), s, ALPHA),
             "f": morlet_1d(n, xi, s)} for xi, s in pairs]


def _freq_maps(n1_max: int, n_fr: int, psis: list[dict], phi_f: dict, log2_f: int | None,
               prune: float) -> tuple[FreqMaps, list[dict[str, Any]]]:
    """The linear maps of frequency scattering along ``n1`` (zero-padded to ``n_fr``).

    Returns the :class:`FreqMaps` of a stack of ``n1_max`` rows and one path
    (``n1`` of its lowest bin, ``n_fr``, ``spin``, ...) per row of ``A``.
    """
    w_rows, a_blocks, paths = [], [], []
    for idx, psi in enumerate(psis):
        j_fr, spin = psi["j"], int(np.sign(psi["xi"]))
        k_fr = min(j_fr, log2_f) if log2_f is not None else j_fr
        step = 2**k_fr
        h = np.fft.ifft(psi["f"])                          # impulse response along n1
        rows = np.arange(0, n_fr, step)
        w = h[(rows[:, None] - np.arange(n1_max)[None, :]) % n_fr]   # [n_fr/step, n1_max]
        if spin != 0 and phi_f["kind"] == "local":
            k_j = log2_f - k_fr
            g = np.fft.ifft(_fold(phi_f["f"], k_fr)).real     # low-pass at this resolution
            length = n_fr // step
            q = np.arange(0, length, 2**k_j)              # positions kept by the stride
            a = g[(q[:, None] - np.arange(length)[None, :]) % length]
            stride = 2**log2_f
        elif spin != 0 and phi_f["kind"] == "global":
            a = np.ones((1, len(rows)))
            stride = n1_max
        else:                                             # spin 0 or no averaging
            a = np.eye(len(rows))
            stride = 2**max(j_fr, 0)
        keep_out = np.arange(a.shape[0])[np.arange(a.shape[0]) * stride < n1_max]
        a = a[keep_out]
        # Drop rows of W whose weights are negligible: they add ~0 to every output.
        mag = np.abs(w).max(axis=1)
        live = mag > prune * mag.max()
        w_rows.append(w[live])
        a_blocks.append(a[:, live])
        for q_out in keep_out:
            paths.append({"n1": int(q_out * stride), "n_fr": idx, "spin": spin,
                          "xi_fr": psi["xi"], "sigma_fr": psi["sigma"], "j_fr": j_fr})
    w = np.concatenate(w_rows, axis=0)
    # Real block form [[Re, -Im], [Im, Re]]: complex products as one real matmul.
    big_w = np.block([[w.real, -w.imag], [w.imag, w.real]])
    big_a = np.zeros((sum(b.shape[0] for b in a_blocks), w.shape[0]))
    r = p = 0
    for block in a_blocks:
        big_a[p:p + block.shape[0], r:r + block.shape[1]] = block
        r += block.shape[1]
        p += block.shape[0]
    return FreqMaps(np.ascontiguousarray(big_w), big_a), paths


def plan_jtfs(cfg: JTFSConfig) -> JTFSPlan:
    """Design every filter and path of the JTFS of ``cfg`` (numpy only, deterministic).

    Raises
    ------
    ValueError
        Where ``cfg`` is valid on its own but not for this design: ``N`` too short
        for the reflect padding, a local ``T`` shorter than a filter's subsampling,
        more first-order filters than the frequential padding.
    """
    n_pad, pad_left, pad_right = _padding(cfg)
    if max(pad_left, pad_right) >= cfg.N:
        raise ValueError(f"JTFS N = {cfg.N} too short for J = {cfg.J}: reflect padding "
                         f"needs N > {max(pad_left, pad_right)}")
    log2_t = int(math.floor(math.log2(cfg.t_samples)))
    psi1 = _bank(cfg.J, cfg.Q1, n_pad)
    psi2 = _bank(cfg.J, cfg.Q2, n_pad)
    phi_t = gauss_1d(n_pad, SIGMA0 / cfg.t_samples)
    local = cfg.T != "global"
    j1_max = max(p["j"] for p in psi1)
    j2_max = max((p["j"] for p in psi2 if p["j"] > min(q["j"] for q in psi1)), default=0)
    if local and log2_t < max(j1_max, j2_max):
        raise ValueError(f"JTFS T = {cfg.T}: local averaging needs T >= "
                         f"2**{max(j1_max, j2_max)} (the coarsest filter's subsampling); "
                         f"pass a larger T or T='global'")
    frames, phi0 = None, None
    if local:
        # Time frames kept after unpadding (kymatio's border indices at stride 2**log2_t).
        start, end = compute_border_indices(log2_t, cfg.J, pad_left, pad_left + cfg.N)
        frames = (start[log2_t], end[log2_t])
        phi0 = _gather_fold(phi_t, log2_t)

    # Frequential filters, as kymatio's JTFS frontend pads and builds them.
    f_bins = cfg.F if cfg.F != "global" else 2**cfg.J_fr
    n_in_fr = (cfg.J + 1) * cfg.Q1
    n_fr = (n_in_fr + 8 * min(f_bins, 2**cfg.J_fr)) // 2**cfg.J_fr * 2**cfg.J_fr
    if len(psi1) > n_fr:
        raise ValueError(f"JTFS: {len(psi1)} first-order filters exceed the frequential "
                         f"padding {n_fr}; raise J or lower Q1")
    log2_f = int(math.floor(math.log2(f_bins))) if cfg.F != "global" else None
    phi_fr = {"kind": "global" if cfg.F == "global" else "local",
              "f": gauss_1d(n_fr, SIGMA0 / f_bins)}
    low_fr = {"xi": 0.0, "sigma": SIGMA0 / 2**cfg.J_fr, "j": cfg.J_fr,
              "f": gauss_1d(n_fr, SIGMA0 / 2**cfg.J_fr)}
    psis_fr = [low_fr] + _bank(cfg.J_fr, cfg.Q_fr, n_fr, signed=True)
    # kymatio's unspinned case keeps xi >= 0 and enumerates what remains.
    up_fr = [p for p in psis_fr if p["xi"] >= 0]

    # First order, grouped by subsampling j1 (one batched FFT per group).
    j1s = np.array([p["j"] for p in psi1])
    if not np.all(np.diff(j1s) >= 0):   # groups must be contiguous runs of n1
        raise ValueError("JTFS: first-order subsamplings must grow with n1")
    groups1 = tuple(sorted(set(j1s.tolist())))
    psi1_g, phi1_g = [], []
    for j in groups1:
        psi1_g.append(_gather_fold(np.stack([psi1[i]["f"] for i in np.flatnonzero(j1s == j)]), j))
        # phi_T at resolution j, to average U1 down to stride 2**log2_t (S1 of order 1)
        phi1_g.append(_gather_fold(_fold(phi_t, j), log2_t - j))

    # Order 1: frequency scattering of S1 [n1 = all, t = n_pad / 2**log2_t].
    freq1, paths1 = _freq_maps(len(psi1), n_fr, up_fr, phi_fr, log2_f, cfg.prune)
    paths = [{"order": 0, "n1": -1, "n2": -1, "n_fr": -1, "spin": 0}]
    paths += [{"order": 1, "n2": -1, **p} for p in paths1]

    # Order 2: per psi2 with at least one j1 < j2.
    order2 = []
    for n2, p2 in enumerate(psi2):
        n1_max = int(np.sum(j1s < p2["j"]))
        if n1_max == 0:
            continue
        freq, paths2 = _freq_maps(n1_max, n_fr, psis_fr, phi_fr, log2_f, cfg.prune)
        order2.append(Order2Plan(
            n2=n2, j2=p2["j"], n1_max=n1_max,
            psi2=tuple(_gather_fold(_fold(p2["f"], j), p2["j"] - j)
                       for j in groups1 if j < p2["j"]),
            freq=freq,
            phi_t=_gather_fold(_fold(phi_t, p2["j"]), log2_t - p2["j"]) if local else None))
        paths += [{"order": 2, "n2": n2, **p} for p in paths2]

    # Sort columns as kymatio's meta(): (len(n), n) with n = (n1, [n2,] n_fr).
    def key(p: dict) -> tuple:
        if p["order"] == 0:
            return (0,)
        if p["order"] == 1:
            return (1, p["n1"], p["n_fr"])
        return (2, p["n1"], p["n2"], p["n_fr"])

    order = sorted(range(len(paths)), key=lambda i: key(paths[i]))
    return JTFSPlan(
        config=cfg, n_pad=n_pad, pad_left=pad_left, pad_right=pad_right, n_fr=n_fr,
        frames=frames, groups1=groups1, phi0=phi0, psi1=tuple(psi1_g), phi1=tuple(phi1_g),
        freq1=freq1, order2=tuple(order2), perm=np.array(order, dtype=np.int64),
        paths=tuple(paths[i] for i in order),
        psi1_meta=tuple((p["xi"], p["sigma"], p["j"]) for p in psi1),
        psi2_meta=tuple((p["xi"], p["sigma"], p["j"]) for p in psi2))


def path_meta(paths: tuple[dict[str, Any], ...], psi1_meta: tuple, psi2_meta: tuple,
              sr: float) -> dict[str, np.ndarray]:
    """What each output column is (arrays of length ``P``).

    Keys: ``order`` (0, 1, 2); ``n1`` (first-order filter index of the
    column's lowest bin, -1 for order 0); ``n2``; ``n_fr``; ``spin``
    (+1 up, -1 down, 0 low-pass); ``xi1_hz``, ``xi2_hz`` (centre
    frequencies in Hz, NaN where absent); ``xi_fr`` (cycles per
    first-order bin); ``j_fr``; ``key`` (kymatio's path tuple).
    """
    get = lambda k, d=-1: np.array([r.get(k, d) for r in paths])  # noqa: E731
    n1, n2 = get("n1"), get("n2")
    xi1 = np.array([psi1_meta[i][0] * sr if i >= 0 else np.nan for i in n1])
    xi2 = np.array([psi2_meta[i][0] * sr if i >= 0 else np.nan for i in n2])
    keys = np.empty(len(paths), dtype=object)
    for i, r in enumerate(paths):
        keys[i] = () if r["order"] == 0 else ((r["n1"], r["n_fr"]) if r["order"] == 1
                                              else (r["n1"], r["n2"], r["n_fr"]))
    return {"order": get("order"), "n1": n1, "n2": n2, "n_fr": get("n_fr"),
            "spin": get("spin", 0), "xi1_hz": xi1, "xi2_hz": xi2,
            "xi_fr": get("xi_fr", np.nan).astype(float),
            "j_fr": get("j_fr"), "key": keys}
