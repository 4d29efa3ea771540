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
along ``n1`` and are precomputed once as dense matrices, with the rows whose
weights are negligible (below ``prune`` times the largest) dropped, so a short
first-order stack (high-frequency ``psi2``, few ``n1``) is not convolved over
the whole padded axis.

The filters, paths and sizes are planned once, in numpy, by
:func:`matcher.jtfs_plan.plan_jtfs`; this module registers the plan's arrays
as buffers and applies them. Everything is differentiable with forward-mode
rules (``torch.func.jvp``, ``jacfwd``, ``vmap`` work; the modulus-sum stage
has its own, see :class:`_ModulusSum`). ``Phi(x) = log1p(S(x) / eps)`` is
:meth:`JTFS.phi`.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .jtfs_plan import (FreqMaps, GatherPlan, JTFSConfig, JTFSPlan, Order2Plan, path_meta,
                        plan_jtfs)
from .memory import keep_freed_memory

__all__ = ["JTFS", "JTFSConfig", "JTFSPlan", "plan_jtfs"]


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



def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))     # shares the plan's memory


class _Gather(torch.nn.Module):
    """A :class:`GatherPlan` as buffers ``idx`` (int64) and ``coef`` (float)."""

    def __init__(self, g: GatherPlan) -> None:
        super().__init__()
        self.register_buffer("idx", _tensor(g.idx), persistent=False)
        self.register_buffer("coef", _tensor(g.coef), persistent=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``fold(spec * f, 2**k)``: ``[..., L]`` -> ``[..., (n,) L / 2**k]``, on the filter's
        support only (``sum_K spec[..., idx] * coef``)."""
        return (spec[..., self.idx] * self.coef).sum(-2)


class _Maps(torch.nn.Module):
    """A :class:`FreqMaps` as buffers ``W`` ``[2R, 2 n1_max]`` and ``A`` ``[P_block, R]``."""

    def __init__(self, m: FreqMaps) -> None:
        super().__init__()
        self.register_buffer("W", _tensor(m.W), persistent=False)
        self.register_buffer("A", _tensor(m.A), persistent=False)


class _Order2(torch.nn.Module):
    """An :class:`Order2Plan`: ``psi2`` per first-order group, its maps, ``phi_T`` (local T)."""

    def __init__(self, p: Order2Plan) -> None:
        super().__init__()
        self.n2, self.j2, self.n1_max = p.n2, p.j2, p.n1_max
        self.psi2 = torch.nn.ModuleList(_Gather(g) for g in p.psi2)
        self.freq = _Maps(p.freq)
        self.phi_t = _Gather(p.phi_t) if p.phi_t is not None else None


class _Banks(torch.nn.Module):
    """Every array of a :class:`JTFSPlan`, as buffers in the plan's own structure."""

    def __init__(self, plan: JTFSPlan) -> None:
        super().__init__()
        self.phi0 = _Gather(plan.phi0) if plan.phi0 is not None else None
        self.psi1 = torch.nn.ModuleList(_Gather(g) for g in plan.psi1)
        self.phi1 = torch.nn.ModuleList(_Gather(g) for g in plan.phi1)
        self.freq1 = _Maps(plan.freq1)
        self.order2 = torch.nn.ModuleList(_Order2(p) for p in plan.order2)


class _Casts:
    """Copies of a :class:`_Banks` with its float buffers cast, one per (dtype, device).

    A copy is dropped as soon as the buffers it was made from are no longer the
    module's: ``.to()``, ``.double()``, ``.cuda()`` put new tensor objects in place,
    and the copies remember (weakly) which ones they came from. Not pickled or
    deep-copied: a copy of the module starts with an empty cache.
    """

    def __init__(self) -> None:
        self._source: list[weakref.ref] = []
        self._copies: dict[tuple[torch.dtype, torch.device], _Banks] = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, banks: _Banks, dtype: torch.dtype, device: torch.device) -> _Banks:
        buffers = list(banks.buffers())
        if (len(buffers) != len(self._source)
                or any(ref() is not b for ref, b in zip(self._source, buffers))):
            self._source = [weakref.ref(b) for b in buffers]
            self._copies = {}
        key = (dtype, device)
        if key not in self._copies:
            # deepcopy with each buffer mapped to its cast in the memo: the structure is
            # copied, the tensors are cast once (not copied, then cast); int64 keeps its type.
            memo = {id(b): b.to(device=device, dtype=dtype if b.is_floating_point() else b.dtype)
                    for b in buffers}
            self._copies[key] = copy.deepcopy(banks, memo)
        return self._copies[key]


class JTFS(torch.nn.Module):
    """Joint time-frequency scattering: ``[B, N] -> [B, P]`` (``[B, P, frames]`` with local T).

    Parameters
    ----------
    config : JTFSConfig, optional
        Defaults to the reference configuration.
    plan : JTFSPlan, optional (keyword)
        A plan already built by :func:`plan_jtfs` (its config is used; ``config``, if
        given too, must equal it). The buffers share the plan's arrays' memory.

    Notes
    -----
    Output paths are ordered as kymatio's ``meta()`` sorts them: order 0, then
    order 1 by ``(n1, n_fr)``, then order 2 by ``(n1, n2, n_fr)``. Use
    :meth:`meta` for what each column is. Float32 and float64, CPU and CUDA:
    the input's dtype and device rule. The filters are stored in float64 (or
    whatever ``.to()`` / ``.float()`` made them) and cast to the input's dtype
    and device on first use, once per (dtype, device).
    """

    def __init__(self, config: JTFSConfig | None = None, *, plan: JTFSPlan | None = None) -> None:
        super().__init__()
        keep_freed_memory()      # its buffers are reused, not mmapped afresh per pass
        if plan is None:
            plan = plan_jtfs(config or JTFSConfig())
        elif config is not None and config != plan.config:
            raise ValueError(f"JTFS config {config} differs from the plan's {plan.config}: "
                             f"pass one of them")
        self.config = plan.config
        # The plan's sizes and paths (not the plan: its arrays live on as the buffers).
        self.n_pad, self.pad_left, self.pad_right = plan.n_pad, plan.pad_left, plan.pad_right
        self.n_fr, self.local, self.frames = plan.n_fr, plan.local, plan.frames
        self.groups1 = list(plan.groups1)
        self.plans2 = [(p.n2, p.j2, p.n1_max) for p in plan.order2]    # (n2, j2, n1_max)
        self.psi1_meta, self.psi2_meta = list(plan.psi1_meta), list(plan.psi2_meta)
        self._paths = list(plan.paths)
        self.banks = _Banks(plan)
        self.register_buffer("perm", _tensor(plan.perm), persistent=False)
        self._casts = _Casts()

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
        f = self._casts.get(self.banks, dtype, x.device)

        xp = torch.nn.functional.pad(x[:, None], (self.pad_left, self.pad_right),
                                     mode="reflect")[:, 0]
        X = torch.fft.fft(xp)
        if self.local:
            s0 = torch.fft.ifft(f.phi0(X)).real[:, None, self.frames[0]:self.frames[1]]
        else:
            s0 = xp.sum(-1, keepdim=True)

        # First order, group by group: U1 = |x * psi1| at stride 2**j1, its FFT, and
        # S1 = U1 * phi_T at stride 2**log2_t.
        u1_hat, s1 = [], []
        for psi, phi in zip(f.psi1, f.phi1):
            uh = torch.fft.fft(torch.fft.ifft(psi(X)).abs())
            u1_hat.append(uh)
            s1.append(torch.fft.ifft(phi(uh)).real)
        s1 = torch.cat(s1, dim=1)                               # [B, n1, n_pad >> log2_t]
        out = [s0, self._freq(s1, f.freq1)]

        for stage in f.order2:
            # psi2 is planned for the groups with j1 < j2, the first ones (zip stops there)
            pieces = [psi(uh) for psi, uh in zip(stage.psi2, u1_hat)]
            y2 = torch.fft.ifft(torch.cat(pieces, dim=1))              # [B, n1_max, t]
            out.append(self._freq(y2, stage.freq, stage.phi_t))
        s = torch.cat(out, dim=1).index_select(1, self.perm.to(x.device))
        return s[0] if single else s

    def _freq(self, y: torch.Tensor, maps: _Maps, phi: _Gather | None = None) -> torch.Tensor:
        """``A @ sum_t |W y|`` for ``y`` ``[B, n1, t]`` (complex, or real for order 1).

        With local ``T``: ``A @ unpad(|W y| * phi_T)`` (time kept), ``[B, P_block, frames]``;
        ``phi`` (the low-pass at this resolution) is None for order 1, averaged already.
        """
        w, a = maps.W, maps.A
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
            u = torch.fft.ifft(phi(torch.fft.fft(u))).real
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
        """What each output column is (arrays of length ``P``): see
        :func:`matcher.jtfs_plan.path_meta` for the keys."""
        return path_meta(self._paths, self.psi1_meta, self.psi2_meta, self.config.sr)

    def extra_repr(self) -> str:
        return f"{asdict(self.config)}, N_pad={self.n_pad}, N_fr={self.n_fr}, P={self.n_paths}"
