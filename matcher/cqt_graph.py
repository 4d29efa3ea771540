"""The CQT front end as real matrix products, for ONNX export.

:class:`matcher.features.CQTFeatures` uses complex tensors, an FFT of
``n_fft`` (2^17) points and a scatter-add; ONNX has no complex type, and ONNX
Runtime's ``DFT`` took ~16 ms for 2^17 points on this 2-core CPU. This module
computes the very same numbers (the same kernel spectra on the same supports,
so the same truncation at ``support_tol``: anything else moved low-level bins
enough to change nu by 1e-3 on recorded kicks) with real ``MatMul``s:

1. FFT, four-step (Cooley-Tukey), ``n_fft = P * Q`` (``P = hop``, ``Q = fold``),
   input index ``p + P q``: a ``Q``-point DFT over ``q`` (one matmul; the input
   is real, so ``Q/2 + 1`` outputs are computed and the rest gathered as their
   conjugates), times the twiddles ``w_n^{fp}``;
2. then the ``P``-point DFT over ``p`` in two radix stages (``P = P1 * P2``,
   small matmuls and a twiddle), giving the spectrum as ``P`` rows of ``Q``
   bins, ``X[r, f] = X[r Q + f]``;
3. kernel product and fold modulo ``Q`` (``CQTFeatures``' decimation by the
   hop): ``W[k, f] = sum_r X[r, f] G[k, r, f]``, one batched matmul over ``f``
   per octave of bins, each octave's kernel spectra dense on the rows its bins
   use. This streams ~32 MB of kernel spectra per sound: the cost of exactness;
4. the ``Q``-point inverse DFT of each bin in two radix stages (only the first
   ``n_frames`` outputs), and the modulus.

``tests/test_onnx.py`` checks this module against ``CQTFeatures`` and the
exported graph against the torch encoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .encoder import Encoder
from .features import FeatureConfig, spectral_kernels

__all__ = ["CQTGraph", "WaveformEncoder"]


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)


def _dft(n: int) -> np.ndarray:
    """The ``n``-point DFT matrix ``w_n^{jk}``."""
    return np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n)) / n)


def _block(m: np.ndarray) -> torch.Tensor:
    """Complex ``[a, b]`` -> real ``[2a, 2b]``: ``[re; im] -> [re; im]`` of ``m @ z``."""
    return _f32(np.block([[m.real, -m.imag], [m.imag, m.real]]))


def _split(n: int) -> tuple[int, int]:
    """``n = a * b`` with ``a`` the power of 2 nearest below ``sqrt(n)``."""
    a = 1 << (int(math.log2(n)) // 2)
    return a, n // a


class CQTGraph(nn.Module):
    """Magnitude CQT equal to ``CQTFeatures.cqt``: ``[B, N] -> [B, n_bins, n_frames]``.

    Parameters
    ----------
    cfg : FeatureConfig
    group : int
        Bins per kernel group (dense over the rows its bins use); default one octave.
    """

    def __init__(self, cfg: FeatureConfig = FeatureConfig(), group: int | None = None):
        super().__init__()
        self.cfg = cfg
        idx, dest, vals, n_fft, fold = spectral_kernels(cfg)
        P, Q = n_fft // fold, fold
        if P & (P - 1) or Q & (Q - 1):
            raise ValueError(f"CQT graph: hop {P} and fold {Q} must be powers of 2")
        self.P, self.Q, self.n_q = P, Q, math.ceil(cfg.n_samples / P)
        (P1, P2), (Q1, Q2) = _split(P), _split(Q)
        self.P1, self.P2, self.Q1, self.Q2 = P1, P2, Q1, Q2
        self.T2 = math.ceil(cfg.n_frames / Q1)               # frames t = t1 + Q1 t2 needed
        h, f, p = Q // 2, np.arange(Q), np.arange(P)
        # 1. DFT over q of x[p + P q] for f = 0..Q/2 (rows: re, then im) ...
        e1 = _dft(Q)[: h + 1, : self.n_q]
        self.register_buffer("e1", _f32(np.concatenate([e1.real, e1.imag], 0)), persistent=False)
        # ... the other f by conjugate symmetry (rows gathered, im negated), times w_n^{fp}
        conj = f > h
        self.register_buffer("hermitian", torch.as_tensor(np.concatenate(
            [np.where(conj, Q - f, f), h + 1 + np.where(conj, Q - f, f)])), persistent=False)
        tw = np.exp(-2j * np.pi * np.outer(f, p) / n_fft)                     # [Q, P]
        sign = np.where(conj, -1.0, 1.0)[:, None]
        for name, v in (("tw_a", tw.real), ("tw_b", sign * tw.imag), ("tw_c", tw.imag),
                        ("tw_d", sign * tw.real)):
            self.register_buffer(name, _f32(v), persistent=False)
        # 2. P-point DFT over p = P2 p1 + p2 in two stages; r = r1 + P1 r2, stored at r1 P2 + r2
        self.register_buffer("ea", _block(_dft(P1)), persistent=False)
        tw2 = np.exp(-2j * np.pi * np.outer(np.arange(P1), np.arange(P2)) / P)    # [r1, p2]
        self.register_buffer("tw2_re", _f32(tw2.real), persistent=False)
        self.register_buffer("tw2_im", _f32(tw2.imag), persistent=False)
        ebt = _dft(P2).T                                                      # [p2, r2]
        self.register_buffer("eb_re", _f32(ebt.real), persistent=False)
        self.register_buffer("eb_im", _f32(ebt.imag), persistent=False)
        r_of_m = (np.arange(P) // P2) + P1 * (np.arange(P) % P2)             # natural r of slot m
        self._build_kernels(idx, dest, vals, np.argsort(r_of_m), group or cfg.bins_per_octave)
        # 4. inverse DFT over f = Q2 f1 + f2, t = t1 + Q1 t2 (only t2 < T2)
        self.register_buffer("e3a", _block(_dft(Q1).conj()), persistent=False)
        tw3 = np.exp(2j * np.pi * np.outer(np.arange(Q1), np.arange(Q2)) / Q)[..., None]
        self.register_buffer("tw3_re", _f32(tw3.real), persistent=False)
        self.register_buffer("tw3_im", _f32(tw3.imag), persistent=False)
        self.register_buffer("e3b", _block(_dft(Q2).conj()[: self.T2]), persistent=False)

    def _build_kernels(self, idx: np.ndarray, dest: np.ndarray, vals: np.ndarray,
                       slot: np.ndarray, group: int) -> None:
        """3. Kernel spectra per group, ``[Q, rows, 2k]`` (re columns, then im columns)."""
        P, Q = self.P, self.Q
        b, r = dest // Q, idx // Q
        self.groups: list[tuple[int, bool]] = []                  # (bins, all rows)
        for i, k0 in enumerate(range(0, self.cfg.n_bins, group)):
            k = min(group, self.cfg.n_bins - k0)
            sel = (b >= k0) & (b < k0 + k)
            used = np.unique(slot[r[sel]])
            full = used.size == P
            rows = np.arange(P) if full else used
            g = np.zeros((Q, rows.size, 2 * k), dtype=np.float32)
            f, kk, rr = idx[sel] % Q, b[sel] - k0, np.searchsorted(rows, slot[r[sel]])
            g[f, rr, kk] = vals[sel].real
            g[f, rr, kk + k] = vals[sel].imag
            self.register_buffer(f"g{i}", torch.as_tensor(g), persistent=False)
            if not full:
                self.register_buffer(f"rows{i}", torch.as_tensor(rows), persistent=False)
            self.groups.append((k, full))

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: ``[B, N]`` -> the FFT ``[Q, 2B, P]`` (f, re/im x batch, row slot)."""
        B, P, Q, P1, P2 = x.shape[0], self.P, self.Q, self.P1, self.P2
        xp = nn.functional.pad(x, (0, self.n_q * P - self.cfg.n_samples))
        y = (self.e1 @ xp.reshape(B, self.n_q, P))[:, self.hermitian]         # [B, 2Q, P]
        yr, yi = y[:, :Q], y[:, Q:]
        z = torch.cat([(yr * self.tw_a - yi * self.tw_b)[:, :, None],
                       (yr * self.tw_c + yi * self.tw_d)[:, :, None]], 2)    # [B, Q, 2, P]
        a = self.ea @ z.reshape(B, Q, 2 * P1, P2)                            # [B, Q, 2 r1, p2]
        ar, ai = a[:, :, :P1], a[:, :, P1:]
        ar, ai = ar * self.tw2_re - ai * self.tw2_im, ar * self.tw2_im + ai * self.tw2_re
        X = torch.cat([ar @ self.eb_re - ai @ self.eb_im,
                       ar @ self.eb_im + ai @ self.eb_re], 2)                # [B, Q, 2 r1, r2]
        return X.reshape(B, Q, 2, P).permute(1, 2, 0, 3).reshape(Q, 2 * B, P)  # slot r1 P2 + r2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, Q, Q1, Q2, T2 = x.shape[0], self.Q, self.Q1, self.Q2, self.T2
        X = self._spectrum(x)
        wr, wi = [], []
        for i, (k, full) in enumerate(self.groups):
            Xg = X if full else X[..., getattr(self, f"rows{i}")]
            o = (Xg @ getattr(self, f"g{i}")).reshape(Q, 2, B, 2, k)          # [Q, 2B, 2k]
            wr.append(o[:, 0, :, 0] - o[:, 1, :, 1])                          # [Q, B, k]
            wi.append(o[:, 0, :, 1] + o[:, 1, :, 0])
        M = B * self.cfg.n_bins
        w = torch.cat([torch.cat(wr, -1)[None], torch.cat(wi, -1)[None]], 0)  # [2, Q, B, K]
        a = (self.e3a @ w.reshape(2 * Q1, Q2 * M)).reshape(2, Q1, Q2, M)
        ar, ai = a[0], a[1]                                                  # [t1, f2, M]
        a = torch.cat([ar * self.tw3_re - ai * self.tw3_im,
                       ar * self.tw3_im + ai * self.tw3_re], 1)              # [t1, 2 f2, M]
        y = self.e3b @ a                                                     # [t1, 2 t2, M]
        mag = torch.sqrt(y[:, :T2] ** 2 + y[:, T2:] ** 2).reshape(Q1, T2, B, self.cfg.n_bins)
        return mag.permute(2, 3, 1, 0).reshape(B, -1, T2 * Q1)[..., : self.cfg.n_frames]


class WaveformEncoder(nn.Module):
    """Peak-normalized audio ``[B, N]`` -> encoder output ``[B, K]``: CQT, log1p, network.

    The graph that :func:`matcher.onnx_export.export_onnx` writes.
    """

    def __init__(self, encoder: Encoder, cfg: FeatureConfig):
        super().__init__()
        self.cqt = CQTGraph(cfg)
        self.encoder = encoder.eval()
        self.eps = cfg.eps

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.log1p(self.cqt(audio) / self.eps)[:, None])
