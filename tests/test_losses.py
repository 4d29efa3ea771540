"""Training losses and damping schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matcher.jtfs import JTFS, JTFSConfig
from synth.twin import MembraneTwin
from training.damping import Damping, damped_metric, make_damping
from training.losses import jtfs_loss, p_loss, pnp_loss, spectral_loss
from matcher.metric import metric


def batch(b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    nu = torch.rand(b, 5, generator=g, dtype=torch.float64) * 1.6 - 0.8
    nu_hat = nu + 0.1 * torch.randn(b, 5, generator=g, dtype=torch.float64)
    a = torch.randn(b, 5, 5, generator=g, dtype=torch.float64)
    return nu_hat, nu, a @ a.mT                     # M symmetric PSD


def test_pnp_is_p_loss_when_m_is_identity_and_no_damping():
    nu_hat, nu, _ = batch()
    eye = torch.eye(5, dtype=torch.float64).expand(6, 5, 5)
    assert pnp_loss(nu_hat, nu, eye, 0.0).item() == pytest.approx(p_loss(nu_hat, nu).item(), rel=1e-14)
    # and P-loss is the per-parameter MSE times 5/2
    mse = torch.nn.functional.mse_loss(nu_hat, nu).item()
    assert p_loss(nu_hat, nu).item() == pytest.approx(2.5 * mse, rel=1e-14)


@pytest.mark.parametrize("lam, diagonal", [(0.0, False), (0.3, False), (0.3, True)])
def test_pnp_gradient_is_the_quadratic_forms(lam, diagonal):
    nu_hat, nu, M = batch()
    nu_hat.requires_grad_(True)
    loss = pnp_loss(nu_hat, nu, M, lam, diagonal)
    (grad,) = torch.autograd.grad(loss, nu_hat)
    # closed form: d/d nu_hat of 0.5 mean_b d^T A d = A d / B (A symmetric)
    A = M + lam * (torch.diag_embed(torch.diagonal(M, dim1=-2, dim2=-1)) if diagonal
                   else torch.eye(5, dtype=M.dtype))
    d = (nu_hat - nu).detach()
    np.testing.assert_allclose(grad.numpy(), (torch.einsum("bij,bj->bi", A, d) / 6).numpy(),
                               rtol=1e-12, atol=1e-15)


def test_pnp_approximates_the_jtfs_loss_to_second_order():
    # PNP is the Gauss-Newton form of the JTFS loss: for a small step d,
    # 0.5 ||Phi(g(nu + d)) - Phi(g(nu))||^2 = 0.5 d^T M d + O(|d|^3). The loss is steep
    # (eigenvalues of M here span 0.6 .. 3e5) and has kinks (the twin's peak
    # normalization, |.|), so the check uses small steps: measured errors 1.2 % and 0.3 %.
    cfg = JTFSConfig(N=4096, J=8, Q1=8, Q2=1, J_fr=3, F=8)
    jtfs, twin = JTFS(cfg), MembraneTwin(sr=22050.0, n_samples=cfg.N)
    nu = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.4]], dtype=torch.float64)
    M, _ = metric(nu, twin, jtfs.phi)
    direction = torch.tensor([[0.3, 0.5, -0.2, 0.4, 0.6]], dtype=torch.float64)
    errors = []
    for h in (1e-3, 1e-4):
        nu_hat = nu + h * direction
        exact = jtfs_loss(nu_hat, jtfs.phi(twin.from_nu(nu)), twin.from_nu, jtfs.phi).item()
        approx = pnp_loss(nu_hat, nu, M).item()
        errors.append(abs(exact - approx) / exact)
    assert max(errors) < 0.05, errors
    assert errors[1] < errors[0], errors              # shrinks with the step


def test_spectral_and_jtfs_losses_vanish_at_the_target_and_have_gradients():
    cfg = JTFSConfig(N=2048, J=7, Q1=6, Q2=1, J_fr=2, F=4)
    jtfs, twin = JTFS(cfg), MembraneTwin(sr=22050.0, n_samples=cfg.N)
    nu = torch.tensor([[0.0, 0.2, -0.1, 0.3, 0.5], [0.4, -0.3, 0.2, -0.2, 0.1]],
                      dtype=torch.float64)
    target = twin.from_nu(nu)
    assert spectral_loss(nu, target, twin.from_nu).item() == pytest.approx(0.0, abs=1e-12)
    assert jtfs_loss(nu, jtfs.phi(target), twin.from_nu, jtfs.phi).item() == pytest.approx(0.0, abs=1e-20)
    nu_hat = (nu + 0.1).requires_grad_(True)
    for loss in (spectral_loss(nu_hat, target, twin.from_nu),
                 jtfs_loss(nu_hat, jtfs.phi(target), twin.from_nu, jtfs.phi)):
        (g,) = torch.autograd.grad(loss, nu_hat)
        assert loss.item() > 0 and torch.isfinite(g).all() and g.abs().sum() > 0


def test_loss_inputs_are_checked():
    nu_hat, nu, M = batch()
    with pytest.raises(ValueError, match="same shape"):
        p_loss(nu_hat, nu[:, :4])
    with pytest.raises(ValueError, match=r"expected \[B, K, K\]"):
        pnp_loss(nu_hat, nu, M[:, :4, :4])
    with pytest.raises(ValueError, match="lambda = -1"):
        pnp_loss(nu_hat, nu, M, -1.0)


# ---------------------------------------------------------------------- damping
def test_constant_and_scheduled_damping():
    c = Damping("constant", 0.5)
    assert [c.on_epoch_end(v) for v in (3.0, 1.0, 2.0)] == [0.5, 0.5, 0.5]
    s = Damping("scheduled", 1.0, decay=0.5, floor=0.1)
    assert [s.on_epoch_end() for _ in range(5)] == [0.5, 0.25, 0.125, 0.1, 0.1]


def test_adaptive_damping_shrinks_on_improvement_grows_otherwise_within_bounds():
    a = Damping("adaptive", 1.0, shrink=0.5, grow=4.0, lam_min=0.2, lam_max=8.0)
    lams = [a.on_epoch_end(v) for v in (1.0, 0.9, 0.95, 0.8, 0.7, 0.6, 0.5, float("nan"),
                                        0.6, 0.6, 0.6)]
    assert lams == [0.5, 0.25, 1.0, 0.5, 0.25, 0.2, 0.2, 0.8, 3.2, 8.0, 8.0]
    with pytest.raises(ValueError, match="needs the validation loss"):
        a.on_epoch_end(None)


def test_diagonal_damping_scales_by_the_metric_diagonal():
    _, _, M = batch()
    d = Damping("diagonal", 0.25)
    expected = M.clone()
    idx = torch.arange(5)
    expected[:, idx, idx] *= 1.25
    np.testing.assert_allclose(d.apply(M).numpy(), expected.numpy(), rtol=1e-15)
    np.testing.assert_allclose(damped_metric(M, 0.25).numpy(),
                               (M + 0.25 * torch.eye(5, dtype=M.dtype)).numpy(), rtol=1e-15)


def test_damping_state_round_trips_for_resume():
    a = Damping("adaptive", 1.0)
    for v in (1.0, 0.5, 0.7):
        a.on_epoch_end(v)
    b = make_damping({"kind": "adaptive", "lam": 1.0})
    b.load_state_dict(a.state_dict())
    assert (b.lam, b.epoch, b.best) == (a.lam, a.epoch, a.best)
    assert b.on_epoch_end(0.4) == a.on_epoch_end(0.4)
    with pytest.raises(ValueError, match="state is for 'adaptive'"):
        Damping("constant").load_state_dict(a.state_dict())


@pytest.mark.parametrize("spec, match", [
    ("newton", "damping kind 'newton'"), ({"kind": "scheduled", "decay": 1.5}, "decay = 1.5"),
    ({"kind": "adaptive", "grow": 0.5}, "grow = 0.5"), ({"kind": "constant", "lam": -1}, "lam = -1"),
    ({"kind": "constant", "speed": 2}, "option\\(s\\) speed"), (3, "allowed a kind name"),
])
def test_bad_damping_specs_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        make_damping(spec)


def test_no_damping_spec_means_zero():
    assert make_damping(None).lam == 0.0 and math.isinf(make_damping(None).best)
