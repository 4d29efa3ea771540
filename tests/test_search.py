"""The default match's parts: the pitch candidate, re-ranking, the choice between
candidates, the f0 nudges and the local step (the index itself: test_sound_index.py).

The pitch tests compare against the generator's known fundamentals; re-ranking is
checked against distances computed one candidate at a time; the ``small_index``
fixture is ``conftest.py``'s.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from matcher.jtfs import JTFSConfig
from matcher.pitch import estimate_f0
from matcher.search import (MSS_WEIGHT, SEMITONE_NU, Candidate, Source, choose, f0_nudges,
                            local_step, nu_of_f0, pitch_candidates, rerank)
from matcher.sound_index import SoundIndex
from synth.params import nu_to_theta
from synth.twin import MembraneTwin

ROOT = Path(__file__).resolve().parents[1]
SR = 22050.0
CFG = replace(JTFSConfig.reference(), N=8192)


# ---------------------------------------------------------------- pitch
@pytest.mark.parametrize("f0", [45.0, 118.0, 196.0, 523.0, 880.0])
def test_the_spectrum_gives_a_membrane_hits_fundamental(f0):
    # Tympan's own membrane at known f0 (mode (1, 1) is the fundamental).
    theta = torch.tensor([[f0, 0.4, 1e-3, 1e-3, 0.7]], dtype=torch.float64)
    y = MembraneTwin(SR, 2**15)(theta)[0].numpy()
    got = estimate_f0(y, SR)
    assert got is not None and abs(1200 * np.log2(got / f0)) < 25      # cents


def test_the_demo_examples_fundamentals_are_found_despite_wires_and_clicks():
    from matcher.audio import AudioConfig, load_hit

    cfg = AudioConfig(sr=SR, n_samples=2**16)
    for name, f0 in (("kick", 52.0), ("snare", 196.0), ("tom", 118.0)):
        hit = load_hit(ROOT / "plugin_host" / "examples" / f"{name}.flac", cfg)
        got = estimate_f0(hit.audio, SR)
        assert got is not None and abs(12 * np.log2(got / f0)) < 1.0, (name, got)


def test_pitch_has_no_answer_for_silence_or_white_noise_and_refuses_bad_input():
    assert estimate_f0(np.zeros(4096), SR) is None
    noise = np.random.default_rng(0).standard_normal(2**15)
    assert estimate_f0(noise, SR) is None
    with pytest.raises(ValueError, match="allowed 1-D audio"):
        estimate_f0(np.zeros((2, 100)), SR)


def test_pitch_candidates_sit_at_the_asked_fundamental(small_index):
    index = SoundIndex.load(small_index)
    phi = torch.zeros(1, index.basis.shape[1])
    # The widest window holds every point: the k nearest overall, moved to 200 Hz.
    nu = pitch_candidates(index, phi, 200.0, k=2, semitones=100.0)
    assert nu.shape == (2, 5) and np.all(nu[:, 0] == nu_of_f0(200.0))
    assert pitch_candidates(index, phi, 200.0, semitones=1e-6).shape == (0, 5)


# ---------------------------------------------------------------- re-ranking and choice
def test_rerank_finds_the_true_best_of_the_candidates():
    from matcher.jtfs import JTFS

    twin = MembraneTwin(SR, 8192)
    jtfs = JTFS(CFG)
    rng = np.random.default_rng(3)
    truth = np.array([0.1, -0.2, 0.3, -0.4, 0.5])
    target = twin.from_nu(torch.as_tensor(truth)[None]).float()
    target_phi = jtfs.phi(target)
    cands = [Candidate(np.clip(truth + s * rng.standard_normal(5), -1, 1), Source.INDEX)
             for s in (0.5, 0.05, 0.3, 0.8, 0.15)]
    ranked = rerank(cands, target_phi, lambda nu: twin.from_nu(nu).float(), jtfs.phi)
    # Independent: each candidate's distance on its own (batch of one).
    alone = []
    for c in cands:
        x = twin.from_nu(torch.as_tensor(c.nu)[None]).float()
        alone.append(float(torch.linalg.vector_norm(jtfs.phi(x) - target_phi)))
    assert ranked[0] is cands[int(np.argmin(alone))]
    np.testing.assert_allclose(sorted(alone), [c.jtfs for c in ranked], rtol=1e-4)
    with pytest.raises(ValueError, match="no candidate"):
        rerank([], target_phi, None, None)


def test_choose_weighs_jtfs_and_mss_each_relative_to_the_best():
    w = MSS_WEIGHT
    a = Candidate(np.zeros(5), Source.INDEX, jtfs=9.0, mss=2.0)
    b = Candidate(np.ones(5) * 0.1, Source.PITCH, jtfs=10.0, mss=1.5)
    score = lambda c, j0, m0: c.jtfs / j0 + w * c.mss / m0          # noqa: E731
    assert score(b, 9.0, 1.5) < score(a, 9.0, 1.5)
    assert choose([a, b]) is b            # closer in MSS by more than it loses in JTFS
    b.mss = 1.99                          # now a is as close in MSS: the JTFS decides
    assert score(a, 9.0, 1.99) < score(b, 9.0, 1.99)
    assert choose([a, b]) is a and choose([b, a]) is a
    # Without MSS distances (NaN), the closest in JTFS.
    c = Candidate(np.ones(5) * 0.2, Source.LOCAL, jtfs=8.0)
    assert choose([a, b, c]) is c
    with pytest.raises(ValueError, match="no candidate"):
        choose([])


def test_rerank_sets_the_mss_distance_as_the_metric_computes_it():
    from matcher.distances import multiscale_spectral_distance
    from matcher.jtfs import JTFS

    twin = MembraneTwin(SR, 8192)
    jtfs = JTFS(CFG)
    target = twin.from_nu(torch.tensor([[0.1, -0.2, 0.3, -0.4, 0.5]], dtype=torch.float64)).float()
    cands = [Candidate(np.array(v), Source.INDEX) for v in
             ([0.0, 0.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.3, -0.4, 0.5], [0.5, 0.5, 0.5, 0.5, 0.5])]
    ranked = rerank(cands, jtfs.phi(target), lambda nu: twin.from_nu(nu).float(), jtfs.phi, target)
    assert ranked[0] is cands[1] and ranked[0].mss < 1e-3 and ranked[0].jtfs < 1e-3
    for c in cands:                     # each on its own, by the metric's own function
        x = twin.from_nu(torch.as_tensor(c.nu)[None]).float()
        assert c.mss == pytest.approx(float(multiscale_spectral_distance(x, target)), rel=1e-4,
                                      abs=1e-6)


def test_f0_nudges_move_f0_only_half_a_semitone_and_stay_in_range():
    nu = np.array([0.2, 0.1, -0.3, 0.4, -0.5])
    up, down = f0_nudges(nu)
    assert up[0] - nu[0] == pytest.approx(0.5 * SEMITONE_NU) and down[0] - nu[0] == pytest.approx(
        -0.5 * SEMITONE_NU)
    np.testing.assert_array_equal(up[1:], nu[1:])
    np.testing.assert_array_equal(down[1:], nu[1:])
    hz = [float(nu_to_theta(x)[0]) for x in (down, nu, up)]
    assert 1200 * np.log2(hz[2] / hz[1]) == pytest.approx(50.0, abs=0.01)   # cents
    assert 1200 * np.log2(hz[1] / hz[0]) == pytest.approx(50.0, abs=0.01)
    top = f0_nudges(np.array([1.0, 0, 0, 0, 0]))
    assert top[0][0] == 1.0 and top[1][0] < 1.0


def test_the_local_step_recovers_a_point_between_index_sounds():
    # An index whose features are exactly affine in nu: the step lands on the truth.
    rng = np.random.default_rng(0)
    nu = rng.uniform(-1, 1, (400, 5))
    a = rng.standard_normal((5, 12))
    index = SoundIndex(nu, nu @ a, {"format": "x"}, mean=np.zeros(12), basis=np.eye(12))
    truth = np.array([0.2, -0.1, 0.05, 0.3, -0.25])
    got = local_step(index, torch.as_tensor(truth @ a, dtype=torch.float32)[None], m=32,
                     lam=1e-6)
    nearest = nu[np.argmin(np.linalg.norm(nu @ a - truth @ a, axis=1))]
    assert np.abs(got - truth).max() < 0.5 * np.abs(nearest - truth).max()
    # The default centre is the index's nearest sound to the target.
    np.testing.assert_allclose(local_step(index, torch.as_tensor(truth @ a, dtype=torch.float32)[None],
                                          m=32, lam=1e-6, center=nearest), got)
