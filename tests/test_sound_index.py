"""The dense sound index (``matcher.sound_index``): seeded Sobol points, the PCA
index's header and queries, a resumable build, and one-line errors for an index
that is missing, corrupt or built for another configuration.

Small indexes at 8192 samples (fast JTFS); the ``small_index`` fixture is
``conftest.py``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from matcher.jtfs import JTFSConfig
from matcher.sound_index import SoundIndex, build_dense, dense_points
from synth.twin import MembraneTwin

ROOT = Path(__file__).resolve().parents[1]
SR = 22050.0
CFG = replace(JTFSConfig.reference(), N=8192)


def test_dense_points_are_seeded_and_cover_the_space():
    a, b = dense_points(256, seed=0), dense_points(256, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (256, 5) and a.min() >= -1 and a.max() <= 1
    assert not np.array_equal(a, dense_points(256, seed=1))
    # Low discrepancy: every half of every axis holds 128 +- 8 points (random: +- ~16).
    assert np.all(np.abs((a > 0).sum(axis=0) - 128) <= 8)


def test_a_pca_index_keeps_its_header_and_queries_its_own_points(small_index):
    index = SoundIndex.load(small_index)
    index.check(CFG)
    assert index.kind == "pca" and len(index) == 64 and index.dims == 6
    assert 0.5 < index.header["explained"] <= 1.0
    np.testing.assert_allclose(index.nu, dense_points(64), atol=1e-6)   # float32 storage
    # Its own render, transformed again, finds itself first.
    twin = MembraneTwin(SR, 8192)
    from matcher.jtfs import JTFS

    phi = JTFS(CFG).phi(twin.from_nu(torch.as_tensor(index.nu[[5, 40]])).float())
    nu, dist = index.query(phi, k=3)
    np.testing.assert_allclose(nu[:, 0], index.nu[[5, 40]], atol=1e-12)
    assert np.all(np.diff(dist, axis=1) >= 0)                          # nearest first


def test_the_build_resumes_from_its_shards_and_refuses_another_plan(tmp_path):
    out = tmp_path / "i.npz"
    full = build_dense(out, CFG, size=24, dims=4, progress=False, shard=16)
    parts = out.with_name(out.name + ".parts")
    shard1 = parts / "shard-00001.npz"
    stamp = shard1.stat().st_mtime_ns
    (parts / "shard-00000.npz").unlink()          # as if stopped before the first finished
    again = build_dense(out, CFG, size=24, dims=4, progress=False, shard=16)
    assert shard1.stat().st_mtime_ns == stamp      # the finished shard was not redone
    np.testing.assert_allclose(again.emb.numpy(), full.emb.numpy(), atol=2e-2)
    with pytest.raises(ValueError, match="holds shards of another build"):
        build_dense(out, CFG, size=32, dims=4, progress=False, shard=16)


def test_missing_corrupt_and_foreign_indexes_are_one_line_errors(small_index, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SoundIndex.load(tmp_path / "none.npz")
    # Edited arrays: the checksum in the header no longer matches.
    with np.load(small_index) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["emb"] = arrays["emb"].copy()
    arrays["emb"][0, 0] += 1
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        SoundIndex.load(tmp_path / "edited.npz")
    # A truncated file.
    data = small_index.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a sound index"):
        SoundIndex.load(tmp_path / "cut.npz")
    # Another version.
    header = json.loads(str(arrays["header"]))
    header["version"] = 99
    np.savez(tmp_path / "v99.npz", **{**arrays, "header": np.array(json.dumps(header))})
    with pytest.raises(ValueError, match="version 99"):
        SoundIndex.load(tmp_path / "v99.npz")
    # Built for another length.
    with pytest.raises(ValueError, match="built for 8192 samples"):
        SoundIndex.load(small_index).check(JTFSConfig.reference())
    assert zipfile.is_zipfile(small_index)


def test_the_cli_says_what_is_wrong_with_an_index_in_one_line(tmp_path):
    hit = ROOT / "plugin_host" / "examples" / "snare.flac"
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    for index, words in ((tmp_path / "junk.npz", "is not a sound index"),
                         (tmp_path / "none.npz", "no sound index")):
        r = subprocess.run([sys.executable, str(ROOT / "tympan_cli.py"), "match", str(hit),
                            "--index", str(index)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
