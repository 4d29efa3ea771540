"""Rendering: the three implementations agree, and the audio has the physics.

- numpy reference (closed form, float64) is the independent reference;
- the Numba voice (recursive phasors, streamed in blocks) must match it for any
  block size and sample rate, until it goes idle at -100 dB;
- the torch twin (float64 and float32) must match it, for any batch size;
- the rendered audio itself has its fundamental at f0 and decays with tau,
  measured by signal processing that knows nothing of the model;
- nothing is rendered at or above Nyquist, so nothing aliases.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import signal

from synth.ftm import Modes, modal_coefficients
from synth.params import DrumParams, theta_to_nu
from synth.reference import audible_modes, peak_amplitude, render_reference
from synth.twin import MembraneTwin, render_twin
from synth.voice import IDLE_LEVEL, DrumVoice, VoicePreset

N = 2**15
RATES = [44100.0, 48000.0, 22050.0]
BLOCKS = [1, 64, 65, 8193]

# Spread over the ranges of every parameter, including the extremes.
AGREE_SETS = {
    "low-thin": (40.0, 0.8, 1e-5, 0.3, 0.05),          # f0, tau, D at max; p min; thin
    "high-short-square": (1000.0, 0.07, 0.2, 1e-5, 1.0),  # f0, p max; tau, D min; square
    "mid": (230.0, 0.35, 3e-3, 0.02, 0.6),
    "sliver": (90.0, 0.5, 0.05, 1e-3, 1e-3),          # alpha tiny: few modes below Nyquist
}

# Tolerances, in units of full scale (every hit peaks at 1):
VOICE_TOL = 1e-6        # voice into a float32 buffer vs reference (observed ~3e-8)
VOICE_TOL_F64 = 1e-9    # voice into a float64 buffer vs reference (observed ~1e-13)
TWIN64_TOL = 1e-10      # twin float64 vs reference (observed ~2e-14)
TWIN32_TOL = 2e-5       # twin float32 vs reference (observed up to ~1.1e-5, low-thin)
BLOCK_TOL = 1e-9        # voice, block 1 vs block 8193, while both sound (observed ~1e-13)


@functools.lru_cache(maxsize=None)
def reference(theta: tuple, sr: float, n: int = N) -> np.ndarray:
    out = render_reference(DrumParams(*theta), sr, n)
    out.setflags(write=False)
    return out


def render_voice(theta, sr: float, n: int, block: int, dtype=np.float64,
                 velocity: float = 1.0) -> tuple[np.ndarray, int]:
    """Stream a hit through a DrumVoice in blocks of ``block`` samples.

    Returns the samples and the index at which the voice stops sounding
    (``DrumVoice.stops_at``, fixed at note-on; ``n`` if later).
    """
    voice = DrumVoice(sr)
    voice.note_on(DrumParams(*theta), velocity)
    out = np.zeros(n, dtype)
    for start in range(0, n, block):
        voice.render_into(out[start:start + block])
    return out, min(voice.stops_at, n)


def assert_matches_reference(out, idle_at, ref, tol):
    """``out`` equals ``ref`` while the voice sounds; after it idles it is exactly
    silent and the reference is below the idle level (-100 dB)."""
    err = np.abs(out[:idle_at] - ref[:idle_at]).max()
    assert err <= tol, f"max error {err:.3e} > {tol:.1e} (idle at {idle_at})"
    assert np.all(out[idle_at:] == 0.0)
    if idle_at < len(ref):
        assert np.abs(ref[idle_at:]).max() < IDLE_LEVEL


# --- voice vs reference --------------------------------------------------------

@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("name", AGREE_SETS)
def test_voice_matches_reference(name, sr, block):
    theta = AGREE_SETS[name]
    ref = reference(theta, sr)
    out, idle_at = render_voice(theta, sr, N, block)
    assert idle_at > sr * 0.5  # the comparison covers at least half a second of sound
    assert_matches_reference(out, idle_at, ref, VOICE_TOL_F64)


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("name", AGREE_SETS)
def test_voice_float32_buffer_matches_reference(name, sr):
    theta = AGREE_SETS[name]
    out, idle_at = render_voice(theta, sr, N, 256, dtype=np.float32)
    assert out.dtype == np.float32
    assert_matches_reference(out.astype(np.float64), idle_at, reference(theta, sr), VOICE_TOL)


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("name", AGREE_SETS)
def test_voice_independent_of_block_size(name, sr):
    theta = AGREE_SETS[name]
    a, idle_a = render_voice(theta, sr, N, 1)
    b, idle_b = render_voice(theta, sr, N, 8193)
    c, idle_c = render_voice(theta, sr, N, 4)
    both = min(idle_a, idle_b, idle_c)
    assert np.abs(a[:both] - b[:both]).max() <= BLOCK_TOL
    assert np.abs(a[:both] - c[:both]).max() <= BLOCK_TOL
    # Idling is decided at block ends, so where one stream has gone idle and the
    # other still plays out the tail, they differ by less than the idle level.
    assert np.abs(a - b).max() < IDLE_LEVEL


def test_voice_blocks_of_every_small_size():
    theta = AGREE_SETS["mid"]
    sr = 48000.0
    ref = reference(theta, sr)
    voice = DrumVoice(sr)
    voice.note_on(DrumParams(*theta))
    out = np.zeros(N)
    sizes = [0, 1, 2, 3, 4, 5, 7, 8, 9, 0, 31, 100, 1000]
    start = 0
    for i in range(10_000):
        size = sizes[i % len(sizes)]
        voice.render_into(out[start:start + size])
        start += size
        if start >= N:
            break
    assert voice.active
    assert np.abs(out - ref).max() <= VOICE_TOL_F64


# --- twin vs reference -----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("name", AGREE_SETS)
def test_twin_matches_reference(name, sr, dtype):
    theta = AGREE_SETS[name]
    twin = MembraneTwin(sr, N)
    y = twin(torch.tensor(theta, dtype=dtype))
    assert y.shape == (N,) and y.dtype == dtype
    err = np.abs(y.numpy().astype(np.float64) - reference(theta, sr)).max()
    assert err <= (TWIN64_TOL if dtype == torch.float64 else TWIN32_TOL), f"{err:.3e}"


BATCH = np.array([AGREE_SETS[k] for k in AGREE_SETS]
                 + [(55.0, 0.1, 0.15, 0.2, 0.33), (600.0, 0.75, 1e-4, 1e-4, 0.9),
                    (140.0, 0.2, 2e-5, 5e-5, 0.15)])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)],
                         ids=["f64", "f32"])
def test_twin_independent_of_batch_size(dtype, tol):
    assert BATCH.shape == (7, 5)
    n = 8192
    twin = MembraneTwin(22050.0, n, block=300)      # blocks that do not divide n
    batch = twin(torch.tensor(BATCH, dtype=dtype))
    assert batch.shape == (7, n)
    for i, row in enumerate(BATCH):
        single = twin(torch.tensor(row, dtype=dtype))
        assert np.abs(batch[i].numpy() - single.numpy()).max() <= tol
    pair = twin(torch.tensor(BATCH[[5, 2]], dtype=dtype))
    assert np.abs(pair.numpy() - batch[[5, 2]].numpy()).max() <= tol
    if dtype == torch.float64:
        ref = render_reference(BATCH, 22050.0, n)
        assert ref.shape == (7, n)
        assert np.abs(batch.numpy() - ref).max() <= TWIN64_TOL


def test_reference_batch_equals_items_and_chunking():
    sr = 22050.0
    n = 3 * 4096 + 17                         # spans several internal chunks
    ref = render_reference(BATCH, sr, n)
    for i, row in enumerate(BATCH):
        np.testing.assert_allclose(ref[i], render_reference(row, sr, n), rtol=0, atol=1e-15)
    # a longer render starts with the shorter one
    np.testing.assert_allclose(render_reference(BATCH[0], sr, 100), ref[0, :100], rtol=0,
                               atol=1e-15)


def test_reference_normalization_and_velocity():
    theta = AGREE_SETS["mid"]
    sr = 48000.0
    y = reference(theta, sr)
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-12)
    half = render_reference(DrumParams(*theta), sr, N, velocity=0.5)
    np.testing.assert_allclose(half, 0.5 * y, rtol=0, atol=1e-15)
    raw = render_reference(DrumParams(*theta), sr, N, normalize=False)
    modes = modal_coefficients(np.array(theta))
    keep = audible_modes(modes, sr)
    peak = peak_amplitude(Modes(*(a[keep] for a in modes)), sr)
    np.testing.assert_allclose(raw / peak, y, rtol=0, atol=1e-12)
    assert y[0] == 0.0                          # every mode starts at phase 0


def test_render_twin_and_from_nu():
    theta = torch.tensor(BATCH[:3], dtype=torch.float64)
    twin = MembraneTwin(22050.0, 4096)
    direct = twin(theta)
    torch.testing.assert_close(render_twin(theta, 22050.0, 4096), direct, rtol=0, atol=0)
    torch.testing.assert_close(twin.from_nu(theta_to_nu(theta)), direct, rtol=0, atol=1e-12)
    vel = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(twin(theta, vel), direct * vel[:, None], rtol=0, atol=1e-15)


def test_twin_gradient_matches_reference_finite_differences():
    # d/dtheta of a fixed projection of the unnormalized render: autograd through
    # the twin vs central differences of the independent numpy reference.
    sr, n = 22050.0, 4096
    theta = np.array([180.0, 0.25, 2e-3, 5e-3, 0.7])
    modes = modal_coefficients(theta)
    assert np.all(np.abs(modes.omega / (np.pi * sr) - 1) > 1e-3)  # no mode near Nyquist
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n)
    twin = MembraneTwin(sr, n, normalize=False)
    t = torch.tensor(theta, requires_grad=True)
    (twin(t) * torch.tensor(w)).sum().backward()
    grad = t.grad.numpy()
    for i in range(5):
        h = 1e-6 * theta[i]
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        fd = (w @ render_reference(up, sr, n, normalize=False)
              - w @ render_reference(down, sr, n, normalize=False)) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-9 * abs(grad).max() * theta.max())


# --- physics measured from the audio ------------------------------------------------

# Chosen so the fundamental (mode (1,1)) is at least 10 % away from every other
# audible mode (checked below), so a window a few periods of the difference
# frequency long resolves it: large D keeps the thin membrane's (2,1) mode off
# f0 (a thin membrane with small D has partials within 0.4 % of f0), large p
# damps the upper modes of the short ones. Between them they reach both ends
# of every range. The fundamental is also the strongest spectral peak: it has
# the largest gain (largest K_m, smallest omega_m) and the slowest decay.
PHYS_SETS = {
    "40Hz-thin": (40.0, 0.8, 1e-5, 0.3, 0.05),
    "1kHz-short": (1000.0, 0.07, 0.2, 1e-5, 1.0),
    "200Hz": (200.0, 0.3, 1e-3, 1e-3, 0.5),
    "100Hz-short": (100.0, 0.07, 0.2, 1e-5, 0.3),
    "700Hz-long": (700.0, 0.8, 1e-5, 1e-5, 0.8),
    "440Hz": (440.0, 0.5, 0.05, 0.01, 1.0),
}
F0_RTOL = 1e-3    # 0.1 % (observed < 1e-6)
TAU_RTOL = 0.01   # 1 % (observed < 2e-6)
SR_PHYS = 48000.0


def fundamental_hz(y: np.ndarray, sr: float, fmin: float = 20.0, rel: float = 0.3) -> float:
    """The lowest spectral peak reaching ``rel`` of the strongest one, in Hz.

    Hann window, zero-padded FFT (bins of ~0.02 Hz), quadratic interpolation of
    the log magnitude around the peak bin.
    """
    nfft = 1 << int(np.ceil(np.log2(len(y) * 16)))
    mag = np.abs(np.fft.rfft(y * signal.windows.hann(len(y), sym=False), nfft))
    k = int(np.ceil(fmin * nfft / sr))
    threshold = rel * mag[k:].max()
    while not (mag[k] >= threshold and mag[k - 1] <= mag[k] > mag[k + 1]):
        k += 1
    a, b, c = np.log(mag[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / nfft


def decay_time(y: np.ndarray, sr: float, f: float, window: float, step: float,
               count: int = 6) -> float:
    """Decay time of the partial at ``f`` Hz: fit of log amplitude against time.

    The amplitude in each of ``count`` Blackman-Harris windows (``window`` s
    long, ``step`` s apart, the first starting at 0) is the magnitude of the
    projection on ``exp(-2i pi f t)``. For ``A exp(-t / tau) sin(2 pi f t)`` that
    is ``exp(-start / tau)`` times the same constant in every window, so the
    slope of log amplitude against window start is ``-1 / tau``; other
    partials leak in below the window's -92 dB side lobes.
    """
    length = int(window * sr)
    w = signal.windows.blackmanharris(length)
    starts = np.round(np.arange(count) * step * sr).astype(int)
    assert starts[-1] + length <= len(y)
    amps = []
    for s in starts:
        n = np.arange(s, s + length)
        amps.append(abs(np.sum(y[n] * w * np.exp(-2j * np.pi * f * n / sr))))
    slope = np.polyfit(starts / sr, np.log(amps), 1)[0]
    return -1.0 / slope


def _separation(theta) -> float:
    """Distance in Hz from f0 to the nearest other audible mode at SR_PHYS."""
    modes = modal_coefficients(np.array(theta))
    keep = audible_modes(modes, SR_PHYS)
    f = modes.omega[keep][1:] / (2 * np.pi)      # [0] is the fundamental
    return float(np.min(np.abs(f - theta[0])))


@pytest.mark.parametrize("renderer", ["reference", "voice"])
@pytest.mark.parametrize("name", PHYS_SETS)
def test_fundamental_frequency_and_decay_from_audio(name, renderer):
    theta = PHYS_SETS[name]
    f0, tau = theta[0], theta[1]
    sep = _separation(theta)
    assert sep >= 0.1 * f0, "parameter set does not isolate the fundamental"
    window = 6.0 / sep            # Blackman-Harris main lobe (+-4/window) < separation
    step = tau / 2
    count = 6                     # windows span 2.5 tau of decay
    n = int((window + (count - 1) * step) * SR_PHYS) + 64
    if renderer == "reference":
        y = render_reference(DrumParams(*theta), SR_PHYS, n)
    else:
        y, idle_at = render_voice(theta, SR_PHYS, n, 512)
        assert idle_at == n       # still sounding: nothing truncated

    f_measured = fundamental_hz(y, SR_PHYS)
    assert f_measured == pytest.approx(f0, rel=F0_RTOL)
    tau_measured = decay_time(y, SR_PHYS, f_measured, window, step, count)
    assert tau_measured == pytest.approx(tau, rel=TAU_RTOL)


def test_decay_estimator_is_sensitive():
    # The estimator tells tau apart from 1.05 tau: a render of the same membrane
    # with a different tau is measured as that tau, not as the first.
    base = PHYS_SETS["200Hz"]
    other = (base[0], base[1] * 1.05, *base[2:])
    window, step = 6.0 / _separation(base), base[1] / 2
    n = int((window + 5 * step) * SR_PHYS) + 64
    y = render_reference(DrumParams(*other), SR_PHYS, n)
    measured = decay_time(y, SR_PHYS, base[0], window, step)
    assert measured == pytest.approx(other[1], rel=TAU_RTOL)
    assert measured != pytest.approx(base[1], rel=TAU_RTOL)


# --- Nyquist -----------------------------------------------------------------------

NYQ_SETS = {**AGREE_SETS, "1kHz-dispersive": (1000.0, 0.8, 1e-5, 0.1, 1.0),
            "1kHz-very-dispersive": (1000.0, 0.8, 1e-5, 0.3, 1.0)}


@pytest.mark.parametrize("sr", RATES + [96000.0, 8000.0])
@pytest.mark.parametrize("name", NYQ_SETS)
def test_preset_keeps_exactly_the_modes_below_nyquist(name, sr):
    theta = NYQ_SETS[name]
    preset = VoicePreset.build(DrumParams(*theta), sr)
    assert preset.n_modes >= 1
    assert np.all(preset.omega < np.pi * sr)
    assert np.all(preset.omega > 0) and np.all(preset.sigma > 0) and np.all(preset.amp > 0)
    # independently: every grid mode below Nyquist and off the nodal lines
    modes = modal_coefficients(np.array(theta))
    f = modes.omega / (2 * np.pi)
    silent = modes.gain < 1e-20 * modes.gain.max()
    expected = np.sort(modes.omega[(f < sr / 2) & ~silent])
    np.testing.assert_array_equal(np.sort(preset.omega), expected)


def test_upper_modes_are_dropped_at_low_rates():
    d = DrumParams(*NYQ_SETS["1kHz-dispersive"])
    counts = {sr: VoicePreset.build(d, sr).n_modes for sr in (22050.0, 48000.0)}
    assert counts[22050.0] < counts[48000.0] == 64  # 64 = 100 minus the nodal lines
    v = DrumParams(*NYQ_SETS["1kHz-very-dispersive"])
    counts = [VoicePreset.build(v, sr).n_modes for sr in (22050.0, 44100.0, 48000.0, 96000.0)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    # the twin drops them too (it would otherwise alias): it matches the reference
    twin = MembraneTwin(22050.0, 8192)
    y = twin(torch.tensor(NYQ_SETS["1kHz-dispersive"], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(y, render_reference(d, 22050.0, 8192), rtol=0, atol=TWIN64_TOL)


def test_no_aliasing_in_the_spectrum():
    """The spectrum of a 22050 Hz render is that of its modes below Nyquist only.

    The prediction sums the kept modes' damped sinusoids directly. Modes above
    Nyquist, had they been rendered, would fold down to ``sr - f``; the test
    also checks that those folded partials would have been seen.
    """
    theta = NYQ_SETS["1kHz-dispersive"]
    sr, n = 22050.0, N
    modes = modal_coefficients(np.array(theta))
    f = modes.omega / (2 * np.pi)
    audible = modes.gain > 1e-20 * modes.gain.max()
    below = audible & (f < sr / 2)
    above = audible & (f >= sr / 2)
    assert above.sum() >= 10

    t = np.arange(n) / sr

    def synth(mask):
        y = sum(modes.gain[m] * np.exp(-modes.sigma[m] * t) * np.sin(modes.omega[m] * t)
                for m in np.flatnonzero(mask))
        return y / np.abs(y).max()

    def spectrum(y):
        return np.abs(np.fft.rfft(y * signal.windows.hann(n, sym=False)))

    voice, idle_at = render_voice(theta, sr, n, 256)
    assert idle_at == n
    got, want, folded = spectrum(voice), spectrum(synth(below)), spectrum(synth(audible))
    top = want.max()
    assert np.abs(got - want).max() <= 1e-6 * top
    twin = MembraneTwin(sr, n)(torch.tensor(theta, dtype=torch.float64)).numpy()
    assert np.abs(spectrum(twin) - want).max() <= 1e-6 * top
    # what aliasing would look like: folded peaks at sr - f, well above the tolerance
    alias_bins = np.round((sr - f[above]) * n / sr).astype(int)
    assert np.max(np.abs(folded - want)[alias_bins]) > 1e-2 * top
    assert np.max(got[alias_bins] / folded[alias_bins]) < 0.5
