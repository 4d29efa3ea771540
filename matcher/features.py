"""Encoder input features: ``log1p(|CQT| / eps)`` of model-side audio.

The constant-Q transform is nnAudio's ``CQT1992v2`` definition (its kernels,
its ``librosa`` normalization, centred frames) with zero padding: a drum hit
starts from silence, and reflection padding would put a time-reversed copy of
the strike before the onset. nnAudio computes it as a strided convolution with
120 kernels padded to 65536 taps (about 90 ms per 3 s sound on this CPU), and
its faster multirate ``CQT2010v2`` cannot reach 10 octaves at hop 256. So
:class:`CQTFeatures` applies the very same kernels in the frequency domain: one
FFT of the sound, each kernel's spectrum kept on its support (they are
band-pass), the hop's decimation done by folding the spectrum, and a short
inverse FFT per bin. ``tests/test_features.py`` checks it against nnAudio.

Reference configuration: 22050 Hz, 12 bins per octave, 120 bins from 10 Hz
(the top bin at 9.67 kHz stays below Nyquist), hop 256, eps 1e-3; a sound of
2^16 samples gives ``[120, 257]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["FeatureConfig", "CQTFeatures", "nnaudio_cqt"]


@dataclass(frozen=True)
class FeatureConfig:
    """Constant-Q feature settings (frozen; stored in every exported model).

    Parameters
    ----------
    sr : float
        Sample rate of the audio, Hz.
    n_samples : int
        Length of every input, samples.
    fmin : float
        Centre of the lowest bin, Hz.
    n_bins, bins_per_octave : int
    hop : int
        Frame hop, samples.
    eps : float
        Magnitude scale of the log: ``log1p(|CQT| / eps)``.
    support_tol : float
        Kernel spectra are kept where their magnitude exceeds ``support_tol``
        times their peak (the rest changes outputs by less than that, relative).
    """

    sr: float = 22050.0
    n_samples: int = 2**16
    fmin: float = 10.0
    n_bins: int = 120
    bins_per_octave: int = 12
    hop: int = 256
    eps: float = 1e-3
    support_tol: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("n_samples", "n_bins", "bins_per_octave", "hop"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"feature {name} = {v!r}: allowed integers >= 1")
        for name in ("sr", "fmin", "eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"feature {name} = {v!r}: allowed a positive number")
        top = self.fmin * 2 ** ((self.n_bins - 1) / self.bins_per_octave)
        if top >= self.sr / 2:
            raise ValueError(f"feature bins reach {top:.0f} Hz, at or above Nyquist "
                             f"({self.sr / 2:.0f} Hz): lower fmin or n_bins")
        if not 0 <= self.support_tol < 1:
            raise ValueError(f"support_tol = {self.support_tol!r}: allowed [0, 1)")

    @property
    def n_frames(self) -> int:
        return self.n_samples // self.hop + 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_bins, n_frames)`` of one sound's features."""
        return (self.n_bins, self.n_frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown feature settings {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def _kernels(cfg: FeatureConfig) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """nnAudio's CQT kernels: ``(kernels [n_bins, W] complex, W, lengths, freqs)``."""
    from nnAudio.utils import create_cqt_kernels
    Q = 1.0 / (2 ** (1 / cfg.bins_per_octave) - 1)
    kernels, width, lengths, freqs = create_cqt_kernels(
        Q, cfg.sr, cfg.fmin, cfg.n_bins, cfg.bins_per_octave, 1, "hann", None)
    return np.asarray(kernels), int(width), np.asarray(lengths, dtype=np.float64), np.asarray(freqs)


@lru_cache(maxsize=8)
def spectral_kernels(cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Kernel spectra on their supports: ``(fft bins, fold destinations, values, n_fft, fold)``.

    Cached per configuration: building them takes seconds.
    """
    kernels, width, lengths, _ = _kernels(cfg)
    n, hop = cfg.n_samples, cfg.hop
    # nnAudio: out[t] = sum_j xpad[t*hop + j] * conj(k[j]) (real part with k.real, imaginary
    # part with -k.imag), xpad = W//2 zeros, x, W//2 zeros. That is x convolved with
    # g[u] = conj(k[W//2 - u]), sampled at t*hop.
    n_fft = 1 << math.ceil(math.log2(n + width))
    fold = n_fft // hop
    if fold * hop != n_fft:
        raise ValueError(f"hop {hop} must divide the FFT size {n_fft}: use a power of 2")
    g = np.zeros((cfg.n_bins, n_fft), dtype=np.complex128)
    u = width // 2 - np.arange(width)              # g index of each kernel tap
    g[:, u % n_fft] = np.conj(kernels)
    G = np.fft.fft(g, axis=-1) * np.sqrt(lengths)[:, None]   # librosa normalization
    idx, vals, rows = [], [], []
    for k in range(cfg.n_bins):
        mag = np.abs(G[k])
        keep = np.flatnonzero(mag > cfg.support_tol * mag.max())
        idx.append(keep)
        vals.append(G[k, keep])
        rows.append(k * fold + keep % fold)
    # Decimating by hop = folding the spectrum modulo n_fft / hop; ifft(fold)[t] / n_fft.
    v = np.concatenate(vals) / fold / hop
    return (np.concatenate(idx), np.concatenate(rows), v.astype(np.complex64), n_fft, fold)


def nnaudio_cqt(cfg: FeatureConfig) -> torch.nn.Module:
    """nnAudio's own ``CQT1992v2`` with the settings of ``cfg`` (the reference; slow)."""
    from nnAudio.features import CQT1992v2
    return CQT1992v2(sr=cfg.sr, hop_length=cfg.hop, fmin=cfg.fmin, n_bins=cfg.n_bins,
                     bins_per_octave=cfg.bins_per_octave, pad_mode="constant",
                     output_format="Magnitude", verbose=False)


class CQTFeatures(torch.nn.Module):
    """``log1p(|CQT(x)| / eps)`` with nnAudio's kernels, computed by FFT.

    Input ``[B, N]`` (or ``[N]``) float audio with ``N = cfg.n_samples``;
    output ``[B, n_bins, n_frames]`` float32 (or ``[n_bins, n_frames]``).
    Not differentiable on purpose: features are computed from target audio.
    """

    def __init__(self, cfg: FeatureConfig = FeatureConfig()):
        super().__init__()
        self.cfg = cfg
        idx, dest, vals, self.n_fft, self.fold = spectral_kernels(cfg)
        self.register_buffer("idx", torch.as_tensor(idx), persistent=False)
        self.register_buffer("dest", torch.as_tensor(dest), persistent=False)
        self.register_buffer("vals", torch.as_tensor(vals), persistent=False)

    @torch.no_grad()
    def cqt(self, x: torch.Tensor) -> torch.Tensor:
        """Magnitude CQT, ``[B, n_bins, n_frames]`` float32 (nnAudio's values)."""
        cfg = self.cfg
        single = x.dim() == 1
        x = x[None] if single else x
        if x.dim() != 2 or x.shape[-1] != cfg.n_samples:
            raise ValueError(f"audio has shape {tuple(x.shape)}: expected [B, {cfg.n_samples}] "
                             f"or [{cfg.n_samples}] samples at {cfg.sr:g} Hz")
        X = torch.fft.fft(x.to(torch.float32), n=self.n_fft)
        prod = X[:, self.idx] * self.vals
        Z = torch.zeros(x.shape[0], cfg.n_bins * self.fold, dtype=prod.dtype, device=x.device)
        Z.index_add_(1, self.dest, prod)
        y = torch.fft.ifft(Z.view(-1, cfg.n_bins, self.fold), norm="forward")
        out = y[..., :cfg.n_frames].abs()
        return out[0] if single else out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.cqt(x) / self.cfg.eps)
