"""matcher.distances against independent numpy references; matcher.chirps against
the analytic signal (scipy.signal.hilbert)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from matcher.chirps import am_fm_chirp
from matcher.distances import (MultiScaleSpectralDistance, feature_distance, jtfs_distance,
                               multiscale_spectral_distance)

RES = ((1024, 2048, 512), (120, 240, 50), (600, 1200, 240))  # auraloss defaults
SMALL = dict(fft_sizes=(32, 16), hop_sizes=(8, 4), win_lengths=(24, 16))


def _np_mag(x: np.ndarray, n_fft: int, hop: int, win: int, eps: float) -> np.ndarray:
    """|STFT| as torch.stft(center=True, reflect) with a periodic Hann window: [B, F, T]."""
    w = np.zeros(n_fft)
    left = (n_fft - win) // 2
    w[left:left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    xp = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    n_frames = 1 + (xp.shape[-1] - n_fft) // hop
    frames = np.stack([xp[:, k * hop:k * hop + n_fft] for k in range(n_frames)], axis=-1)
    s = np.fft.rfft(frames * w[None, :, None], axis=1)
    return np.sqrt(np.maximum(np.abs(s) ** 2, eps))


def _np_mss(x: np.ndarray, y: np.ndarray, res=RES, eps: float = 1e-8,
            per_item: bool = False) -> np.ndarray:
    total = 0.0
    for n_fft, hop, win in zip(*res):
        mx, my = _np_mag(x, n_fft, hop, win, eps), _np_mag(y, n_fft, hop, win, eps)
        axes = (1, 2) if per_item else None
        sc = (np.sqrt(((my - mx) ** 2).sum(axis=axes)) / np.sqrt((my ** 2).sum(axis=axes)))
        total = total + sc + np.abs(np.log(my) - np.log(mx)).mean(axis=axes)
    return total / len(res[0])


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4096, generator=g, dtype=torch.float64)
    y = 0.5 * x + 0.3 * torch.randn(3, 4096, generator=g, dtype=torch.float64)
    y[1, 1000:3000] = 0.0  # silence exercises the eps floor
    return x, y


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_mss_matches_numpy(pair, reduction):
    x, y = pair
    got = multiscale_spectral_distance(x, y, reduction=reduction).numpy()
    want = _np_mss(x.numpy(), y.numpy(), per_item=reduction == "none")
    assert got.shape == (() if reduction == "mean" else (3,))
    np.testing.assert_allclose(got, want, rtol=1e-10)  # float64: same sums, other order


def test_mss_float32_close_to_float64(pair):
    x, y = pair
    d32 = multiscale_spectral_distance(x.float(), y.float(), reduction="none")
    d64 = multiscale_spectral_distance(x, y, reduction="none")
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d64, rtol=1e-4, atol=0)


def test_mss_zero_for_identical(pair):
    x, _ = pair
    assert multiscale_spectral_distance(x, x).item() == 0.0
    assert torch.equal(multiscale_spectral_distance(x, x, reduction="none"), torch.zeros(3,
                       dtype=torch.float64))


def test_mss_is_asymmetric_as_defined(pair):
    # |STFT(2x)| = 2|STFT(x)|: SC is 1/2 against target 2x, 1 against target x; the
    # log term is ln 2 both ways.
    x, _ = pair
    d_xy = multiscale_spectral_distance(x, 2 * x, reduction="none")
    d_yx = multiscale_spectral_distance(2 * x, x, reduction="none")
    torch.testing.assert_close(d_xy, torch.full((3,), 0.5 + math.log(2), dtype=x.dtype),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(d_yx, torch.full((3,), 1.0 + math.log(2), dtype=x.dtype),
                               rtol=1e-6, atol=0)


def test_mss_batch_equals_singles_and_mean_is_global(pair):
    x, y = pair
    batch = multiscale_spectral_distance(x, y, reduction="none")
    singles = torch.stack([multiscale_spectral_distance(x[i], y[i], reduction="none")
                           for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=1e-12, atol=0)
    assert multiscale_spectral_distance(x[0], y[0]).shape == ()
    # auraloss's "mean": Frobenius norms over the whole batch, not the mean of items.
    assert not torch.isclose(multiscale_spectral_distance(x, y), batch.mean(), rtol=1e-6)


def test_mss_module_buffers_and_function_agree(pair):
    x, y = pair
    module = MultiScaleSpectralDistance()
    assert [b.shape[0] for b in module.buffers()] == list(RES[2])
    assert module.state_dict() == {}
    module = module.double()
    torch.testing.assert_close(module(x, y, reduction="none"),
                               multiscale_spectral_distance(x, y, reduction="none"))


@pytest.fixture
def one_thread():
    # gradcheck runs hundreds of tiny forwards: threads only add contention there.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_mss_gradcheck(one_thread):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 48, generator=g, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda a, b: multiscale_spectral_distance(a, b, reduction=reduction, **SMALL),
            (x, y))


@pytest.mark.parametrize("x, y, error, match", [
    (torch.zeros(2, 4096), torch.zeros(3, 4096), ValueError, "same shape"),
    (torch.zeros(2, 1000), torch.zeros(2, 1000), ValueError, r"\(2, 1000\).*2048"),
    (torch.zeros(1, 2, 4096), torch.zeros(1, 2, 4096), ValueError, r"\[B, N\] or \[N\]"),
    (torch.full((4096,), float("nan")), torch.zeros(4096), ValueError, "NaN"),
    (torch.zeros(4096, dtype=torch.int64), torch.zeros(4096), TypeError, "floating"),
])
def test_mss_bad_inputs(x, y, error, match):
    with pytest.raises(error, match=match):
        multiscale_spectral_distance(x, y)


def test_mss_bad_settings():
    with pytest.raises(ValueError, match="reduction"):
        multiscale_spectral_distance(torch.zeros(64), torch.zeros(64), reduction="sum", **SMALL)
    with pytest.raises(ValueError, match="win_length <= fft_size"):
        MultiScaleSpectralDistance((16,), (4,), (32,))


def test_jtfs_distance_matches_numpy(pair):
    x, y = pair
    phi = lambda s: s.abs().cumsum(-1)  # noqa: E731 - any [B, N] -> [B, P] map
    want = np.linalg.norm(np.cumsum(np.abs(x.numpy()), -1) - np.cumsum(np.abs(y.numpy()), -1),
                          axis=-1)
    np.testing.assert_allclose(jtfs_distance(x, y, phi).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(jtfs_distance(x[1], y[1], phi).numpy(), want[1], rtol=1e-12)
    np.testing.assert_allclose(feature_distance(phi(x), phi(y)).numpy(), want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[B, P\]"):
        jtfs_distance(x, y, lambda s: s.sum())
    with pytest.raises(ValueError, match="NaN"):
        jtfs_distance(x, y * float("inf"), phi)


# --- chirps ---------------------------------------------------------------------------

SR, N = 22050, 2 ** 16


def _measured_if(x: np.ndarray) -> np.ndarray:
    """Instantaneous frequency (Hz) between samples, from the analytic signal's phase."""
    return np.diff(np.unwrap(np.angle(scipy.signal.hilbert(x)))) * SR / (2 * np.pi)


@pytest.mark.parametrize("fc, fm", [(1000.0, 0.5), (2000.0, -1.0), (440.0, 0.0)])
def test_chirp_instantaneous_frequency(fc, fm):
    x = am_fm_chirp(fc, 0.0, fm, sr=SR, n_samples=N, dtype=torch.float64).numpy()
    t_mid = (np.arange(N - 1) + 0.5 - N // 2) / SR  # between samples, from the middle
    middle = slice(N // 4, 3 * N // 4)
    np.testing.assert_allclose(_measured_if(x)[middle], fc * 2 ** (fm * t_mid[middle]),
                               rtol=0.01)


def test_chirp_am_rate():
    am = 7.3
    x = am_fm_chirp(1500.0, am, 0.25, sr=SR, n_samples=N, dtype=torch.float64).numpy()
    env = np.abs(scipy.signal.hilbert(x))
    spec = np.abs(np.fft.rfft(env - env.mean(), n=8 * N))  # zero-padded: 0.04 Hz bins
    f = np.fft.rfftfreq(8 * N, 1 / SR)
    band = (f > 1.0) & (f < 100.0)  # past the window's own lobe around 0 Hz
    assert abs(f[band][np.argmax(spec[band])] - am) < 0.5


def test_chirp_batch_and_gradient():
    fc = torch.tensor([500.0, 800.0], dtype=torch.float64)
    am = torch.tensor([0.0, 4.0], dtype=torch.float64)
    fm = torch.tensor([0.0, -0.5], dtype=torch.float64, requires_grad=True)
    xb = am_fm_chirp(fc, am, fm, n_samples=4096)
    assert xb.shape == (2, 4096) and xb.dtype == torch.float64
    for i in range(2):
        torch.testing.assert_close(xb[i], am_fm_chirp(float(fc[i]), float(am[i]),
                                                      float(fm[i].detach()), n_samples=4096,
                                                      dtype=torch.float64))
    xb.square().sum().backward()  # fm = 0 sits on the removable singularity
    assert torch.isfinite(fm.grad).all() and fm.grad[0] != 0
    assert am_fm_chirp(440.0, 0.0, 0.0, duration=0.5).shape == (SR // 2,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(carrier_hz=8000.0, am_hz=0.0, fm_oct_per_s=2.0), "carrier_hz / fm_oct_per_s"),
    (dict(carrier_hz=torch.tensor([500.0, 12000.0]), am_hz=0.0, fm_oct_per_s=0.0),
     r"carrier_hz / fm_oct_per_s \(batch item 1\)"),
    (dict(carrier_hz=500.0, am_hz=20000.0, fm_oct_per_s=0.0), "am_hz"),
    (dict(carrier_hz=-5.0, am_hz=0.0, fm_oct_per_s=0.0), "carrier_hz must"),
])
def test_chirp_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        am_fm_chirp(**kwargs, sr=SR, n_samples=N)
