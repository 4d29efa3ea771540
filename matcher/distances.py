"""Batched, differentiable distances between sounds (torch; CPU or CUDA; float32/64).

- :func:`multiscale_spectral_distance` / :class:`MultiScaleSpectralDistance`: the
  multi-resolution STFT distance of auraloss's ``MultiResolutionSTFTLoss`` with its
  default settings (spectral convergence + L1 log-magnitude, averaged over resolutions).
- :func:`jtfs_distance`: Euclidean distance between feature vectors ``phi(x)``,
  ``phi(y)`` of any feature map (the matcher's JTFS); :func:`feature_distance` does the
  same for precomputed features.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Literal, Sequence

import torch

__all__ = ["MultiScaleSpectralDistance", "feature_distance", "jtfs_distance",
           "multiscale_spectral_distance"]

Reduction = Literal["mean", "none"]


def _check_signals(x: torch.Tensor, y: torch.Tensor, min_len: int = 1) -> None:
    """Raise ``ValueError``/``TypeError`` unless x, y are matching finite [B, N] or [N]."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.dim() not in (1, 2):
        raise ValueError(f"signals must be [B, N] or [N], got shape {tuple(x.shape)}")
    if x.shape[-1] < min_len:
        raise ValueError(f"signals of shape {tuple(x.shape)} are too short: N must be at "
                         f"least {min_len} samples (the largest FFT size)")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"x and y must share dtype and device, got {x.dtype}/{x.device} "
                         f"and {y.dtype}/{y.device}")
    for name, t in (("x", x), ("y", y)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} (shape {tuple(t.shape)}) contains NaN or inf")


class MultiScaleSpectralDistance(torch.nn.Module):
    """Multi-resolution STFT distance, as auraloss's ``MultiResolutionSTFTLoss()``.

    For each resolution ``r`` (FFT size, hop, Hann window length), with
    ``X = |STFT_r(x)|`` and ``Y = |STFT_r(y)|`` (``torch.stft``, ``center=True``,
    reflect padding, periodic Hann window of ``win_length`` zero-padded to the FFT size
    at its centre, unnormalized) and magnitudes floored as ``sqrt(max(|S|^2, eps))``::

        d_r = ||Y - X||_F / ||Y||_F  +  mean |log Y - log X|

    and the distance is ``mean_r d_r``. ``x`` is the estimate and ``y`` the target: the
    spectral convergence is normalized by the target, so ``d(x, y) != d(y, x)``.

    With ``reduction="mean"`` the Frobenius norms and the mean run over the whole batch
    at once (auraloss's convention: not the mean of per-item distances); with
    ``reduction="none"`` each batch item gets its own ``d``.

    Parameters
    ----------
    fft_sizes, hop_sizes, win_lengths : sequence of int
        One entry per resolution, in samples (auraloss defaults).
    eps : float
        Floor of the squared magnitude (auraloss's ``STFTLoss`` default, 1e-8, which
        ``MultiResolutionSTFTLoss`` keeps): magnitudes are at least ``sqrt(eps)``.
    """

    def __init__(self, fft_sizes: Sequence[int] = (1024, 2048, 512),
                 hop_sizes: Sequence[int] = (120, 240, 50),
                 win_lengths: Sequence[int] = (600, 1200, 240), eps: float = 1e-8) -> None:
        super().__init__()
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) > 0:
            raise ValueError("fft_sizes, hop_sizes and win_lengths need the same, nonzero "
                             f"length, got {len(fft_sizes)}, {len(hop_sizes)}, {len(win_lengths)}")
        for n, h, w in zip(fft_sizes, hop_sizes, win_lengths):
            if not (0 < w <= n and h > 0):
                raise ValueError(f"resolution (fft {n}, hop {h}, win {w}) needs "
                                 "0 < win_length <= fft_size and hop_size > 0")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.fft_sizes = tuple(int(n) for n in fft_sizes)
        self.hop_sizes = tuple(int(h) for h in hop_sizes)
        self.win_lengths = tuple(int(w) for w in win_lengths)
        self.eps = float(eps)
        # Not persistent: the windows follow from the sizes, state_dicts stay empty.
        for i, w in enumerate(self.win_lengths):
            self.register_buffer(f"window_{i}", torch.hann_window(w, dtype=torch.float64),
                                 persistent=False)

    def _magnitude(self, x: torch.Tensor, i: int) -> torch.Tensor:
        window = getattr(self, f"window_{i}").to(dtype=x.dtype, device=x.device)
        s = torch.stft(x, self.fft_sizes[i], self.hop_sizes[i], self.win_lengths[i], window,
                       center=True, pad_mode="reflect", normalized=False, onesided=True,
                       return_complex=True)
        # Clamp the power, not the magnitude: keeps sqrt and log finite and differentiable.
        return torch.sqrt(torch.clamp(s.real ** 2 + s.imag ** 2, min=self.eps))  # [B, F, T]

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                reduction: Reduction = "mean") -> torch.Tensor:
        """Distance of estimate ``x`` to target ``y``.

        Parameters
        ----------
        x, y : torch.Tensor
            Signals, ``[B, N]`` or ``[N]``, same shape, dtype and device, finite, with
            ``N >= max(fft_sizes)`` samples.
        reduction : {"mean", "none"}
            ``"mean"``: a scalar; ``"none"``: ``[B]`` (a scalar for ``[N]`` input).

        Returns
        -------
        torch.Tensor
            Dimensionless distance (0 for identical signals), dtype of the input.
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        _check_signals(x, y, min_len=max(self.fft_sizes))
        single = x.dim() == 1
        xb, yb = (x[None], y[None]) if single else (x, y)
        total = xb.new_zeros(()) if reduction == "mean" else xb.new_zeros(xb.shape[0])
        for i in range(len(self.fft_sizes)):
            mx, my = self._magnitude(xb, i), self._magnitude(yb, i)
            log_l1 = (torch.log(my) - torch.log(mx)).abs()
            if reduction == "mean":
                sc = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(my)
                total = total + sc + log_l1.mean()
            else:
                sc = (torch.linalg.vector_norm(my - mx, dim=(-2, -1))
                      / torch.linalg.vector_norm(my, dim=(-2, -1)))
                total = total + sc + log_l1.mean(dim=(-2, -1))
        total = total / len(self.fft_sizes)
        return total[0] if single and reduction == "none" else total


@lru_cache(maxsize=16)
def _cached(fft_sizes: tuple[int, ...], hop_sizes: tuple[int, ...],
            win_lengths: tuple[int, ...], eps: float, dtype: torch.dtype,
            device: torch.device) -> MultiScaleSpectralDistance:
    # One module per configuration, dtype and device: windows are built and moved once.
    return MultiScaleSpectralDistance(fft_sizes, hop_sizes, win_lengths, eps).to(
        dtype=dtype, device=device)


def multiscale_spectral_distance(x: torch.Tensor, y: torch.Tensor,
                                 fft_sizes: Sequence[int] = (1024, 2048, 512),
                                 hop_sizes: Sequence[int] = (120, 240, 50),
                                 win_lengths: Sequence[int] = (600, 1200, 240),
                                 eps: float = 1e-8,
                                 reduction: Reduction = "mean") -> torch.Tensor:
    """Multi-resolution STFT distance of estimate ``x`` to target ``y``.

    Functional form of :class:`MultiScaleSpectralDistance` (see it for the definition;
    defaults equal auraloss's ``MultiResolutionSTFTLoss()``), with a cached module per
    configuration, dtype and device.

    Parameters
    ----------
    x, y : torch.Tensor
        Estimate and target, ``[B, N]`` or ``[N]`` samples, ``N >= max(fft_sizes)``.
    fft_sizes, hop_sizes, win_lengths : sequence of int
        Per-resolution STFT settings, in samples.
    eps : float
        Floor of the squared STFT magnitude.
    reduction : {"mean", "none"}
        ``"mean"``: scalar over the batch (auraloss); ``"none"``: ``[B]``.

    Returns
    -------
    torch.Tensor
        Scalar or ``[B]``, dimensionless; differentiable in ``x`` and ``y``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    module = _cached(tuple(fft_sizes), tuple(hop_sizes), tuple(win_lengths), float(eps),
                     x.dtype if x.is_floating_point() else torch.float32, x.device)
    return module(x, y, reduction=reduction)


def feature_distance(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between feature tensors, per batch item.

    Parameters
    ----------
    fx, fy : torch.Tensor
        Features ``[B, P]`` (or ``[B, ...]``, flattened per item), or one item ``[P]``.

    Returns
    -------
    torch.Tensor
        ``||fx_b - fy_b||_2``, ``[B]`` (a scalar for ``[P]``), in feature units.
    """
    if fx.shape != fy.shape:
        raise ValueError(f"features must have the same shape, got {tuple(fx.shape)} and "
                         f"{tuple(fy.shape)}")
    if fx.dim() == 0:
        raise ValueError("features must be [B, P] or [P], got a scalar")
    if fx.dim() == 1:
        return torch.linalg.vector_norm(fx - fy)
    return torch.linalg.vector_norm((fx - fy).flatten(1), dim=1)


def jtfs_distance(x: torch.Tensor, y: torch.Tensor,
                  phi: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Euclidean distance between ``phi(x)`` and ``phi(y)`` per batch item.

    Parameters
    ----------
    x, y : torch.Tensor
        Signals, ``[B, N]`` or ``[N]``, same shape, finite.
    phi : callable
        Feature map ``[B, N] -> [B, P]`` (e.g. the matcher's JTFS module); ``[N]``
        inputs are given to it as ``[1, N]``.

    Returns
    -------
    torch.Tensor
        ``[B]`` (a scalar for ``[N]`` input), in the units of ``phi``'s output;
        symmetric in ``x`` and ``y``, differentiable where ``phi`` is.
    """
    _check_signals(x, y)
    single = x.dim() == 1
    fx, fy = phi(x[None] if single else x), phi(y[None] if single else y)
    batch = 1 if single else x.shape[0]
    if fx.dim() < 2 or fx.shape[0] != batch:
        raise ValueError(f"phi must map [B, N] to [B, P]; for B = {batch} it returned "
                         f"shape {tuple(fx.shape)}")
    d = feature_distance(fx, fy)
    return d[0] if single else d
