"""matcher.features: the FFT-domain CQT equals nnAudio's CQT1992v2 (same kernels)."""

from __future__ import annotations

import math

import pytest
import torch

from matcher.features import CQTFeatures, FeatureConfig, nnaudio_cqt
from synth.twin import MembraneTwin


@pytest.fixture(scope="module")
def ref_cfg() -> FeatureConfig:
    return FeatureConfig()


def test_reference_shape(ref_cfg):
    assert ref_cfg.shape == (120, 257)
    x = torch.zeros(2, ref_cfg.n_samples)
    assert CQTFeatures(ref_cfg)(x).shape == (2, 120, 257)


def test_equals_nnaudio_on_drum_hits_and_noise(ref_cfg):
    twin = MembraneTwin(ref_cfg.sr, ref_cfg.n_samples)
    theta = torch.tensor([[40.0, 0.5, 0.01, 0.01, 0.7], [1000.0, 0.07, 0.1, 0.2, 0.3],
                          [200.0, 0.3, 1e-4, 1e-4, 1.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([twin(theta).float(), 0.1 * torch.randn(1, ref_cfg.n_samples, generator=gen)])
    ours = CQTFeatures(ref_cfg).cqt(x)
    ref = nnaudio_cqt(ref_cfg)(x)
    assert ours.shape == ref.shape
    # Relative to each sound's peak: the support truncation is at 1e-5 of each kernel's peak.
    err = (ours - ref).abs().amax(dim=(1, 2)) / ref.amax(dim=(1, 2))
    assert float(err.max()) < 5e-5, err


def test_a_sine_peaks_in_its_bin():
    cfg = FeatureConfig(n_samples=2**14)
    k = 60
    f = cfg.fmin * 2 ** (k / cfg.bins_per_octave)           # bin 60: 320 Hz
    t = torch.arange(cfg.n_samples) / cfg.sr
    c = CQTFeatures(cfg).cqt(torch.sin(2 * math.pi * f * t))
    mid = c[:, cfg.n_frames // 2]
    assert int(mid.argmax()) == k
    # librosa normalization: kernels of unit 1-norm, outputs times sqrt(kernel length).
    # A unit sine then reads ~ sqrt(L_k), and L_k ~ 1/f_k (constant Q): bin 40 reads
    # sqrt(2^(40/12)) times bin 80, for their own sines.
    vals = []
    for kk in (40, 80):
        ff = cfg.fmin * 2 ** (kk / cfg.bins_per_octave)
        cc = CQTFeatures(cfg).cqt(torch.sin(2 * math.pi * ff * t))
        vals.append(float(cc[kk, cfg.n_frames // 2]))
    assert vals[0] / vals[1] == pytest.approx(2 ** (40 / 24), rel=0.02)


def test_silence_gives_zero_features(ref_cfg):
    assert float(CQTFeatures(ref_cfg)(torch.zeros(ref_cfg.n_samples)).abs().max()) == 0.0


@pytest.mark.parametrize("kw, match", [
    ({"n_bins": 0}, "n_bins"),
    ({"fmin": -1.0}, "fmin"),
    ({"fmin": 32.7}, "Nyquist"),
    ({"support_tol": 1.0}, "support_tol"),
])
def test_bad_configs_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kw)


def test_wrong_length_is_named(ref_cfg):
    with pytest.raises(ValueError, match="65536"):
        CQTFeatures(ref_cfg)(torch.zeros(1, 1000))


def test_config_round_trip_and_unknown_keys(ref_cfg):
    assert FeatureConfig.from_dict(ref_cfg.to_dict()) == ref_cfg
    with pytest.raises(ValueError, match="unknown feature settings"):
        FeatureConfig.from_dict({"hop_length": 256})
