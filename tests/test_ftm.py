"""The parameter -> modes mapping of synth.ftm against DESIGN.md.

The design's formulas are written out literally below (``design_modes``,
including the ``abs`` under the square root and the length scale ``L``) and
evaluated in extended precision, so the cancellation they suffer for small
``alpha`` does not blur the comparison with ftm's rearranged, cancellation-free
float64 form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synth.ftm import FTMConfig, Modes, modal_coefficients, mode_indices
from synth.params import ALPHA_FLOOR, nu_to_theta

NON_DEFAULT = FTMConfig(modes=6, x1=0.3, x2=0.7, l0=2.0)
CONFIGS = [FTMConfig(), NON_DEFAULT]
CONFIG_IDS = ["default", "M6-x0.3-0.7-l2"]

# Hand-picked points: corners of the ranges and very thin membranes.
CORNERS = np.array([
    [f0, tau, p, d, alpha]
    for f0 in (40.0, 1000.0) for tau in (0.07, 0.8) for p in (1e-5, 0.2)
    for d in (1e-5, 0.3) for alpha in (1.0, 0.05)
] + [[200.0, 0.3, 1e-3, 0.3, 1e-3], [1000.0, 0.07, 0.2, 0.3, 1e-3],
     [40.0, 0.8, 1e-5, 1e-5, 1e-3]])

LD = np.longdouble
# With an 80- or 128-bit long double the literal formulas are exact enough even
# at alpha = ALPHA_FLOOR; where long double is plain float64 they lose ~D^2/alpha^2
# ulps to cancellation, so the floor case is then left out.
EXTENDED = np.finfo(LD).eps < np.finfo(np.float64).eps


def design_modes(theta: np.ndarray, config: FTMConfig = FTMConfig()) -> Modes:
    """DESIGN.md's equations, literally, in long double. theta [B, 5] -> [B, M*M]."""
    return _design(theta, config)[0]


def _design(theta: np.ndarray, config: FTMConfig) -> tuple[Modes, np.ndarray]:
    """``design_modes`` and the argument of the design's ``abs()``, ``[B, M*M]``."""
    th = np.asarray(theta, dtype=np.float64).astype(LD)
    f0, tau, p, D, alpha = (th[:, i:i + 1] for i in range(5))
    pi = LD(4) * np.arctan(LD(1))
    omega = 2 * pi * f0
    l0 = LD(config.l0)
    l2 = alpha * l0
    L = l0 / pi
    beta = alpha + 1 / alpha
    EI = L**4 * ((D * omega * alpha) ** 2 + (p * alpha / tau) ** 2)
    c2 = L**2 * (alpha * (1 / beta - p**2 * beta) / tau**2
                 + alpha * omega**2 * (1 / beta - D**2 * beta))
    d1 = 2 * (1 - p * beta) / tau
    d3 = -2 * p * alpha * L**2 / tau
    om, sg, gn, inner = [], [], [], []
    for m1 in range(1, config.modes + 1):          # m1 major, as mode_indices
        for m2 in range(1, config.modes + 1):
            n = (m1 * pi / l0) ** 2 + (m2 * pi / l2) ** 2
            sigma_m = (d1 - d3 * n) / 2
            arg = EI * n**2 + c2 * n - sigma_m**2
            omega_m = np.sqrt(np.abs(arg))
            K_m = np.sin(m1 * pi * LD(config.x1)) * np.sin(m2 * pi * LD(config.x2))
            N = l0 * l2 / 4
            gain = LD(config.h) * K_m / omega_m * K_m / N
            om.append(omega_m), sg.append(sigma_m), gn.append(gain), inner.append(arg)
    def cat(xs):
        return np.concatenate(xs, axis=1)

    return Modes(cat(om), cat(sg), cat(gn)), cat(inner)


def _random_theta(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = nu_to_theta(rng.uniform(-1.0, 1.0, size=(n, 5)))
    return theta


def _assert_modes_close(got: Modes, want: Modes, rtol: float) -> None:
    want = Modes(*(np.asarray(a, dtype=np.float64) for a in want))
    np.testing.assert_allclose(got.omega, want.omega, rtol=rtol, atol=0)
    np.testing.assert_allclose(got.sigma, want.sigma, rtol=rtol, atol=0)
    # Modes on a nodal line of the strike/pickup point have K_m = sin(k pi) ~ 1e-16
    # in either precision: compare those against 1e-12 of the row's largest gain.
    floor = 1e-12 * np.abs(want.gain).max(axis=-1, keepdims=True)
    err = np.abs(got.gain - want.gain) / np.maximum(np.abs(want.gain), floor)
    assert err.max() <= rtol, f"gain rel. error {err.max():.3e}"


# --- mode (1, 1) ---------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_fundamental_is_f0_and_tau_exactly(config):
    theta = np.concatenate([CORNERS, _random_theta(0, 200)])
    m1, m2 = mode_indices(config)
    assert (m1[0], m2[0]) == (1, 1)
    modes = modal_coefficients(theta, config)
    np.testing.assert_allclose(modes.omega[:, 0], 2 * math.pi * theta[:, 0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(modes.sigma[:, 0], 1.0 / theta[:, 1], rtol=1e-12, atol=0)
    # the fundamental is the lowest and the slowest-decaying mode
    assert (modes.omega >= modes.omega[:, :1] * (1 - 1e-12)).all()
    assert (modes.sigma >= modes.sigma[:, :1] * (1 - 1e-12)).all()
    assert np.isfinite(modes.gain).all() and (modes.gain >= 0).all()


def test_fundamental_of_the_literal_design_formulas():
    # The "check that holds by algebra" of DESIGN.md, on the literal formulas.
    # (Without an extended long double the thin corners lose digits to cancellation.)
    rtol = 1e-12 if EXTENDED else 1e-9
    want = design_modes(CORNERS)
    np.testing.assert_allclose(want.omega[:, 0].astype(float), 2 * np.pi * CORNERS[:, 0],
                               rtol=rtol)
    np.testing.assert_allclose(want.sigma[:, 0].astype(float), 1 / CORNERS[:, 1], rtol=rtol)


# --- the stable form against the design -------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_design_formulas_random(config):
    theta = _random_theta(20240611, 300)
    _assert_modes_close(modal_coefficients(theta, config), design_modes(theta, config), 1e-9)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_matches_design_formulas_corners(config):
    theta = CORNERS
    if EXTENDED:
        theta = np.concatenate([theta, [[1000.0, 0.07, 0.2, 0.3, ALPHA_FLOOR],
                                        [40.0, 0.8, 1e-5, 1e-5, ALPHA_FLOOR]]])
    _assert_modes_close(modal_coefficients(theta, config), design_modes(theta, config), 1e-9)


def test_abs_of_the_design_is_never_active():
    # ftm's docstring: every term of omega_m^2 is non-negative, so the abs() in
    # DESIGN.md never changes the result. Check on the literal formula.
    theta = np.concatenate([CORNERS, _random_theta(3, 300)])
    for config in CONFIGS:
        _, inner = _design(theta, config)
        assert (inner > 0).all()


def test_shapes_and_grid_order():
    config = FTMConfig(modes=3)
    m1, m2 = mode_indices(config)
    np.testing.assert_array_equal(m1, [1, 1, 1, 2, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(m2, [1, 2, 3, 1, 2, 3, 1, 2, 3])
    theta = _random_theta(1, 6)
    assert modal_coefficients(theta[0], config).omega.shape == (9,)
    modes = modal_coefficients(theta.reshape(2, 3, 5), config)
    for a in modes:
        assert a.shape == (2, 3, 9) and a.dtype == np.float64
    flat = modal_coefficients(theta, config)
    for a, b in zip(modes, flat):
        np.testing.assert_array_equal(a.reshape(6, 9), b)
    assert FTMConfig().n_modes == 100 and modal_coefficients(theta).gain.shape == (6, 100)


def test_strike_position_nodal_lines():
    # x = 0.4: sin(5 * 0.4 pi) = sin(2 pi) = 0, so modes with m1 or m2 = 5 or 10
    # are silent (gain ~1e-32 of the largest); every other mode is far above that.
    modes = modal_coefficients(CORNERS)
    m1, m2 = mode_indices(FTMConfig())
    silent = np.isin(m1, (5, 10)) | np.isin(m2, (5, 10))
    top = modes.gain.max(axis=-1, keepdims=True)
    assert (modes.gain[:, silent] < 1e-25 * top).all()
    assert (modes.gain[:, ~silent] > 1e-8 * top).all()


@pytest.mark.parametrize("kwargs", [
    {"modes": 0}, {"modes": 65}, {"modes": 2.0}, {"modes": True}, {"x1": 0.0}, {"x2": 1.0},
    {"x1": math.nan}, {"h": 0.0}, {"h": -1.0}, {"l0": math.inf}, {"l0": math.nan},
])
def test_config_rejects_invalid(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FTMConfig(**kwargs)


# --- torch path ------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_torch_matches_numpy(config):
    theta = np.concatenate([CORNERS, _random_theta(11, 100)])
    np_modes = modal_coefficients(theta, config)
    t_modes = modal_coefficients(torch.tensor(theta, dtype=torch.float64), config)
    for a, b in zip(t_modes, np_modes):
        assert isinstance(a, torch.Tensor) and a.dtype == torch.float64
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=0)
    t32 = modal_coefficients(torch.tensor(theta, dtype=torch.float32), config)
    for a, b in zip(t32, np_modes):
        assert a.dtype == torch.float32
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


def _jacobian_fd(theta: np.ndarray, config: FTMConfig, rel_step: float = 1e-5) -> np.ndarray:
    """Central finite differences of (omega, sigma, gain) w.r.t. theta: [3K, 5]."""
    cols = []
    for i in range(5):
        h = rel_step * theta[i]
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        cols.append((np.concatenate(modal_coefficients(up, config))
                     - np.concatenate(modal_coefficients(down, config))) / (2 * h))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_torch_gradients_match_finite_differences(config):
    theta = np.concatenate([CORNERS[[0, 5, 17, 30, 34]], _random_theta(17, 6)])

    def flat(x):
        return torch.cat(list(modal_coefficients(x, config)))

    for row in theta:
        t = torch.tensor(row, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(flat, t).numpy()      # [3K, 5]
        fd = _jacobian_fd(row, config)
        value = np.concatenate(modal_coefficients(row, config))
        # Truncation + rounding of the central difference stays below
        # ~3e-10 |f| / theta_i (measured); a wrong derivative is off by O(|f| / theta_i).
        scale = np.abs(value)[:, None] / row[None, :]
        err = np.abs(jac - fd)
        bound = 1e-6 * np.abs(fd) + 1e-8 * scale
        assert (err <= bound).all(), f"theta={row}: worst {np.max(err / (scale + 1e-300)):.2e}"
        # derivatives that are zero in closed form
        k = config.n_modes
        assert np.all(jac[k:2 * k, 0] == 0)          # sigma does not depend on f0
        assert np.all(jac[k:2 * k, 3] == 0)          # ... nor on D


def test_torch_keeps_graph_and_device():
    theta = torch.tensor(_random_theta(2, 3), dtype=torch.float64, requires_grad=True)
    modes = modal_coefficients(theta)
    (modes.omega.sum() + modes.sigma.sum() + 1e6 * modes.gain.sum()).backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    assert (theta.grad != 0).any(dim=1).all()
