"""The recorded sets and the independent distance of ``benchmarks/eval_real.py``.

Every listed file of both sets (``benchmarks/_common.py``: GMRockKit from Debian's
``hydrogen-data``, the sonic-pi one-shots from ``sonic-pi-samples``, both installed
by ``make install``) must exist and load through ``matcher.audio``: a missing
package fails here, it is not skipped. The auraloss distance must be 0 for
identical signals, positive and symmetric to within a factor 2 for different ones.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from matcher.audio import AudioConfig, load_hit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402  (benchmarks/ is not a package)

SETS = sorted(_common.REAL_SETS)


@pytest.mark.parametrize("name", SETS)
def test_every_listed_file_exists_and_loads(name):
    folder, files, package = _common.REAL_SETS[name]
    assert len(files) == len(set(files)) > 0
    missing = [f for f in files if not (Path(folder) / f).is_file()]
    assert not missing, (f"{len(missing)} files of the {name} set missing in {folder} "
                         f"(first {missing[0]}): install Debian's {package} (`make install`)")
    cfg = AudioConfig()
    for f in files:
        hit = load_hit(Path(folder) / f, cfg)
        audio = np.asarray(hit.audio)
        assert audio.shape == (cfg.n_samples,), f
        assert np.isfinite(audio).all() and np.abs(audio).max() == pytest.approx(1.0), f


def test_listed_hits_fails_on_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="sonic-pi-samples"):
        _common.listed_hits(tmp_path, _common.SONIC_PI_DRUMS, "sonic-pi-samples")


def test_sets_are_the_documented_ones():
    assert len(_common.GMROCKKIT_DRUMS) == 25
    assert len(_common.SONIC_PI_DRUMS) == 61
    assert [p.name for p in _common.gmrockkit_hits()] == list(_common.GMROCKKIT_DRUMS)


def test_sonic_pi_list_is_membranophone_one_shots():
    banned = re.compile(r"cymbal|hat|loop|roll|splash|ride|crash|cowbell")
    bad = [f for f in _common.SONIC_PI_DRUMS if banned.search(f)]
    assert not bad, f"not drum one-shots: {bad}"
    prefixes = ("drum_", "bd_", "sn_", "tabla_", "elec_")
    assert all(f.startswith(prefixes) and f.endswith(".flac") for f in _common.SONIC_PI_DRUMS)
    assert all(re.search("kick|snare", f) for f in _common.SONIC_PI_DRUMS
               if f.startswith("elec_"))


def _hit(f0: float, tau: float, n: int = 2**16, sr: float = 22050.0) -> np.ndarray:
    t = np.arange(n) / sr
    x = np.exp(-t / tau) * (np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(2 * np.pi * 2.7 * f0 * t))
    return (x / np.abs(x).max()).astype(np.float32)


def test_auraloss_distance():
    x, y, z = _hit(80.0, 0.4), _hit(200.0, 0.15), _hit(85.0, 0.4)
    assert _common.auraloss_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    d_xy, d_yx = _common.auraloss_distance(x, y), _common.auraloss_distance(y, x)
    assert d_xy > 0.1 and d_yx > 0.1
    # Only the spectral convergence term is asymmetric (normalized by the target's
    # energy, here ~2.5x apart): the two orders agree to within a factor 2.
    assert 0.5 < d_xy / d_yx < 2.0
    # A nearer sound is nearer.
    assert 0.0 < _common.auraloss_distance(z, x) < d_xy
    with pytest.raises(ValueError):
        _common.auraloss_distance(x, x[:-1])
