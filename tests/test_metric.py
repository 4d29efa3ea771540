"""The metric M = J^T J by forward mode, and its sharded, resumable precompute job.

A short twin (2048 samples at 22050 Hz) and the stand-in Phi (a fixed random map
of a log STFT, :class:`matcher.metric.StftTestPhi`) keep this fast; the real
JTFS goes through the same code.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synth.twin import MembraneTwin
from training import cli
from matcher.metric import StftTestPhi, jacobian, metric
from training.metric_job import MetricJob, load_metric, merge_metric, run_metric
from training.protocol import Protocol

# torch loads its forward-mode decompositions through torch.jit.script on first use.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
N = 2048
TINY = Protocol(cells=4, val_central=2, n_test=20)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two BLAS threads on a shared 2-core machine spin against each other and
    # run these small matmuls ~15x slower; one thread is fast and deterministic.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def twin() -> MembraneTwin:
    return MembraneTwin(22050, N)


@pytest.fixture(scope="module")
def phi() -> StftTestPhi:
    return StftTestPhi(N)


@pytest.fixture(scope="module")
def nu() -> torch.Tensor:
    p = Protocol()
    return torch.tensor(np.concatenate([p.nu("val")[:3], p.nu("test")[:2], p.nu("train")[:2]]))


# -- the metric ------------------------------------------------------------------------

def test_jacobian_matches_central_differences(twin, phi, nu):
    x = nu[:4]
    jac = jacobian(x, twin, phi)
    assert jac.shape == (4, 64, 5) and jac.dtype == torch.float64

    def f(v):
        return phi(twin.from_nu(v))

    # Fourth-order central stencil, h = 1e-4 in nu: the f0 column's phase moves
    # ~1.6 omega t rad per unit of nu, so the 2nd-order stencil's h^2 error
    # alone reaches ~1e-2 there; this one stays below ~5e-4.
    h = 1e-4
    fd = torch.stack([(8 * (f(x + h * e) - f(x - h * e)) - (f(x + 2 * h * e) - f(x - 2 * h * e)))
                      / (12 * h) for e in torch.eye(5, dtype=torch.float64)], dim=-1)
    scale = jac.abs().amax(dim=1, keepdim=True)           # per sound and column
    assert torch.all((fd - jac).abs() <= 2e-3 * scale)


def test_metric_is_symmetric_psd_and_equals_jtj(twin, phi, nu):
    m, ev = metric(nu, twin, phi)
    assert m.shape == (7, 5, 5) and ev.shape == (7, 5) and m.dtype == ev.dtype == torch.float64
    assert torch.equal(m, m.mT)                                        # exactly
    assert torch.all(ev >= -1e-10 * ev.amax(dim=1, keepdim=True))
    assert torch.all(ev[:, 1:] >= ev[:, :-1])                          # ascending
    jac = jacobian(nu, twin, phi)
    torch.testing.assert_close(m, jac.mT @ jac, rtol=1e-12, atol=0)
    torch.testing.assert_close(ev, torch.linalg.eigvalsh(m), rtol=1e-12, atol=0)


def test_metric_does_not_depend_on_batch_size(twin, phi, nu):
    whole, _ = metric(nu, twin, phi)            # batch of 7
    single, _ = metric(nu, twin, phi, chunk=1)  # batches of 1
    scale = whole.abs().amax()
    assert (whole - single).abs().max() <= 1e-10 * scale


def test_float32_metric_is_close_to_float64(twin, phi, nu):
    m64, _ = metric(nu[:3], twin, phi)
    m32, _ = metric(nu[:3].float(), twin, phi)
    assert m32.dtype == torch.float64             # accumulated in float64 either way
    assert (m32 - m64).abs().max() <= 1e-2 * m64.abs().max()


def test_metric_input_errors(twin, phi):
    with pytest.raises(ValueError, match=r"nu has shape \(3, 4\): expected \[B, 5\]"):
        metric(torch.zeros(3, 4), twin, phi)
    with pytest.raises(ValueError, match="chunk = 0"):
        metric(torch.zeros(2, 5), twin, phi, chunk=0)


# -- the job -------------------------------------------------------------------------

def small_job(**kw) -> MetricJob:
    args = dict(split="test", protocol=TINY, shard_size=4, dtype="float64", phi="stft-test",
                n_samples=1024)
    return MetricJob(**{**args, **kw})


def test_job_shards_merge_and_match_direct_metric(tmp_path):
    job = small_job()                                   # 20 sounds -> 5 shards
    assert job.n_shards == 5
    assert run_metric(job, tmp_path, progress=False, shard=(1, 2)) == [1, 3]
    with pytest.raises(ValueError, match=r"3 of 5 shards missing or unreadable .*"
                                         r"shard-00000.npz, shard-00002.npz, shard-00004.npz"):
        merge_metric("test", tmp_path)
    assert run_metric(job, tmp_path, progress=False, shard=(0, 2)) == [0, 2, 4]
    assert run_metric(job, tmp_path, progress=False) == []              # all finished
    merged = load_metric(merge_metric("test", tmp_path))
    assert merged["header"] == job.header()
    np.testing.assert_array_equal(merged["cell_ids"], TINY.split_indices("test"))
    np.testing.assert_array_equal(merged["theta"], TINY.theta("test"))
    twin, phi = MembraneTwin(22050, 1024), StftTestPhi(1024)
    m, ev = metric(TINY.nu("test")[:6], twin, phi)
    np.testing.assert_allclose(merged["M"][:6], m.numpy(), rtol=1e-10, atol=1e-10 * m.abs().max())
    np.testing.assert_allclose(merged["eigvals"][:6], ev.numpy(), rtol=1e-8,
                               atol=1e-10 * ev.abs().max())
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == \
        ["job.json"] + [f"shard-{i:05d}.npz" for i in range(5)]


def test_a_subset_job_computes_the_cells_a_run_of_that_size_trains_on(tmp_path, capsys):
    from dataclasses import replace

    from training.config import load_config
    from training.data import MetricTable, Split

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "pnp.toml")
    cfg = replace(cfg, data=replace(cfg.data, n_train=6, n_val=4),
                  metric=replace(cfg.metric, dir=str(tmp_path), compute_missing=False))
    protocol = cfg.data.protocol
    for split, k in (("train", 6), ("val", 4)):
        job = MetricJob(split, protocol, 4, None, "float32", "stft-test", n_samples=8192, subset=k)
        ids = Split(cfg, split, k).ids
        np.testing.assert_array_equal(job.cell_ids, ids)
        assert job.n_sounds == k and job.n_shards == -(-k // 4)
        assert MetricJob.from_header(job.header()) == job and job.header()["subset"] == k
        # Not the split's first cells: the seeded subset spreads over the grid.
        assert not np.array_equal(ids, protocol.split_indices(split)[:k])
        code = cli.main(["metric", "--split", split, "--out", str(tmp_path), "--phi", "stft-test",
                         "--n-samples", "8192", "--subset", str(k), "--shard-size", "4", "--quiet"])
        assert code == 0 and f"{job.n_shards} of {job.n_shards} finished" in capsys.readouterr().out
        merge_metric(split, tmp_path)
        table = MetricTable(cfg, split, ids)             # no cell missing: nothing recomputed
        np.testing.assert_array_equal(table.ids, ids)
    assert "subset" not in small_job().header()           # older headers are unchanged
    with pytest.raises(ValueError, match="subset = -1: allowed integers >= 0"):
        small_job(subset=-1)


def test_compact_merge_is_float32_with_a_checked_sha256(tmp_path):
    import hashlib
    from dataclasses import replace

    from training.config import load_config
    from training.data import MetricTable, Split
    from training.metric_job import sha256_path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "pnp.toml")
    cfg = replace(cfg, data=replace(cfg.data, n_train=6),
                  metric=replace(cfg.metric, dir=str(tmp_path), compute_missing=False))
    ids = Split(cfg, "train", 6).ids
    job = MetricJob("train", cfg.data.protocol, 4, None, "float64", "stft-test", n_samples=8192,
                    subset=6)
    run_metric(job, tmp_path, progress=False)
    full = load_metric(merge_metric("train", tmp_path))
    assert not sha256_path(tmp_path / "metric-train.npz").exists()
    path = merge_metric("train", tmp_path, compact=True)
    small = load_metric(path)
    assert small["M"].dtype == np.float32 and small["cell_ids"].dtype == np.int64
    assert small["header"]["stored"] == "float32"
    np.testing.assert_allclose(small["M"], full["M"], rtol=1e-6, atol=1e-6 * np.abs(full["M"]).max())
    digest, name = sha256_path(path).read_text().split()
    assert name == path.name and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    table = MetricTable(cfg, "train", ids)
    np.testing.assert_allclose(table.M.numpy(), full["M"], rtol=1e-6,
                               atol=1e-6 * np.abs(full["M"]).max())
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF                                   # one flipped byte in the archive
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its sha256 in metric-train.npz.sha256"):
        MetricTable(cfg, "train", ids)
    merge_metric("train", tmp_path)                     # a plain merge drops the stale sum
    assert not sha256_path(path).exists()
    MetricTable(cfg, "train", ids)


def test_the_committed_cpu_metric_matches_its_sha256_and_the_cpu_runs():
    from training.config import load_config
    from training.data import MetricTable, Split

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "cpu" / "pnp-aug.toml")
    cfg = replace_metric_dir(cfg, root / cfg.metric.dir)
    for split, k in (("train", cfg.data.n_train), ("val", cfg.data.n_val)):
        table = MetricTable(cfg, split, Split(cfg, split, k).ids)   # checks the sha256
        assert table.M.shape == (k, 5, 5) and bool(torch.isfinite(table.M).all())
        # symmetric positive semi-definite, as J^T J is
        assert float((table.M - table.M.transpose(1, 2)).abs().max()) <= 1e-3 * float(
            table.M.abs().max())
        assert float(torch.linalg.eigvalsh(table.M.double()).min()) >= -1e-3 * float(
            table.M.abs().max())


def replace_metric_dir(cfg, path):
    from dataclasses import replace
    return replace(cfg, metric=replace(cfg.metric, dir=str(path)))


def test_torchrun_env_picks_the_share(tmp_path):
    job = small_job(n_sounds=12)
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert run_metric(job, tmp_path, progress=False, env=env) == [1]
    with pytest.raises(ValueError, match="give --shard or run under torchrun"):
        run_metric(job, tmp_path, progress=False, env=env, shard=(0, 3))


def test_other_settings_in_the_same_dir_are_an_error(tmp_path):
    run_metric(small_job(n_sounds=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(dtype: 'float64' there, 'float32' "
                                         r"here\); use another --out"):
        run_metric(small_job(n_sounds=4, dtype="float32"), tmp_path, progress=False)


def test_unreadable_shard_is_computed_again(tmp_path):
    job = small_job(n_sounds=8)
    run_metric(job, tmp_path, progress=False)
    path = tmp_path / "test" / "shard-00001.npz"
    good = path.read_bytes()
    for torn in (b"torn", good[:len(good) // 2]):        # not a zip; a cut-off zip
        path.write_bytes(torn)
        assert run_metric(job, tmp_path, progress=False) == [1]
        np.testing.assert_array_equal(load_metric(path)["M"], np.load(io.BytesIO(good))["M"])


def tympan(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return subprocess.Popen([sys.executable, "-m", "tympan_cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_gives_the_files_of_an_uninterrupted_run(tmp_path):
    args = ["train", "metric", "--split", "val", "--phi", "stft-test", "--n-samples", str(N),
            "--dtype", "float64", "--limit", "24", "--shard-size", "2", "--batch", "2", "--quiet"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = tympan(*args, "--out", str(killed))
    first = killed / "val" / "shard-00000.npz"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    left = sorted(p.name for p in (killed / "val").glob("shard-*.npz"))
    assert 1 <= len(left) < 12, left                     # killed mid-run

    resumed = tympan(*args, "--out", str(killed))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"computed {12 - len(left)} shards here; 12 of 12 finished" in out
    # The uninterrupted run, in this process (same code, same numbers).
    job = MetricJob("val", shard_size=2, n_sounds=24, dtype="float64", phi="stft-test",
                    n_samples=N)
    run_metric(job, whole, batch=2, progress=False)
    names = sorted(p.name for p in (whole / "val").iterdir())
    assert sorted(p.name for p in (killed / "val").iterdir()) == names   # no temp files left
    assert (killed / "val" / "job.json").read_text() == (whole / "val" / "job.json").read_text()
    for name in names[1:]:                                              # the shards
        a, b = load_metric(killed / "val" / name), load_metric(whole / "val" / name)
        assert a["header"] == b["header"]
        for key in ("cell_ids", "nu", "theta", "M", "eigvals"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")


def test_the_cli_computes_m_with_the_real_jtfs(tmp_path):
    # The default phi: the project JTFS (reference configuration, shortened to 2**13 samples).
    proc = tympan("train", "metric", "--split", "val", "--n-samples", str(2**13), "--limit", "1",
                  "--shard-size", "1", "--quiet", "--out", str(tmp_path))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    shard = load_metric(tmp_path / "val" / "shard-00000.npz")
    M = shard["M"][0]
    np.testing.assert_allclose(M, M.T, rtol=0, atol=0)
    assert np.all(np.isfinite(M)) and shard["eigvals"][0, -1] > 0
    assert shard["header"]["phi"] == "jtfs"


# -- the command line ------------------------------------------------------------------

def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["metric", "--split", "dev", "--out", "{tmp}"],
     "argument --split: invalid choice: 'dev' (choose from "),
    (["metric", "--split", "val", "--shard", "3/2", "--out", "{tmp}"],
     "bad --shard '3/2': expected I/N with 0 <= I < N"),
    (["metric", "--split", "val", "--shard", "x", "--out", "{tmp}"], "bad --shard 'x'"),
    (["metric", "--split", "val", "--batch", "0", "--out", "{tmp}"],
     "argument --batch: '0': allowed integers >= 1"),
    (["metric", "--split", "val", "--phi", "stft-test", "--out", "{tmp}/file/sub"],
     "--out {tmp}/file/sub: cannot write there"),
    (["merge-metric", "--split", "val", "--out", "{tmp}"],
     "no metric run for split 'val' in {tmp}"),
    (["fitt"], "unknown command 'fitt'; allowed: metric, merge-metric, fit, default, teacher, "
               "evaluate, export, export-onnx, campaign, campaign-report, nn-index, sound-index"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message.replace("{tmp}", str(tmp_path)) in err, err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_without_cuda(tmp_path, capsys):
    code, err = run_cli(capsys, "metric", "--split", "val", "--device", "cuda", "--phi",
                        "stft-test", "--out", str(tmp_path))
    assert code == 2 and "device 'cuda': no CUDA device is available here" in err
    assert err.count("\n") == 1


def test_cli_merge_lists_missing_shards(tmp_path, capsys):
    code, _ = run_cli(capsys, "metric", "--split", "test", "--phi", "stft-test", "--n-samples",
                      "1024", "--limit", "12", "--shard-size", "4", "--shard", "0/2", "--quiet",
                      "--out", str(tmp_path))
    assert code == 0
    code, err = run_cli(capsys, "merge-metric", "--split", "test", "--out", str(tmp_path))
    assert code == 2 and "1 of 3 shards missing or unreadable" in err and "shard-00001" in err


def test_real_console_script_reports_bad_input(tmp_path):
    proc = tympan("train", "metric", "--split", "val", "--shard", "3/2", "--phi", "stft-test",
                  "--out", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err == ("tympan train metric: error: bad --shard '3/2': expected I/N with "
                   "0 <= I < N, e.g. 0/4\n")
