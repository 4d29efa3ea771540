"""Training losses of the matcher's encoder (all batched torch, differentiable in ``nu_hat``).

* :func:`p_loss`: parameter loss ``0.5 * mean_b ||nu_hat - nu||^2`` (MSE over the
  5 normalized parameters times 5/2, so that PNP with ``M = I``, ``lambda = 0`` is
  exactly P-loss);
* :func:`pnp_loss`: ``0.5 * mean_b d^T (M + lambda I) d`` with ``d = nu_hat - nu`` and
  ``M`` the precomputed metric of the target (or ``M + lambda diag(M)``);
* :func:`spectral_loss`: multi-scale spectral distance between the rendered
  estimate and the target audio (the DDSP baseline);
* :func:`jtfs_loss`: squared distance between JTFS features of the rendered
  estimate and of the target (DDSP with JTFS: the slow baseline PNP replaces).
"""

from __future__ import annotations

from typing import Callable

import torch

from matcher.distances import multiscale_spectral_distance

from .damping import damped_metric

__all__ = ["jtfs_loss", "p_loss", "pnp_loss", "spectral_loss"]


def _check_nu(nu_hat: torch.Tensor, nu: torch.Tensor) -> None:
    if nu_hat.shape != nu.shape or nu_hat.dim() != 2:
        raise ValueError(f"nu_hat {tuple(nu_hat.shape)} and nu {tuple(nu.shape)}: expected "
                         f"the same shape [B, K]")


def p_loss(nu_hat: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean_b ||nu_hat_b - nu_b||^2`` for ``[B, K]`` inputs (scalar)."""
    _check_nu(nu_hat, nu)
    d = nu_hat - nu
    return 0.5 * (d * d).sum(-1).mean()


def pnp_loss(nu_hat: torch.Tensor, nu: torch.Tensor, M: torch.Tensor, lam: float = 0.0,
             diagonal: bool = False) -> torch.Tensor:
    """Damped perceptual-neural-physical loss (scalar).

    Parameters
    ----------
    nu_hat, nu : torch.Tensor, shape ``[B, K]``
        Estimated and true normalized parameters.
    M : torch.Tensor, shape ``[B, K, K]``
        Metric at each target (symmetric PSD), any float dtype (cast to ``nu_hat``'s).
    lam : float
        Damping ``lambda >= 0``.
    diagonal : bool
        Damp with ``lambda diag(M)`` instead of ``lambda I``.
    """
    _check_nu(nu_hat, nu)
    if M.shape != (*nu.shape, nu.shape[-1]):
        raise ValueError(f"M has shape {tuple(M.shape)}: expected [B, K, K] = "
                         f"[{nu.shape[0]}, {nu.shape[1]}, {nu.shape[1]}]")
    if lam < 0:
        raise ValueError(f"damping lambda = {lam}: allowed >= 0")
    d = nu_hat - nu
    A = damped_metric(M.to(d.dtype), lam, diagonal)
    return 0.5 * torch.einsum("bi,bij,bj->b", d, A, d).mean()


def spectral_loss(nu_hat: torch.Tensor, target: torch.Tensor,
                  render: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Multi-scale spectral distance between ``render(nu_hat)`` and ``target`` ``[B, N]``."""
    return multiscale_spectral_distance(render(nu_hat), target.to(nu_hat.dtype))


def jtfs_loss(nu_hat: torch.Tensor, target_phi: torch.Tensor,
              render: Callable[[torch.Tensor], torch.Tensor],
              phi: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``0.5 * mean_b ||phi(render(nu_hat)) - target_phi||^2``; ``target_phi`` is ``[B, P]``."""
    f = phi(render(nu_hat))
    if f.shape != target_phi.shape:
        raise ValueError(f"JTFS features {tuple(f.shape)} and target {tuple(target_phi.shape)} "
                         f"differ in shape")
    d = f - target_phi.to(f.dtype)
    return 0.5 * (d * d).sum(-1).mean()
