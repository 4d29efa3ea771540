"""Differentiable torch twin of the membrane: batches ``[B, 5] -> [B, N]``.

The same closed-form sum as :mod:`synth.reference`, written in torch so that
gradients reach the parameters (training, the metric ``M(theta)``, refinement)
and batches run on CUDA. Output dtype and device follow the input.

Speed: each mode is a complex exponential ``exp(s_m t)`` with ``s_m = -sigma_m
+ i omega_m``. Writing ``t = t0 + t1`` (block start plus offset inside a block
of ``block`` samples) factorizes it, ``exp(s_m t0) exp(s_m t1)``, so a hit is one
batched complex matmul ``[N / block, K] @ [K, block]`` over the K modes and
only ``K * (N / block + block)`` exponentials per hit instead of ``K * N``
(about 40x faster on CPU for 2^16 samples).

Precision: mode coefficients and phases ``omega_m t`` are formed in float64
and reduced modulo ``2 pi`` before casting, so a float32 render of a 3-second
hit keeps its phase (float32 ``omega t`` alone would be off by ~0.01 rad).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .ftm import FTMConfig, modal_coefficients
from .params import ALPHA_FLOOR, nu_to_theta

__all__ = ["MembraneTwin", "clamp_nu", "render_twin"]

# nu of the aspect-ratio floor (alpha is linear on (0, 1]: nu = 2 alpha - 1)
_ALPHA_NU_FLOOR = 2 * ALPHA_FLOOR - 1.0

_TWO_PI = 2.0 * math.pi


class MembraneTwin(torch.nn.Module):
    """Batched differentiable renderer of struck membranes.

    Parameters
    ----------
    sr : float
        Sample rate in Hz (model side: 22050).
    n_samples : int
        Output length ``N`` (model side: 2**16).
    config : FTMConfig
        Membrane geometry.
    normalize : bool
        Divide each hit by its largest absolute sample (peak = 1).
    block : int
        Samples per block of the factorized time axis (see the module notes).
    """

    def __init__(self, sr: float = 22050.0, n_samples: int = 2**16,
                 config: FTMConfig = FTMConfig(), normalize: bool = True,
                 block: int = 256):
        super().__init__()
        if not (isinstance(n_samples, int) and n_samples > 0):
            raise ValueError(f"n_samples = {n_samples!r}: allowed integers >= 1")
        if not (math.isfinite(sr) and sr > 0):
            raise ValueError(f"sr = {sr!r}: allowed a positive sample rate in Hz")
        self.sr = float(sr)
        self.n_samples = n_samples
        self.config = config
        self.normalize = normalize
        if not (isinstance(block, int) and block > 0):
            raise ValueError(f"block = {block!r}: allowed integers >= 1")
        self.block = block
        # Modes on a nodal line of the strike/pickup point never sound: drop
        # them once here instead of multiplying zeros for every sample.
        probe = modal_coefficients(np.array([100.0, 0.3, 0.01, 0.01, 1.0]), config)
        live = np.flatnonzero(np.abs(probe.gain) > 1e-12 * np.abs(probe.gain).max())
        self.register_buffer("live", torch.as_tensor(live, dtype=torch.long), persistent=False)

    def forward(self, theta: torch.Tensor, velocity: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Render hits.

        Parameters
        ----------
        theta : torch.Tensor, shape ``[B, 5]`` (or ``[5]``)
            Physical parameters ``(f0 Hz, tau s, p, D, alpha)``, float32 or
            float64, on any device; gradients flow back to it.
        velocity : float or tensor of shape ``[B]``
            Peak level (normalized) or amplitude factor (unnormalized).

        Returns
        -------
        torch.Tensor, shape ``[B, N]`` (or ``[N]``), dtype and device of ``theta``.
        """
        if theta.shape[-1] != 5:
            raise ValueError(f"theta has shape {tuple(theta.shape)}: expected [B, 5] or [5]")
        single = theta.dim() == 1
        th = theta[None] if single else theta
        dtype = th.dtype if th.dtype in (torch.float32, torch.float64) else torch.float32
        modes = modal_coefficients(th.to(torch.float64), self.config)
        omega, sigma, gain = (a.index_select(-1, self.live) for a in modes)
        # Modes at or above Nyquist are dropped (a mask, so shapes stay static).
        gain = torch.where(omega < math.pi * self.sr, gain, torch.zeros_like(gain))
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        n_blocks = -(-self.n_samples // self.block)
        t1 = torch.arange(self.block, dtype=torch.float64, device=th.device) / self.sr
        t0 = torch.arange(n_blocks, dtype=torch.float64, device=th.device) * (self.block / self.sr)
        inner = self._modes(omega, sigma, t1, cdtype)                   # [B, K, block]
        outer = self._modes(omega, sigma, t0, cdtype) * gain.to(cdtype)[..., None]
        y = torch.einsum("bkj,bki->bji", outer, inner).imag            # [B, blocks, block]
        y = y.reshape(th.shape[0], -1)[:, :self.n_samples]
        if self.normalize:
            y = y / y.abs().amax(dim=-1, keepdim=True)
        if isinstance(velocity, torch.Tensor) and velocity.dim() > 0:
            velocity = velocity.to(y)[:, None]
        y = y * velocity
        return y[0] if single else y

    @staticmethod
    def _modes(omega: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor,
               cdtype: torch.dtype) -> torch.Tensor:
        """``exp((-sigma + i omega) t)``, ``[B, K, len(t)]``, phase reduced in float64."""
        phase = torch.remainder(omega[..., None] * t, _TWO_PI)
        return torch.exp(torch.complex(-sigma[..., None] * t, phase)).to(cdtype)

    def from_nu(self, nu: torch.Tensor) -> torch.Tensor:
        """Render from normalized coordinates ``nu`` ``[B, 5]`` (differentiable)."""
        return self(nu_to_theta(nu))


def clamp_nu(nu: torch.Tensor) -> torch.Tensor:
    """``nu [..., 5]`` clamped into the renderable box (differentiable inside it).

    Estimates (a tanh output, an optimizer step) can reach ``nu = -1`` for
    alpha, a zero aspect ratio the membrane cannot have: alpha's lower bound
    is :data:`~synth.params.ALPHA_FLOOR`, the others ``[-1, 1]``.
    """
    lo = torch.full_like(nu, -1.0)
    lo[..., -1] = _ALPHA_NU_FLOOR
    return torch.maximum(nu.clamp(max=1.0), lo)


def render_twin(theta: torch.Tensor, sr: float, n_samples: int,
                config: FTMConfig = FTMConfig(), velocity: float = 1.0,
                normalize: bool = True) -> torch.Tensor:
    """One-shot functional form of :class:`MembraneTwin` (builds it each call)."""
    twin = MembraneTwin(sr, n_samples, config, normalize).to(theta.device)
    return twin(theta, velocity)
