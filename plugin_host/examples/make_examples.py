"""Write the bundled example hits (``kick.flac``, ``snare.flac``, ``tom.flac``).

``tympan demo`` matches these files. They are made here, with numpy only, by
a model that is *not* Tympan's: a circular membrane (Bessel-zero mode ratios
instead of the rectangle's ``sqrt(m^2 + n^2 / S^2)``), a pitch glide after
the strike (tension modulation, which the FTM has no term for), a beater
click and, for the snare, band-limited wire noise. The matcher therefore
meets the same kind of mismatch as with a recorded drum, while the files stay
ours to ship (the GMRockKit samples used by the evaluation are GPL).

Run ``python plugin_host/examples/make_examples.py`` to write them again;
the output is deterministic (seeded), 44.1 kHz mono 24-bit FLAC, 3 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 44100
DURATION = 3.0  # s: the model window (2.97 s); every hit has decayed by > 40 dB

# Zeros j_mn of the Bessel functions J_m, divided by j_01: the modes of an
# ideal circular membrane relative to its fundamental.
BESSEL_RATIOS = np.array([1.000, 1.594, 2.136, 2.296, 2.653, 2.918, 3.156, 3.501, 3.600,
                          3.652, 4.060, 4.154, 4.230, 4.601, 4.650, 4.832, 4.903])


def _band_noise(rng: np.random.Generator, n: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """White noise band-limited to ``[lo_hz, hi_hz]`` by an FFT mask, ``[n]``, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < lo_hz) | (f > hi_hz)] = 0
    x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x**2))


def membrane(f0: float, glide: float, glide_s: float, tau0: float, brightness: float,
             seed: int) -> np.ndarray:
    """Circular-membrane hit, ``[SR * DURATION]``.

    Parameters
    ----------
    f0 : float
        Settled fundamental, Hz.
    glide : float
        Pitch ratio right after the strike (e.g. 1.3: starts 30 % sharp).
    glide_s : float
        Time constant of the glide back to ``f0``, s.
    tau0 : float
        Decay time of the fundamental, s; higher modes decay faster.
    brightness : float
        Amplitude roll-off exponent over modes (larger: darker).
    seed : int
        Seeds the mode amplitudes and phases.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * DURATION)) / SR
    # Instantaneous pitch ratio; its integral gives every mode's phase.
    ratio = 1 + (glide - 1) * np.exp(-t / glide_s)
    phase_f0 = 2 * np.pi * f0 * np.cumsum(ratio) / SR
    out = np.zeros_like(t)
    for k, r in enumerate(BESSEL_RATIOS):
        if r * f0 * glide > 0.45 * SR:
            break
        amp = rng.uniform(0.4, 1.0) / (k + 1) ** brightness
        tau = tau0 / (1 + 0.9 * (r - 1) ** 1.5)
        out += amp * np.exp(-t / tau) * np.sin(r * phase_f0 + rng.uniform(0, 2 * np.pi))
    return out


def click(seed: int, level: float, decay_s: float = 0.003) -> np.ndarray:
    """Beater click: high-passed noise over a few ms, ``[SR * DURATION]``."""
    rng = np.random.default_rng(seed)
    n = int(SR * DURATION)
    t = np.arange(n) / SR
    return level * _band_noise(rng, n, 1500, 12000) * np.exp(-t / decay_s)


def examples() -> dict[str, np.ndarray]:
    """The example hits by name, each float64 ``[SR * DURATION]`` with peak 0.9."""
    n = int(SR * DURATION)
    t = np.arange(n) / SR
    kick = membrane(52, 1.45, 0.035, 0.32, 1.6, seed=1) + click(11, 0.15)
    tom = membrane(118, 1.12, 0.06, 0.55, 1.1, seed=3) + click(13, 0.05)
    wires = _band_noise(np.random.default_rng(12), n, 2500, 9000) * np.exp(-t / 0.11)
    snare = membrane(196, 1.05, 0.02, 0.2, 0.9, seed=2) + 0.35 * wires + click(12, 0.1)
    hits = {"kick": kick, "snare": snare, "tom": tom}
    fade = np.minimum(1.0, (t[-1] - t) / 0.05)        # no click at the cut
    return {name: 0.9 * x * fade / np.abs(x).max() for name, x in hits.items()}


def main() -> None:
    from pedalboard.io import AudioFile

    here = Path(__file__).resolve().parent
    for name, x in examples().items():
        path = here / f"{name}.flac"
        with AudioFile(str(path), "w", samplerate=SR, num_channels=1, bit_depth=24) as f:
            f.write(x[None].astype(np.float32))
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
