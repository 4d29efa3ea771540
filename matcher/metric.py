"""The PNP metric ``M(theta) = J^T J``, ``J = dPhi(g(nu)) / dnu``, by forward-mode AD.

``g`` is the differentiable twin rendered from normalized coordinates
(:meth:`synth.twin.MembraneTwin.from_nu`) and ``Phi`` a perceptual
representation ``[B, N] -> [B, P]`` (the project's is
``matcher.jtfs.JTFS.reference().phi``). ``J`` has only 5 columns against
``P`` (thousands of) rows, so forward mode wins: one Jacobian-vector product
per basis direction of ``nu``, the five of them run as one ``vmap`` so the
primal render is shared.

Requirements on ``phi`` (and on the twin, which meets them): every op must have
a forward-mode AD (jvp) rule and a vmap batching rule, and rows must be
independent (row ``b`` of the output depends on row ``b`` of the input only; no
batch statistics). Independence is what lets one tangent ``e_k`` per batch give
every row's column ``k`` at once.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from synth.twin import MembraneTwin

__all__ = ["StftTestPhi", "jacobian", "metric"]

Phi = Callable[[torch.Tensor], torch.Tensor]
N_PARAMS = 5


def jacobian(nu: torch.Tensor | np.ndarray, twin: MembraneTwin, phi: Phi,
             chunk: int | None = None) -> torch.Tensor:
    """Jacobian of ``nu -> phi(twin.from_nu(nu))`` for each row, by forward mode.

    Parameters
    ----------
    nu : tensor or array, shape ``[B, 5]``
        Normalized coordinates in ``[-1, 1]``. Tensors keep their dtype and
        device; numpy input becomes a float64 CPU tensor.
    twin : MembraneTwin
        Renderer (on ``nu``'s device); sample rate and length are its own.
    phi : callable ``[B, N] -> [B, P]``
        Perceptual representation; see the module docstring for its constraints.
    chunk : int, optional
        Rows per forward pass (bounds memory: the twin holds about
        ``6 * chunk * modes * twin.chunk`` floats); default all at once.

    Returns
    -------
    torch.Tensor, shape ``[B, P, 5]``
        ``J[b, :, k] = dPhi / dnu_k`` at row ``b``, in ``phi``'s output dtype.
    """
    nu = _as_tensor(nu)
    step = nu.shape[0] if chunk is None else _check_chunk(chunk)
    parts = [_jacobian_rows(nu[i:i + step], twin, phi) for i in range(0, nu.shape[0], step)]
    if not parts:
        raise ValueError("nu has 0 rows: expected shape [B, 5] with B >= 1")
    return torch.cat(parts, dim=0)


def metric(nu: torch.Tensor | np.ndarray, twin: MembraneTwin, phi: Phi,
           chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric ``M = J^T J`` and its eigenvalues, for each row of ``nu``.

    Parameters are those of :func:`jacobian`.

    Returns
    -------
    M : torch.Tensor, shape ``[B, 5, 5]``, float64
        Exactly symmetric (averaged with its transpose), positive semi-definite
        up to rounding. Units: ``Phi`` units squared per unit of ``nu`` squared.
        Accumulated in float64 even for a float32 ``J``: the small eigenvalues
        (flat directions) are what the PNP damping has to see.
    eigenvalues : torch.Tensor, shape ``[B, 5]``, float64
        Ascending (``torch.linalg.eigvalsh``).
    """
    nu = _as_tensor(nu)
    step = nu.shape[0] if chunk is None else _check_chunk(chunk)
    ms = []
    for i in range(0, nu.shape[0], step):
        jac = _jacobian_rows(nu[i:i + step], twin, phi).to(torch.float64)
        m = jac.mT @ jac
        ms.append(0.5 * (m + m.mT))  # IEEE addition commutes: exactly symmetric
    if not ms:
        raise ValueError("nu has 0 rows: expected shape [B, 5] with B >= 1")
    m = torch.cat(ms, dim=0)
    return m, torch.linalg.eigvalsh(m)


def _jacobian_rows(nu: torch.Tensor, twin: MembraneTwin, phi: Phi) -> torch.Tensor:
    b = nu.shape[0]

    def features(x: torch.Tensor) -> torch.Tensor:
        return phi(twin.from_nu(x))

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(features, (nu,), (tangent,))[1]

    # Tangent k is e_k on every row: rows are independent, so the output's row
    # b is column k of row b's Jacobian. [5, B, 5] -> [5, B, P] -> [B, P, 5].
    basis = torch.eye(N_PARAMS, dtype=nu.dtype, device=nu.device)
    tangents = basis[:, None, :].expand(N_PARAMS, b, N_PARAMS)
    cols = torch.func.vmap(column)(tangents)
    if cols.dim() != 3:
        raise ValueError(f"phi returned shape {tuple(cols.shape[1:])} for a batch of {b}: "
                         "expected [B, P]")
    return cols.permute(1, 2, 0)


def _as_tensor(nu: torch.Tensor | np.ndarray) -> torch.Tensor:
    if not isinstance(nu, torch.Tensor):
        nu = torch.as_tensor(np.asarray(nu, dtype=np.float64))
    if nu.dim() != 2 or nu.shape[1] != N_PARAMS:
        raise ValueError(f"nu has shape {tuple(nu.shape)}: expected [B, 5]")
    if not nu.is_floating_point():
        raise ValueError(f"nu has dtype {nu.dtype}: expected float32 or float64")
    return nu.detach()


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk = {chunk!r}: allowed integers >= 1 (rows per pass)")
    return chunk


class StftTestPhi(torch.nn.Module):
    """Stand-in ``Phi`` for tests and smoke runs: a fixed random map of a log STFT.

    ``x [B, N] -> log1p(|STFT x| / 1e-3)``, averaged over ``time_bands`` equal
    time segments, then projected by a fixed Gaussian matrix to ``n_out``
    values. Built from matmuls and elementwise ops only, so it has forward-mode
    and vmap rules everywhere; deterministic for a given ``seed``. It is *not*
    perceptual: use it to exercise the pipeline, never to train.

    Parameters
    ----------
    n_samples : int
        Input length ``N`` (at least ``n_fft``).
    n_fft, hop : int
        Frame length and hop in samples (Hann window).
    time_bands : int
        Segments the frames are averaged over.
    n_out : int
        Output size ``P``.
    seed : int
        Seed of the projection.
    """

    def __init__(self, n_samples: int, n_fft: int = 256, hop: int = 128, time_bands: int = 8,
                 n_out: int = 64, seed: int = 0):
        super().__init__()
        if n_samples < n_fft:
            raise ValueError(f"n_samples = {n_samples}: StftTestPhi needs at least n_fft = "
                             f"{n_fft} samples")
        self.n_fft, self.hop = n_fft, hop
        n_frames = 1 + (n_samples - n_fft) // hop
        bands = min(time_bands, n_frames)
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
        angle = 2 * math.pi * n[:, None] * k[None, :] / n_fft
        self.register_buffer("cos", window[:, None] * torch.cos(angle))   # [n_fft, F]
        self.register_buffer("sin", window[:, None] * torch.sin(angle))
        # Averaging matrix of frames into equal bands, [T, bands].
        band_of = torch.arange(n_frames) * bands // n_frames
        pool = torch.nn.functional.one_hot(band_of, bands).to(torch.float64)
        self.register_buffer("pool", pool / pool.sum(0, keepdim=True))
        gen = torch.Generator().manual_seed(seed)
        n_in = bands * k.numel()
        self.register_buffer("proj", torch.randn(n_in, n_out, generator=gen, dtype=torch.float64)
                             / math.sqrt(n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N] -> [B, n_out]`` in ``x``'s dtype."""
        frames = x.unfold(-1, self.n_fft, self.hop)                 # [B, T, n_fft]
        re, im = frames @ self.cos.to(x), frames @ self.sin.to(x)    # [B, T, F]
        logmag = torch.log1p(torch.sqrt(re * re + im * im + 1e-18) / 1e-3)
        pooled = logmag.mT @ self.pool.to(x)                          # [B, F, bands]
        return pooled.flatten(-2) @ self.proj.to(x)
