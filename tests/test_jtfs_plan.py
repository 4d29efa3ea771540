"""The JTFS plan (numpy only) and the module that applies it.

The plan is tested on its own (pure numpy, deterministic); the module against a
dense computation of the definition that shares none of its shortcuts (no
gathers, no precomputed matrices, no pruning, no grouping), and for the dtype
and device behaviour its per-(dtype, device) cast cache must keep.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kymatio.scattering1d.filter_bank import (compute_params_filterbank, gauss_1d,
                                              get_max_dyadic_subsampling, morlet_1d)

from matcher.jtfs import JTFS, JTFSConfig
from matcher.jtfs_plan import JTFSPlan, plan_jtfs

ROOT = Path(__file__).resolve().parents[1]
CFGS = {"F4": JTFSConfig(N=1024, J=6, Q1=4, Q2=1, J_fr=2, Q_fr=1, F=4),
        "Fglobal": JTFSConfig(N=2048, J=7, Q1=6, Q2=2, J_fr=2, Q_fr=1, F="global"),
        "T64": JTFSConfig(N=1024, J=6, Q1=4, Q2=1, J_fr=2, Q_fr=1, F=4, T=64)}


def leaves(obj, name="plan"):
    """Every (name, value) below a plan's dataclasses and tuples."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, JTFSConfig):
        for f in dataclasses.fields(obj):
            yield from leaves(getattr(obj, f.name), f"{name}.{f.name}")
    elif isinstance(obj, tuple):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{name}[{i}]")
    else:
        yield name, obj


def noise(n: int, batch: int = 2, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, n))


# ---------------------------------------------------------------------------- the plan
def test_building_a_plan_imports_no_torch():
    code = ("import sys; from matcher.jtfs_plan import JTFSConfig, plan_jtfs; "
            "p = plan_jtfs(JTFSConfig(N=1024, J=6, Q1=4, J_fr=2, F=4, T=64)); "
            "assert p.n_paths == 123, p.n_paths; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.parametrize("name", CFGS)
def test_plan_holds_numpy_arrays_only_and_is_deterministic(name):
    a, b = plan_jtfs(CFGS[name]), plan_jtfs(CFGS[name])
    assert isinstance(a, JTFSPlan) and a.config == CFGS[name]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.n_pad = 0
    pairs = list(zip(leaves(a), leaves(b)))
    arrays = [(k, x, y) for (k, x), (_, y) in pairs if isinstance(x, np.ndarray)]
    assert len(arrays) > 10
    for (k, x), (_, y) in pairs:
        assert not isinstance(x, torch.Tensor), k
        if isinstance(x, np.ndarray):
            assert x.dtype in (np.float64, np.int64), (k, x.dtype)
            assert x.dtype == y.dtype and np.array_equal(x, y), k
        else:
            assert x == y, k
    assert a.local == (CFGS[name].T != "global")
    assert a.n_paths == len(a.perm) == len(a.meta()["key"])
    assert sorted(a.perm.tolist()) == list(range(a.n_paths))


def test_plan_errors_are_named():
    with pytest.raises(ValueError, match="local averaging needs T >= 2\\*\\*"):
        plan_jtfs(JTFSConfig(N=1024, J=6, Q1=4, J_fr=2, F=4, T=4))


# ---------------------------------------------------------------------------- the module
def _sub(h: np.ndarray, k: int) -> np.ndarray:
    """kymatio's subsample_fourier: the mean of the ``2**k`` periods (last axis)."""
    return h.reshape(*h.shape[:-1], 2**k, -1).mean(-2)


def _per(h: np.ndarray, k: int) -> np.ndarray:
    """kymatio's periodize_filter_fourier: the sum of the ``2**k`` periods."""
    return h.reshape(2**k, -1).sum(0)


def _morlets(J: int, Q: int, n: int) -> list[tuple]:
    xis, sigmas, _ = compute_params_filterbank(0.1 / 2**J, Q, 5.0, np.sqrt(0.5))
    return [(xi, s, get_max_dyadic_subsampling(xi, s, 5.0)) for xi, s in zip(xis, sigmas)]


def dense_jtfs(x: np.ndarray, cfg: JTFSConfig, n_pad: int, left: int, right: int,
               n_fr: int) -> dict[tuple, float]:
    """JTFS of one sound ``x`` ``[N]`` by the definition (global ``T``): path key -> value.

    Full-length products and folds in the Fourier domain, the frequential
    convolutions as FFTs along the zero-padded ``n1`` axis; only the sizes
    ``n_pad``, the padding and ``n_fr`` are taken from the plan.
    """
    xp = np.pad(x, (left, right), mode="reflect")
    X = np.fft.fft(xp)
    phi_t = gauss_1d(n_pad, 0.1 / 2**cfg.J)
    psi1, psi2 = _morlets(cfg.J, cfg.Q1, n_pad), _morlets(cfg.J, cfg.Q2, n_pad)
    u1 = [np.abs(np.fft.ifft(_sub(X * morlet_1d(n_pad, xi, s), j))) for xi, s, j in psi1]
    s1 = np.stack([np.fft.ifft(_sub(np.fft.fft(u) * _per(phi_t, j), cfg.J - j)).real
                   for u, (_, _, j) in zip(u1, psi1)])

    log2_f = None if cfg.F == "global" else int(np.floor(np.log2(cfg.F)))
    phi_f = None if cfg.F == "global" else gauss_1d(n_fr, 0.1 / cfg.F)
    fr = [(0.0, cfg.J_fr, gauss_1d(n_fr, 0.1 / 2**cfg.J_fr))]       # (xi, j_fr, filter)
    fr_m = _morlets(cfg.J_fr, cfg.Q_fr, n_fr)
    fr += [(xi, j, morlet_1d(n_fr, xi, s)) for xi, s, j in fr_m]
    fr += [(-xi, j, morlet_1d(n_fr, -xi, s)) for xi, s, j in fr_m]

    def freq(y: np.ndarray, filters: list) -> dict[tuple, float]:
        n1_max = len(y)
        pad = np.zeros((n_fr, y.shape[1]), complex)
        pad[:n1_max] = y
        Y = np.fft.fft(pad, axis=0)
        out = {}
        for i, (xi, j_fr, h) in enumerate(filters):
            k = j_fr if log2_f is None else min(j_fr, log2_f)
            v = np.abs(np.fft.ifft(Y * h[:, None], axis=0)[::2**k]).sum(1)   # sum over time
            if xi == 0:
                vals, stride = v, 2**j_fr
            elif log2_f is None:
                vals, stride = [v.sum()], n1_max
            else:
                vals = np.fft.ifft(np.fft.fft(v) * _per(phi_f, k)).real[::2**(log2_f - k)]
                stride = 2**log2_f
            out.update({(q * stride, i): val for q, val in enumerate(vals) if q * stride < n1_max})
        return out

    paths = {(): xp.sum()}
    paths.update(freq(s1, [f for f in fr if f[0] >= 0]))
    for n2, (xi2, s2, j2) in enumerate(psi2):
        n1_max = sum(j < j2 for _, _, j in psi1)
        if n1_max == 0:
            continue
        f2 = morlet_1d(n_pad, xi2, s2)
        y2 = np.stack([np.fft.ifft(_sub(np.fft.fft(u1[n1]) * _per(f2, psi1[n1][2]),
                                        j2 - psi1[n1][2])) for n1 in range(n1_max)])
        paths.update({(n1, n2, i): v for (n1, i), v in freq(y2, fr).items()})
    return paths


@pytest.mark.parametrize("name", ["F4", "Fglobal"])
def test_module_agrees_with_a_dense_computation_of_the_definition(name):
    cfg = CFGS[name]
    m = JTFS(cfg)
    x = noise(cfg.N)
    x[1] *= np.exp(-np.arange(cfg.N) / (cfg.N / 8))       # a decaying sound: quiet paths too
    S = m(torch.tensor(x)).numpy()
    keys = list(m.meta()["key"])
    for b in range(len(x)):
        dense = dense_jtfs(x[b], cfg, m.n_pad, m.pad_left, m.pad_right, m.n_fr)
        assert set(dense) == set(keys)
        D = np.array([dense[k] for k in keys])
        # The module drops filter bins and frequential rows below 1e-9 of their peak
        # (seen: 2.5e-10 relative at most, every path above 0.9 % of the largest).
        floor = 1e-11 * np.abs(D[1:]).max()
        assert np.all(np.abs(S[b] - D) <= 1e-8 * np.abs(D) + floor), np.abs(S[b] - D).max()


def test_module_from_a_plan_is_the_module_from_its_config():
    cfg = CFGS["T64"]
    x = torch.tensor(noise(cfg.N))
    plan = plan_jtfs(cfg)
    assert torch.equal(JTFS(plan=plan)(x), JTFS(cfg)(x))
    assert JTFS(plan=plan).meta()["key"].tolist() == plan.meta()["key"].tolist()
    with pytest.raises(ValueError, match="differs from the plan"):
        JTFS(CFGS["F4"], plan=plan)
    names = [n for n, _ in JTFS(cfg).named_buffers()]
    assert "perm" in names and "banks.freq1.W" in names and "banks.phi0.idx" in names
    assert JTFS(cfg).state_dict() == {}          # filters are rebuilt, never saved


@pytest.mark.parametrize("name", ["F4", "T64"])
def test_dtype_behaviour_of_the_cast_cache(name):
    cfg = CFGS[name]
    x64 = torch.tensor(noise(cfg.N))
    x32 = x64.float()
    fresh = JTFS(cfg)
    s64, s32 = fresh(x64), fresh(x32)
    assert s64.dtype == torch.float64 and s32.dtype == torch.float32
    # .double() keeps the (float64) filters: the same numbers for both input dtypes.
    m = JTFS(cfg)
    m(x32)
    m.double()
    assert torch.equal(m(x64), s64) and torch.equal(m(x32), s32)
    # .float() rounds the filters: a float64 input now sees them (not a stale cast).
    m.float()
    assert all(b.dtype in (torch.float32, torch.int64) for b in m.buffers())
    r64 = m(x64)
    assert r64.dtype == torch.float64 and not torch.equal(r64, s64)
    assert torch.equal(r64, JTFS(cfg).float()(x64))
    torch.testing.assert_close(r64, s64, rtol=1e-5, atol=1e-6 * s64.abs().max().item())
    assert torch.equal(m(x32), s32)      # float32 filters either way
    # Copies and pickles start with an empty cache and give the same numbers.
    for other in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        assert torch.equal(other(x64), s64) and torch.equal(other(x32), s32)
    # .to(device) (CPU here; CUDA below when present) keeps working.
    assert torch.equal(fresh.to(torch.device("cpu"))(x64), s64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    cfg = CFGS["F4"]
    x = torch.tensor(noise(cfg.N))
    cpu = JTFS(cfg)
    ref64, ref32 = cpu(x), cpu(x.float())
    m = JTFS(cfg)
    m(x)                                            # a CPU cast cached first
    m.to("cuda")
    assert all(b.is_cuda for b in m.buffers())
    for xin, ref in ((x, ref64), (x.float(), ref32)):
        out = m(xin.cuda())
        assert out.is_cuda and out.dtype == xin.dtype
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4 if ref.dtype == torch.float32
                                   else 1e-10, atol=1e-6 * ref.abs().max().item())
    # CPU input on the CUDA module: filters are cast to the input's device.
    torch.testing.assert_close(m(x), ref64, rtol=1e-10, atol=1e-12 * ref64.abs().max().item())
