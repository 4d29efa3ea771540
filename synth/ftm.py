"""Parameters -> modes of a struck rectangular membrane (FTM).

A pure mapping, kept apart from rendering: ``theta = (f0, tau, p, D, alpha)``
in, per-mode angular frequency, decay rate and gain out. The same function
serves numpy (the voice, the reference render) and torch (the differentiable
twin): it only uses arithmetic and ``sqrt``/``sin`` from the array's own module.

The equations are those of DESIGN.md. With ``n_11 = 1 + 1/alpha^2`` and
``delta = n - n_11 >= 0`` they reduce, by algebra, to a form with no
cancellation (every term is non-negative, so the ``abs`` of the design is
never active and small ``alpha`` loses no digits)::

    sigma_m   = 1/tau + p * alpha * delta / tau
    omega_m^2 = omega^2
              + delta * ((1 + a2) D^2 omega^2 + a2 omega^2 / (1 + a2)
                         + (p sqrt(1 + a2) - alpha / sqrt(1 + a2))^2 / tau^2)
              + delta^2 * (D omega alpha)^2           (a2 = alpha^2, L = 1)

so mode (1, 1) has ``omega_11 = omega`` and ``sigma_11 = 1/tau`` exactly.
``tests/test_ftm.py`` checks this against the design's formulas as written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .params import _is_torch

__all__ = ["FTMConfig", "Modes", "modal_coefficients", "mode_indices"]


@dataclass(frozen=True)
class FTMConfig:
    """Geometry and discretization of the membrane model.

    Attributes
    ----------
    modes : int
        ``M``: modes ``(m1, m2)`` with ``m1, m2 = 1..M`` (``M * M`` in all).
    x1, x2 : float
        Strike and pickup position, relative to the sides, in ``(0, 1)``.
    h : float
        Strike amplitude constant of the model.
    l0 : float
        Length of side 1 (side 2 is ``alpha * l0``).
    """

    modes: int = 10
    x1: float = 0.4
    x2: float = 0.4
    h: float = 0.03
    l0: float = math.pi

    def __post_init__(self) -> None:
        if isinstance(self.modes, bool) or not isinstance(self.modes, int) or not 1 <= self.modes <= 64:
            raise ValueError(f"FTMConfig.modes = {self.modes!r}: allowed integers 1..64")
        for name in ("x1", "x2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < v < 1.0):
                raise ValueError(f"FTMConfig.{name} = {v!r}: allowed (0, 1), relative position")
        for name in ("h", "l0"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"FTMConfig.{name} = {v!r}: allowed finite values > 0")

    @property
    def n_modes(self) -> int:
        """Number of modes on the full grid, ``M * M``."""
        return self.modes * self.modes


class Modes(NamedTuple):
    """Modal coefficients, each of shape ``[..., M*M]`` (grid order, m1 major).

    Attributes
    ----------
    omega : angular frequency of each mode, rad/s.
    sigma : decay rate of each mode, 1/s (amplitude ``exp(-sigma t)``).
    gain : amplitude of each mode's ``exp(-sigma t) sin(omega t)`` term
        (physical scale; renderers normalize the peak).
    """

    omega: Any
    sigma: Any
    gain: Any


def mode_indices(config: FTMConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mode numbers ``(m1, m2)``, each int array of shape ``[M*M]``, m1 major."""
    m = np.arange(1, config.modes + 1)
    return np.repeat(m, config.modes), np.tile(m, config.modes)


def modal_coefficients(theta: Any, config: FTMConfig = FTMConfig()) -> Modes:
    """Map physical parameters to modal coefficients.

    Parameters
    ----------
    theta : numpy array or torch tensor, shape ``[..., 5]``
        ``(f0 [Hz], tau [s], p, D, alpha)``, assumed valid (see
        :mod:`synth.params`). Torch input keeps its dtype, device and graph.
    config : FTMConfig
        Grid size and strike/pickup position.

    Returns
    -------
    Modes
        ``omega``, ``sigma``, ``gain`` of shape ``[..., M*M]``. Modes are not
        dropped here: whether one is above Nyquist depends on the sample rate,
        which the renderers apply.
    """
    if _is_torch(theta):
        import torch as xp
    else:
        xp = np
    m1_np, m2_np = mode_indices(config)
    k_np = np.sin(m1_np * np.pi * config.x1) * np.sin(m2_np * np.pi * config.x2)
    if xp is np:
        theta = np.asarray(theta, dtype=np.float64)
        m1, m2, k_m = m1_np.astype(np.float64), m2_np.astype(np.float64), k_np
    else:
        m1, m2, k_m = (xp.as_tensor(a, dtype=theta.dtype, device=theta.device)
                       for a in (m1_np, m2_np, k_np))

    omega = 2.0 * math.pi * theta[..., 0:1]
    tau, p, d, alpha = (theta[..., i:i + 1] for i in range(1, 5))
    a2 = alpha * alpha
    one_a2 = 1.0 + a2
    # L = l0 / pi cancels from frequencies and decays (EI n^2, c2 n and
    # d3 n carry L^4 n^2, L^2 n, L^2 n): delta is taken at L = 1.
    delta = (m1 * m1 - 1.0) + (m2 * m2 - 1.0) / a2
    sqrt_1a2 = xp.sqrt(one_a2)
    bracket = (one_a2 * (d * omega) ** 2 + a2 * omega**2 / one_a2
               + (p * sqrt_1a2 - alpha / sqrt_1a2) ** 2 / tau**2)
    omega_m = xp.sqrt(omega**2 + delta * bracket + (delta * d * omega * alpha) ** 2)
    sigma_m = (1.0 + p * alpha * delta) / tau
    norm = config.l0 * (alpha * config.l0) / 4.0
    gain = config.h * k_m * k_m / (omega_m * norm)
    return Modes(omega_m, sigma_m, gain)

