"""Tympan's JTFS against kymatio's reference JTFS (scrapl-loss's copy) and on its own."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from matcher.chirps import am_fm_chirp
from matcher.distances import multiscale_spectral_distance
from matcher.jtfs import JTFS, JTFSConfig

sys.path.insert(0, str(Path(__file__).parent))
from jtfs_reference import reference_jtfs  # noqa: E402

# Small configurations that run in seconds (the reference config is in the benchmark).
SMALL = [dict(N=1024, J=6, Q=(4, 1), J_fr=2, Q_fr=1, F=4),
         dict(N=4096, J=8, Q=(8, 1), J_fr=3, Q_fr=1, F=8),
         dict(N=2048, J=7, Q=(6, 2), J_fr=2, Q_fr=1, F="global")]
# Per-path agreement with the reference, float64: the algorithm is the same up to
# summation order and the frequential rows dropped below `prune` (1e-9 of a filter's peak).
RTOL = 1e-6   # plus an absolute floor, see below


def ours(c: dict) -> JTFS:
    return JTFS(JTFSConfig(N=c["N"], J=c["J"], Q1=c["Q"][0], Q2=c["Q"][1], J_fr=c["J_fr"],
                           Q_fr=c["Q_fr"], F=c["F"]))


def signals(n: int) -> np.ndarray:
    """White noise, a Dirac, a decaying sine: [3, n] float64."""
    rng = np.random.default_rng(7)
    t = np.arange(n)
    dirac = np.zeros(n)
    dirac[n // 3] = 1.0
    tone = np.sin(2 * np.pi * 0.05 * t) * np.exp(-t / (n / 6))
    return np.stack([rng.standard_normal(n), dirac, tone])


@pytest.fixture(scope="module", params=range(len(SMALL)), ids=lambda i: f"cfg{i}")
def pair(request):
    c = SMALL[request.param]
    x = signals(c["N"])
    ref = reference_jtfs(x, dict(c, T="global", format="time"))
    return c, x, ref, ours(c)


def test_same_paths_as_the_reference(pair):
    c, _, ref, m = pair
    assert [str(k) for k in m.meta()["key"]] == [str(k) for k in ref["meta"]["key"]]
    meta = m.meta()
    np.testing.assert_array_equal(meta["order"], ref["meta"]["order"])
    spin = np.nan_to_num(ref["meta"]["spin"], nan=0.0)
    np.testing.assert_array_equal(meta["spin"], spin)
    # first-order centre frequencies (cycles/sample in the reference, Hz here)
    xi1 = ref["meta"]["xi"][:, 0]
    has = ~np.isnan(xi1)
    np.testing.assert_allclose(meta["xi1_hz"][has] / m.config.sr, xi1[has], rtol=1e-12)


def test_every_path_agrees_with_the_reference(pair):
    c, x, ref, m = pair
    S = m(torch.tensor(x)).numpy()
    R = ref["S"]
    assert S.shape == R.shape
    # Absolute floor: 1e-6 of each sound's largest coefficient (order >= 1). Near-silent
    # paths (the decaying tone's high modulation bands) differ by ~4e-9 absolute: the
    # reference's modulus is sqrt(re^2 + im^2) + 1e-12, summed over 4096 samples.
    floor = 1e-6 * np.abs(R[:, 1:]).max(axis=1, keepdims=True)
    assert np.all(np.abs(S - R) <= RTOL * np.abs(R) + floor)
    # In Phi = log1p(S / 1e-3) units, the metric's and the losses' scale:
    np.testing.assert_allclose(np.log1p(S[:, 1:] / 1e-3), np.log1p(R[:, 1:] / 1e-3), atol=1e-4)


@pytest.mark.parametrize("c", [dict(N=1024, J=6, Q=(4, 1), J_fr=2, Q_fr=1, F=4, T=64),
                               dict(N=2048, J=7, Q=(6, 1), J_fr=2, Q_fr=1, F=4, T=512)],
                         ids=["T64", "T512"])
def test_local_time_averaging_agrees_with_the_reference(c):
    x = signals(c["N"])
    ref = reference_jtfs(x, dict(c, format="time"))
    m = JTFS(JTFSConfig(N=c["N"], J=c["J"], Q1=c["Q"][0], Q2=c["Q"][1], J_fr=c["J_fr"],
                        Q_fr=c["Q_fr"], F=c["F"], T=c["T"]))
    S = m(torch.tensor(x))
    frames = int(ref["sizes"][0])
    assert S.shape == (3, m.n_paths, frames) and frames == c["N"] // 2**int(np.log2(c["T"]))
    assert [str(k) for k in m.meta()["key"]] == [str(k) for k in ref["meta"]["key"]]
    R = ref["S"].reshape(3, m.n_paths, frames)
    floor = 1e-6 * np.abs(R[:, 1:]).max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(S.numpy() - R) <= RTOL * np.abs(R) + floor)
    assert m.phi(torch.tensor(x)).shape == (3, m.n_paths - 1, frames)


def test_float32_is_close_to_float64(pair):
    c, x, _, m = pair
    s64 = m(torch.tensor(x)).numpy()
    s32 = m(torch.tensor(x, dtype=torch.float32))
    assert s32.dtype == torch.float32
    phi64, phi32 = np.log1p(s64[:, 1:] / 1e-3), np.log1p(s32.numpy()[:, 1:] / 1e-3)
    np.testing.assert_allclose(phi32, phi64, atol=2e-3)


def test_energy_behaviour_on_noise_and_dirac():
    c = SMALL[1]
    m = ours(c)
    x = signals(c["N"])
    S = m(torch.tensor(x)).numpy()
    meta = m.meta()
    # Order 0 is the sum of the reflect-padded signal (the Dirac is mirrored into the padding).
    padded = np.pad(x, ((0, 0), (m.pad_left, m.pad_right)), mode="reflect")
    np.testing.assert_allclose(S[:, 0], padded.sum(axis=1), rtol=1e-9, atol=1e-9)
    # Scaling the input scales every coefficient (the transform is 1-homogeneous).
    S2 = m(torch.tensor(2.5 * x)).numpy()
    np.testing.assert_allclose(S2, 2.5 * S, rtol=1e-9, atol=1e-12)
    # White noise spreads over all first-order bands: the spin-0 order-1 paths
    # (time-averaged scalogram, smoothed in frequency) stay within a factor 4 of
    # each other in the constant-Q region, as E|x * psi| grows like sqrt(bandwidth).
    first = (meta["order"] == 1) & (meta["spin"] == 0)
    noise = S[0, first]
    assert noise.min() > 0 and noise.max() / noise.min() < 4
    # A Dirac has a flat spectrum too: same shape as white noise's, in ratio, to 30 %.
    dirac = S[1, first]
    ratio = dirac / noise
    assert ratio.max() / ratio.min() < 1.3 * (noise.max() / noise.min())


def test_global_averaging_barely_moves_under_a_time_shift():
    cfg = JTFSConfig(N=8192, J=9, Q1=8, Q2=1, J_fr=3, F=8)
    m = JTFS(cfg)
    t = torch.arange(cfg.N, dtype=torch.float64) / cfg.sr
    hit = lambda t0: torch.sin(2 * np.pi * 440 * (t - t0)) * torch.exp(-(t - t0).clamp(min=0) / 0.03) * (t >= t0)  # noqa: E731
    a, b = m.phi(hit(0.05)), m.phi(hit(0.05 + 256 / cfg.sr))    # 11.6 ms later
    other = m.phi(torch.sin(2 * np.pi * 660 * (t - 0.05)) * torch.exp(-(t - 0.05).clamp(min=0) / 0.03) * (t >= 0.05))
    shift = (a - b).norm() / a.norm()
    change = (a - other).norm() / a.norm()
    assert shift < 0.02, shift
    assert change > 10 * shift, (shift, change)


def test_separates_modulation_rates_where_the_spectrogram_distance_does_not():
    """AM chirps with the same carrier and FM rate, differing only in AM rate (the DTFA
    tutorial's example): the JTFS distance grows with the AM-rate difference much more,
    relative to noise-level differences, than the multi-scale spectral distance."""
    cfg = JTFSConfig(N=2**14, J=11, Q1=8, Q2=2, J_fr=3, F=8)
    m = JTFS(cfg)
    make = lambda am: am_fm_chirp(torch.tensor([500.0]), torch.tensor([am]), torch.tensor([1.0]),  # noqa: E731
                                  sr=cfg.sr, n_samples=cfg.N, dtype=torch.float64)
    base, near, far = make(4.0), make(4.4), make(12.0)
    d_jtfs = lambda a, b: float((m.phi(a) - m.phi(b)).norm())  # noqa: E731
    d_mss = lambda a, b: float(multiscale_spectral_distance(a, b))  # noqa: E731
    # How much more the far chirp differs from the base than the near one does.
    gain_jtfs = d_jtfs(base, far) / d_jtfs(base, near)
    gain_mss = d_mss(base, far) / d_mss(base, near)
    assert gain_jtfs > 2.0 * gain_mss, (gain_jtfs, gain_mss)


def test_forward_mode_derivative_matches_finite_differences():
    cfg = JTFSConfig(N=2048, J=7, Q1=6, Q2=1, J_fr=2, F=4)
    m = JTFS(cfg)
    # Noise: no path is near zero, where |.| has a kink that finite differences would cross.
    x = torch.tensor(signals(cfg.N)[0])
    v = torch.tensor(np.random.default_rng(3).standard_normal(cfg.N))
    _, jvp = torch.func.jvp(m.phi, (x,), (v,))
    h = 1e-5
    fd = (m.phi(x + h * v) - m.phi(x - h * v)) / (2 * h)
    np.testing.assert_allclose(jvp.numpy(), fd.numpy(), rtol=1e-5, atol=1e-6 * fd.abs().max().item())
    # vmap over tangents, as the metric uses it
    jac = torch.func.vmap(lambda t: torch.func.jvp(m.phi, (x,), (t,))[1])(torch.stack([v, -2 * v]))
    np.testing.assert_allclose(jac[1].numpy(), -2 * jvp.numpy(), rtol=1e-9, atol=1e-12)


def test_batch_results_do_not_depend_on_batch_size():
    c = SMALL[0]
    m = ours(c)
    x = torch.tensor(signals(c["N"]))
    whole = m(x)
    for i in range(3):
        np.testing.assert_allclose(m(x[i]).numpy(), whole[i].numpy(), rtol=1e-12, atol=1e-14)


def test_reference_configuration_shape():
    m = JTFS()
    assert (m.config.N, m.config.J, m.config.Q1, m.config.Q2, m.config.F) == (2**16, 13, 12, 1, 24)
    assert m.n_pad == 2**17 and m.n_paths == len(m.meta()["key"]) == 671


@pytest.mark.parametrize("kwargs, match", [
    (dict(J=0), "J = 0"), (dict(N=100, J=8), "shorter than 2\\*\\*J"),
    (dict(F="local"), "F = 'local'"), (dict(eps=0.0), "eps = 0.0"),
    (dict(T=0), "T = 0"), (dict(N=1024, J=6, T=2048), "T = 2048"),
])
def test_bad_configuration_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JTFSConfig(**kwargs)


def test_local_averaging_shorter_than_a_second_order_filter_is_refused():
    with pytest.raises(ValueError, match="local averaging needs T >= 2\\*\\*"):
        JTFS(JTFSConfig(N=1024, J=6, Q1=4, J_fr=2, F=4, T=4))


def test_bad_input_is_named():
    m = ours(SMALL[0])
    with pytest.raises(ValueError, match=r"expected \[B, 1024\]"):
        m(torch.zeros(2, 1000))
    with pytest.raises(TypeError, match="float tensor"):
        m(torch.zeros(2, 1024, dtype=torch.int64))


def test_silence_has_finite_derivatives():
    # |z| at z = 0 has a kink; the metric and the losses must never see NaN from it.
    m = ours(SMALL[0])
    x, v = torch.zeros(SMALL[0]["N"], dtype=torch.float64), torch.ones(SMALL[0]["N"], dtype=torch.float64)
    value, tangent = torch.func.jvp(m.phi, (x,), (v,))
    assert torch.isfinite(value).all() and torch.isfinite(tangent).all()
    assert value.abs().max() < 1e-20
