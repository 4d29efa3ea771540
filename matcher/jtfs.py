"""Joint time-frequency scattering (JTFS), batched and differentiable, in torch.

The same transform as kymatio's (unreleased) ``TimeFrequencyScattering`` with
``format='time'``: with ``T='global'`` every output path is one number per
sound; with a local ``T`` (samples) each path keeps its time frames, and
"sum over time" below becomes "low-pass by ``phi_T``, subsample, unpad".
Filters come from kymatio 0.3.0's Morlet filter-bank design (``morlet_1d``,
``gauss_1d``, ``compute_params_filterbank``, ``get_max_dyadic_subsampling``);
the layout, strides and paths follow kymatio's JTFS definition:

* order 0: ``sum_t x_pad(t)``;
* order 1: ``S1(n1, t) = (|x * psi1_n1| * phi_T)(t)``, then frequency scattering
  along ``n1`` (zero-padded to ``N_fr``) with the frequential low-pass
  ``phi_fr`` (spin 0) and the up-spin wavelets, modulus, sum over time;
* order 2: ``Y2(n1, t) = (|x * psi1_n1| * psi2_n2)(t)`` for ``j1 < j2``, then
  frequency scattering with ``phi_fr`` and both spins, modulus, sum over time;
* every path with ``spin != 0`` is averaged along ``n1`` by ``phi_F`` (``F``
  first-order bins, subsampled by ``2**floor(log2 F)``), or summed (``F='global'``).

What makes it fast (the arithmetic, not the definition, differs from the
reference): filters are grouped by their subsampling so each group is one
batched FFT; a product with a filter followed by subsampling is a gather of
the filter's support (bins above 1e-9 of its peak) folded in place; the
frequential convolution, subsampling, averaging and unpadding are linear maps
along ``n1`` and are precomputed once as dense matrices, with the rows whose weights are negligible (below ``prune`` times
the largest) dropped, so a short first-order stack (high-frequency ``psi2``,
few ``n1``) is not convolved over the whole padded axis.

Everything is differentiable with forward-mode rules (``torch.func.jvp``,
``jacfwd``, ``vmap`` work; the modulus-sum stage has its own, see
:class:`_ModulusSum`); filters are buffers built
once. ``Phi(x) = log1p(S(x) / eps)`` is :meth:`JTFS.phi`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from kymatio.scattering1d.utils import compute_border_indices
from kymatio.scattering1d.filter_bank import (compute_params_filterbank,
                                              compute_temporal_support, gauss_1d,
                                              get_max_dyadic_subsampling, morlet_1d)

from .memory import keep_freed_memory

__all__ = ["JTFS", "JTFSConfig"]

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


def _fold(h: np.ndarray, k: int) -> np.ndarray:
    """Periodize a Fourier filter to length ``len(h) / 2**k`` (kymatio: sum of periods)."""
    return h.reshape(2**k, -1).sum(axis=0)


def _gather_fold(f: np.ndarray, k: int, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Plan ``fold(X * f, 2**k)`` (kymatio's subsample_fourier: mean of the periods) as a gather.

    Only bins where ``|f|`` exceeds ``tol`` times its peak contribute, and a
    band-pass filter's support is narrow: output bin ``m`` receives the few
    support bins ``b`` with ``b = m (mod L / 2**k)``. Returns ``idx`` (int64)
    and ``coef`` (``f[b] / 2**k``, 0 in unused slots), both ``[n, K, L / 2**k]``
    with ``K`` the most bins any output receives, so that
    ``fold(X * f) = sum_K X[..., idx] * coef``.
    """
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
    return idx, coef


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


class _FreqPlan:
    """Frequency scattering of one stack ``[n1_max, t]`` as precomputed linear maps.

    ``W``: every (frequential filter, subsampled row) kept, complex ``[R, n1_max]`` stored
    in real block form ``[2R, 2 n1_max]``;
    ``A`` (real ``[P, R]``): averaging by ``phi_F``, unpadding and selection to the
    output paths. Output = ``A @ sum_t |W @ Y|``.
    """

    def __init__(self, n1_max: int, n_fr: int, psis: list[dict], phi_f: dict,
                 log2_f: int | None, prune: float) -> None:
        w_rows, a_blocks, self.paths = [], [], []
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
                self.paths.append({"n1": int(q_out * stride), "n_fr": idx, "spin": spin,
                                   "xi_fr": psi["xi"], "sigma_fr": psi["sigma"], "j_fr": j_fr})
        w = np.concatenate(w_rows, axis=0)
        r_total = w.shape[0]
        # Real block form [[Re, -Im], [Im, Re]]: complex products as one real matmul.
        self.W = np.block([[w.real, -w.imag], [w.imag, w.real]])
        self.A = np.zeros((sum(b.shape[0] for b in a_blocks), r_total))
        r = p = 0
        for block in a_blocks:
            self.A[p:p + block.shape[0], r:r + block.shape[1]] = block
            r += block.shape[1]
            p += block.shape[0]


_CHUNK = 1024     # time samples per step of the frequential stage (fits in cache)


class _ModulusSum(torch.autograd.Function):
    """``s[r] = sum_t |(W y)[r, t]|`` with its derivatives, time cut in chunks.

    ``w`` is a complex ``[R, n]`` matrix in real block form ``[[Re, -Im], [Im, Re]]``
    (``[2R, 2n]``) and ``y`` is ``[..., 2n, t]`` (real parts, then imaginary).
    Autodiff through ``hypot`` would spend several elementwise passes over the
    ``R x t`` intermediate per tangent; here, with ``u = Wy / |Wy|`` (0 where
    ``Wy = 0``, the subgradient), the forward derivative is
    ``ds[r] = sum_m W[r, m] (u @ dy^T)[r, m]`` (summed over both halves): one
    matmul per tangent, and ``u`` is recomputed chunk by chunk, never stored.
    Works under ``torch.func`` (``jvp``, ``vmap``, ``jacfwd``) and reverse mode.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
        r = w.shape[0] // 2
        total = None
        for start in range(0, y.shape[-1], chunk):
            z = torch.matmul(w, y[..., start:start + chunk])
            mod = torch.hypot(z[..., :r, :], z[..., r:, :]).sum(-1)
            total = mod if total is None else total + mod
        return total

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        y, w, chunk = inputs
        ctx.chunk = chunk
        ctx.save_for_backward(y, w)
        ctx.save_for_forward(y, w)

    @staticmethod
    def _unit(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # z / |z| per complex entry, both halves: [..., 2R, chunk]
        z = torch.matmul(w, y)
        r = w.shape[0] // 2
        mod = torch.hypot(z[..., :r, :], z[..., r:, :]).clamp_min(torch.finfo(z.dtype).tiny)
        return z / torch.cat([mod, mod], dim=-2)

    @staticmethod
    def jvp(ctx: Any, dy: torch.Tensor, dw: torch.Tensor | None, _: Any) -> torch.Tensor:
        y, w = ctx.saved_tensors       # w: a constant filter matrix, its tangent is ignored
        r = w.shape[0] // 2
        ds = None
        for start in range(0, y.shape[-1], ctx.chunk):
            u = _ModulusSum._unit(w, y[..., start:start + ctx.chunk])
            g = torch.matmul(u, dy[..., start:start + ctx.chunk].mT)   # [..., 2R, 2n]
            part = (g * w).sum(-1)
            ds = part if ds is None else ds + part
        return ds[..., :r] + ds[..., r:]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        y, w = ctx.saved_tensors
        g2 = torch.cat([grad, grad], dim=-1)[..., :, None]           # [..., 2R, 1]
        pieces = [torch.matmul(w.mT, _ModulusSum._unit(w, y[..., s:s + ctx.chunk]) * g2)
                  for s in range(0, y.shape[-1], ctx.chunk)]
        return torch.cat(pieces, dim=-1), None, None


class JTFS(torch.nn.Module):
    """Joint time-frequency scattering: ``[B, N] -> [B, P]`` (``[B, P, frames]`` with local T).

    Parameters
    ----------
    config : JTFSConfig, optional
        Defaults to the reference configuration.

    Notes
    -----
    Output paths are ordered as kymatio's ``meta()`` sorts them: order 0, then
    order 1 by ``(n1, n_fr)``, then order 2 by ``(n1, n2, n_fr)``. Use
    :meth:`meta` for what each column is. Float32 and float64, CPU and CUDA:
    the input's dtype and device rule (filters are cast on first use).
    """

    def __init__(self, config: JTFSConfig | None = None) -> None:
        super().__init__()
        keep_freed_memory()      # its buffers are reused, not mmapped afresh per pass
        cfg = config or JTFSConfig()
        self.config = cfg
        self.n_pad, self.pad_left, self.pad_right = _padding(cfg)
        if max(self.pad_left, self.pad_right) >= cfg.N:
            raise ValueError(f"JTFS N = {cfg.N} too short for J = {cfg.J}: reflect padding "
                             f"needs N > {max(self.pad_left, self.pad_right)}")
        log2_t = int(math.floor(math.log2(cfg.t_samples)))
        psi1 = _bank(cfg.J, cfg.Q1, self.n_pad)
        psi2 = _bank(cfg.J, cfg.Q2, self.n_pad)
        phi_t = gauss_1d(self.n_pad, SIGMA0 / cfg.t_samples)
        self.local = cfg.T != "global"
        j1_max = max(p["j"] for p in psi1)
        j2_max = max((p["j"] for p in psi2 if p["j"] > min(q["j"] for q in psi1)), default=0)
        if self.local and log2_t < max(j1_max, j2_max):
            raise ValueError(f"JTFS T = {cfg.T}: local averaging needs T >= "
                             f"2**{max(j1_max, j2_max)} (the coarsest filter's subsampling); "
                             f"pass a larger T or T='global'")
        if self.local:
            # Time frames kept after unpadding (kymatio's border indices at stride 2**log2_t).
            start, end = compute_border_indices(log2_t, cfg.J, self.pad_left,
                                                self.pad_left + cfg.N)
            self.frames = (start[log2_t], end[log2_t])
            self._gather("phi0", phi_t, log2_t)
        self.psi1_meta = [(p["xi"], p["sigma"], p["j"]) for p in psi1]
        self.psi2_meta = [(p["xi"], p["sigma"], p["j"]) for p in psi2]

        # Frequential filters, as kymatio's JTFS frontend pads and builds them.
        f_bins = cfg.F if cfg.F != "global" else 2**cfg.J_fr
        n_in_fr = (cfg.J + 1) * cfg.Q1
        self.n_fr = (n_in_fr + 8 * min(f_bins, 2**cfg.J_fr)) // 2**cfg.J_fr * 2**cfg.J_fr
        if len(psi1) > self.n_fr:
            raise ValueError(f"JTFS: {len(psi1)} first-order filters exceed the frequential "
                             f"padding {self.n_fr}; raise J or lower Q1")
        log2_f = int(math.floor(math.log2(f_bins))) if cfg.F != "global" else None
        phi_fr = {"kind": "global" if cfg.F == "global" else "local",
                  "f": gauss_1d(self.n_fr, SIGMA0 / f_bins)}
        low_fr = {"xi": 0.0, "sigma": SIGMA0 / 2**cfg.J_fr, "j": cfg.J_fr,
                  "f": gauss_1d(self.n_fr, SIGMA0 / 2**cfg.J_fr)}
        psis_fr = [low_fr] + _bank(cfg.J_fr, cfg.Q_fr, self.n_fr, signed=True)
        # kymatio's unspinned case keeps xi >= 0 and enumerates what remains.
        up_fr = [p for p in psis_fr if p["xi"] >= 0]

        # First order, grouped by subsampling j1 (one batched FFT per group).
        j1s = np.array([p["j"] for p in psi1])
        if not np.all(np.diff(j1s) >= 0):   # groups must be contiguous runs of n1
            raise ValueError("JTFS: first-order subsamplings must grow with n1")
        self.groups1 = sorted(set(j1s.tolist()))
        for j in self.groups1:
            idx = np.flatnonzero(j1s == j)
            self._gather(f"psi1_{j}", np.stack([psi1[i]["f"] for i in idx]), j)
            # phi_T at resolution j, to average U1 down to stride 2**log2_t (S1 of order 1)
            self._gather(f"phiT_{j}", _fold(phi_t, j), log2_t - j)

        # Order 1: frequency scattering of S1 [n1 = all, t = n_pad / 2**log2_t].
        plan1 = _FreqPlan(len(psi1), self.n_fr, up_fr, phi_fr, log2_f, cfg.prune)
        self._buf("W1", plan1.W)
        self._buf("A1", plan1.A)
        paths = [{"order": 0, "n1": -1, "n2": -1, "n_fr": -1, "spin": 0}]
        paths += [{"order": 1, "n2": -1, **p} for p in plan1.paths]

        # Order 2: per psi2 with at least one j1 < j2.
        self.plans2: list[tuple[int, int, int]] = []           # (n2, j2, n1_max)
        for n2, p2 in enumerate(psi2):
            n1_max = int(np.sum(j1s < p2["j"]))
            if n1_max == 0:
                continue
            plan = _FreqPlan(n1_max, self.n_fr, psis_fr, phi_fr, log2_f, cfg.prune)
            for j in self.groups1:
                if j < p2["j"]:
                    self._gather(f"psi2_{n2}_{j}", _fold(p2["f"], j), p2["j"] - j)
            self._buf(f"W2_{n2}", plan.W)
            self._buf(f"A2_{n2}", plan.A)
            if self.local:
                self._gather(f"phiT2_{n2}", _fold(phi_t, p2["j"]), log2_t - p2["j"])
            self.plans2.append((n2, p2["j"], n1_max))
            paths += [{"order": 2, "n2": n2, **p} for p in plan.paths]

        # Sort columns as kymatio's meta(): (len(n), n) with n = (n1, [n2,] n_fr).
        def key(p: dict) -> tuple:
            if p["order"] == 0:
                return (0,)
            if p["order"] == 1:
                return (1, p["n1"], p["n_fr"])
            return (2, p["n1"], p["n2"], p["n_fr"])

        order = sorted(range(len(paths)), key=lambda i: key(paths[i]))
        self._paths = [paths[i] for i in order]
        self.register_buffer("perm", torch.as_tensor(order, dtype=torch.long),
                             persistent=False)
        self._cast: dict[tuple, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ helpers
    def _buf(self, name: str, value: np.ndarray) -> None:
        self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value)), persistent=False)

    def _gather(self, name: str, f: np.ndarray, k: int) -> None:
        idx, coef = _gather_fold(f, k)
        self._buf(name + "_idx", idx)
        self._buf(name + "_coef", coef)

    @staticmethod
    def _fold_apply(spec: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        # sum_K spec[..., idx] * coef: the product with the filter, folded, on its support only
        return (spec[..., idx] * coef).sum(-2)

    def _filters(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        # Buffers are stored in float64/complex128; cast once per (dtype, device).
        key = (dtype, device)
        if key not in self._cast:
            cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
            self._cast[key] = {
                name: b.to(device=device, dtype=cdtype if b.is_complex() else
                           dtype if b.is_floating_point() else b.dtype)
                for name, b in self.named_buffers() if name != "perm"}
        return self._cast[key]

    def _apply(self, fn, recurse=True):  # .to()/.cuda() invalidate the cast cache
        self._cast = {}
        return super()._apply(fn, recurse)

    @property
    def n_paths(self) -> int:
        return len(self._paths)

    # ------------------------------------------------------------------ transform
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scattering coefficients ``S``.

        Parameters
        ----------
        x : torch.Tensor, shape ``[B, N]`` or ``[N]``, float32 or float64

        Returns
        -------
        torch.Tensor, shape ``[B, P]`` (or ``[P]``), dtype of ``x``; with local ``T``
        ``[B, P, frames]``. Orders 1-2 are non-negative; order 0 is signed.
        """
        cfg = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"JTFS input must be a float tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        single = x.dim() == 1
        if x.dim() not in (1, 2) or x.shape[-1] != cfg.N:
            raise ValueError(f"JTFS input has shape {tuple(x.shape)}: expected [B, {cfg.N}] "
                             f"or [{cfg.N}]")
        x = x[None] if single else x
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = x.to(dtype)
        f = self._filters(dtype, x.device)

        xp = torch.nn.functional.pad(x[:, None], (self.pad_left, self.pad_right),
                                     mode="reflect")[:, 0]
        X = torch.fft.fft(xp)
        if self.local:
            s0 = torch.fft.ifft(self._fold_apply(X, f["phi0_idx"][0], f["phi0_coef"][0])).real
            s0 = s0[:, None, self.frames[0]:self.frames[1]]
        else:
            s0 = xp.sum(-1, keepdim=True)

        # First order, group by group: U1 = |x * psi1| at stride 2**j1, its FFT, and
        # S1 = U1 * phi_T at stride 2**log2_t.
        u1_hat: dict[int, torch.Tensor] = {}
        s1 = []
        for j in self.groups1:
            sub = self._fold_apply(X, f[f"psi1_{j}_idx"], f[f"psi1_{j}_coef"])
            u1 = torch.fft.ifft(sub).abs()
            uh = torch.fft.fft(u1)
            u1_hat[j] = uh
            s = self._fold_apply(uh, f[f"phiT_{j}_idx"][0], f[f"phiT_{j}_coef"][0])
            s1.append(torch.fft.ifft(s).real)
        s1 = torch.cat(s1, dim=1)                               # [B, n1, n_pad >> log2_t]
        out = [s0, self._freq(s1, f["W1"], f["A1"])]

        for n2, j2, _ in self.plans2:
            pieces = []
            for j in self.groups1:
                if j >= j2:
                    break
                pieces.append(self._fold_apply(u1_hat[j], f[f"psi2_{n2}_{j}_idx"][0],
                                               f[f"psi2_{n2}_{j}_coef"][0]))
            y2 = torch.fft.ifft(torch.cat(pieces, dim=1))              # [B, n1_max, t]
            phi = (f[f"phiT2_{n2}_idx"][0], f[f"phiT2_{n2}_coef"][0]) if self.local else None
            out.append(self._freq(y2, f[f"W2_{n2}"], f[f"A2_{n2}"], phi))
        s = torch.cat(out, dim=1).index_select(1, self.perm.to(x.device))
        return s[0] if single else s

    def _freq(self, y: torch.Tensor, w: torch.Tensor, a: torch.Tensor,
              phi: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``A @ sum_t |W y|`` for ``y`` ``[B, n1, t]`` (complex, or real for order 1).

        With local ``T``: ``A @ unpad(|W y| * phi_T)`` (time kept), ``[B, P_block, frames]``;
        ``phi`` (gather plan of the low-pass at this resolution) is None for order 1,
        which is averaged already.
        """
        if y.is_complex():
            y = torch.cat([y.real, y.imag], dim=-2)
        else:
            w = w[:, :w.shape[1] // 2]                  # real input: the Re columns only
        if not self.local:
            return _ModulusSum.apply(y, w, _CHUNK) @ a.mT
        r = w.shape[0] // 2
        z = torch.matmul(w, y)
        u = torch.hypot(z[..., :r, :], z[..., r:, :] + 1e-30)           # [B, R, t]
        if phi is not None:
            u = torch.fft.ifft(self._fold_apply(torch.fft.fft(u), *phi)).real
        u = u[..., self.frames[0]:self.frames[1]]
        return torch.matmul(a, u)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """Perceptual features ``Phi(x) = log1p(S(x) / eps)`` over orders 1 and 2, ``[B, P - 1]``.

        Order 0 (column 0, the padded signal's sum: a signed DC offset) is left
        out: it can be negative, where log1p is undefined, and carries no timbre.
        """
        s = self(x)
        paths = s.dim() - 2 if self.local else s.dim() - 1
        return torch.log1p(s.narrow(paths, 1, s.shape[paths] - 1) / self.config.eps)

    # ------------------------------------------------------------------ description
    def meta(self) -> dict[str, np.ndarray]:
        """What each output column is (arrays of length ``P``).

        Keys: ``order`` (0, 1, 2); ``n1`` (first-order filter index of the
        column's lowest bin, -1 for order 0); ``n2``; ``n_fr``; ``spin``
        (+1 up, -1 down, 0 low-pass); ``xi1_hz``, ``xi2_hz`` (centre
        frequencies in Hz, NaN where absent); ``xi_fr`` (cycles per
        first-order bin); ``j_fr``; ``key`` (kymatio's path tuple).
        """
        sr = self.config.sr
        rows = self._paths
        get = lambda k, d=-1: np.array([r.get(k, d) for r in rows])  # noqa: E731
        n1, n2 = get("n1"), get("n2")
        xi1 = np.array([self.psi1_meta[i][0] * sr if i >= 0 else np.nan for i in n1])
        xi2 = np.array([self.psi2_meta[i][0] * sr if i >= 0 else np.nan for i in n2])
        keys = np.empty(len(rows), dtype=object)
        for i, r in enumerate(rows):
            keys[i] = () if r["order"] == 0 else ((r["n1"], r["n_fr"]) if r["order"] == 1
                                                  else (r["n1"], r["n2"], r["n_fr"]))
        return {"order": get("order"), "n1": n1, "n2": n2, "n_fr": get("n_fr"),
                "spin": get("spin", 0), "xi1_hz": xi1, "xi2_hz": xi2,
                "xi_fr": get("xi_fr", np.nan).astype(float),
                "j_fr": get("j_fr"), "key": keys}

    def extra_repr(self) -> str:
        return f"{asdict(self.config)}, N_pad={self.n_pad}, N_fr={self.n_fr}, P={self.n_paths}"
