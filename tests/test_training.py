"""The training pipeline end to end on the tiny configs: fit per loss, exact resume
(also after SIGKILL), 2-process DDP on CPU, evaluate, model loading, CLI errors.
``tympan train export`` is tested in test_model_export."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig, load_config
from training.trainer import fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
CLI = [sys.executable, str(ROOT / "tympan_cli.py"), "train"]


def tiny(tmp_path: Path, loss: str, **optim) -> TrainConfig:
    cfg = load_config(TINY / f"{loss}.toml")
    cfg = replace(cfg, log=replace(cfg.log, dir=str(tmp_path / "runs"), progress=False),
                  metric=replace(cfg.metric, dir=str(tmp_path / "metric")))
    if optim:
        cfg = replace(cfg, optim=replace(cfg.optim, **optim))
    return cfg


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("loss", ["p", "pnp", "mss", "jtfs"])
def test_tiny_fit_runs_each_loss(tmp_path, loss):
    cfg = tiny(tmp_path, loss)
    run = fit(cfg)
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == 4 and ck["epoch"] == 1          # 16 cells / batch 4 = one epoch
    log = rows(run)
    train = [float(r["loss"]) for r in log if r["split"] == "train"]
    val = [r for r in log if r["split"] == "val"]
    assert len(train) == 4 and all(math.isfinite(v) and v >= 0 for v in train)
    assert len(val) == 1 and math.isfinite(float(val[0]["val_loss"]))
    assert (run / "best.pt").exists() and any((run / "tb").iterdir())
    if loss == "pnp":
        # M computed for the run's cells on first use and stored for the next run
        with np.load(tmp_path / "metric" / "metric-train.npz") as f:
            assert len(f["cell_ids"]) == 16 and f["M"].shape == (16, 5, 5)
            assert np.all(np.linalg.eigvalsh(f["M"]) > -1e-6)     # PSD
        assert float(val[0]["lam"]) in (0.5, 2.0)               # adaptive damping moved


def test_a_fitted_p_model_beats_chance_on_its_own_batch(tmp_path):
    # Overfit one batch: the loss must fall well below its starting value.
    cfg = tiny(tmp_path, "p", epochs=30, max_steps=30, lr=3e-3)
    cfg = replace(cfg, data=replace(cfg.data, n_train=4))
    run = fit(cfg)
    train = [float(r["loss"]) for r in rows(run) if r["split"] == "train"]
    assert np.mean(train[-5:]) < 0.3 * np.mean(train[:3])


def _state(path: Path) -> dict:
    ck = load_checkpoint(path)
    return ck


def _same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(sa[i][k], sb[i][k], rtol=0, atol=0)
    assert torch.equal(a["rng"][0]["cpu"], b["rng"][0]["cpu"])
    assert a["damping"] == b["damping"]


def test_resume_continues_with_the_same_step_optimizer_and_rng(tmp_path):
    # 8 steps over 2 epochs in one go, versus 3 steps, stop, resume to 8.
    once = fit(replace(tiny(tmp_path, "pnp", epochs=2, max_steps=8), name="once"))
    part = replace(tiny(tmp_path, "pnp", epochs=2, max_steps=3), name="twice")
    fit(part)
    assert load_checkpoint(part.run_dir / "last.pt")["step"] == 3
    with pytest.raises(ValueError, match="--resume"):
        fit(part)                                   # an existing run is never overwritten
    fit(replace(part, optim=replace(part.optim, max_steps=8)), resume=True)
    _same_state(_state(once / "last.pt"), _state(part.run_dir / "last.pt"))
    steps = [int(r["step"]) for r in rows(part.run_dir) if r["split"] == "train"]
    assert steps == list(range(1, 9))               # no step logged twice or missing


def test_resume_after_sigkill_is_exact(tmp_path):
    cfg_path = tmp_path / "run.toml"
    text = (TINY / "p.toml").read_text()
    text = text.replace('name = "tiny-p"', 'name = "killed"')
    text = text.replace("epochs = 1\nmax_steps = 4", "epochs = 3\nmax_steps = 12")
    text = text.replace("ckpt_every = 2", "ckpt_every = 1")
    text = text.replace('[log]', f'[log]\ndir = "{tmp_path / "runs"}"\ntensorboard = false')
    cfg_path.write_text(text)
    proc = subprocess.Popen(CLI + ["fit", "--config", str(cfg_path), "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "runs" / "killed" / "last.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if last.exists() and 3 <= load_checkpoint(last)["step"] < 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["step"]
    assert 3 <= killed_at < 12, killed_at
    done = subprocess.run(CLI + ["fit", "--config", str(cfg_path), "--resume", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = replace(load_config(cfg_path), name="straight")
    fit(ref)
    _same_state(_state(ref.run_dir / "last.pt"), _state(last))


def test_two_process_ddp_on_cpu_completes_an_epoch(tmp_path):
    cfg = tiny(tmp_path, "p", max_steps=0)          # 16 cells, batch 4 per rank: 2 steps
    run = fit(cfg, devices=2, resume=False, accelerator="cpu")
    ck = load_checkpoint(run / "last.pt")
    assert ck["world"] == 2 and ck["epoch"] == 1 and ck["step"] == 2
    assert len(ck["rng"]) == 2
    assert any(r["split"] == "val" for r in rows(run))
    with pytest.raises(ValueError, match="same number"):
        fit(replace(cfg, optim=replace(cfg.optim, epochs=2)), devices=1, resume=True)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    return fit(tiny(tmp, "p")) / "best.pt"


def test_evaluate_reports_every_metric(tiny_checkpoint, tmp_path):
    from training.evaluate import evaluate

    s = evaluate(tiny_checkpoint, "test", limit=6, batch=4, out=tmp_path, progress=False)
    assert s["n_sounds"] == 6
    for key in ("jtfs_distance", "mss_distance", "f0_cents"):
        assert all(math.isfinite(v) and v >= 0 for v in s[key].values()), key
    assert set(s["parameters"]) == {"f0", "tau", "p", "D", "alpha"}
    for p in s["parameters"].values():
        assert 0 <= p["mae_nu"] <= 2 and p["rmse_nu"] >= p["mae_nu"] - 1e-12
    for f in s["files"]:
        assert Path(f).stat().st_size > 0
    on_disk = json.loads((tmp_path / "eval-test-best.json").read_text())
    assert on_disk["p_loss"] == pytest.approx(s["p_loss"])
    assert "| f0 | Hz |" in (tmp_path / "eval-test-best.md").read_text()


def test_loading_never_unpickles(tmp_path):
    from matcher.model import MatcherModel

    evil = tmp_path / "evil.tympan"
    torch.save({"x": torch.zeros(1)}, evil)          # a pickle, not safetensors
    with pytest.raises(ValueError, match="not a Tympan model"):
        MatcherModel.load(evil)
    from safetensors.torch import save_file
    plain = tmp_path / "plain.tympan"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="without Tympan metadata"):
        MatcherModel.load(plain)
    with pytest.raises(ValueError, match="does not exist"):
        MatcherModel.load(tmp_path / "missing.tympan")


def test_shipped_default_model_loads_and_beats_chance_on_test_sounds():
    from matcher.model import DEFAULT_MODEL, MatcherModel
    from synth.twin import MembraneTwin
    from training.protocol import Protocol

    model = MatcherModel.load()
    assert DEFAULT_MODEL.exists() and model.info["test_metrics"] is not None
    cfg = model.feature_config
    assert (cfg.sr, cfg.n_samples, cfg.n_bins, cfg.hop) == (22050.0, 2**16, 120, 256)
    protocol = Protocol()
    ids = protocol.split_indices("test")[::625]               # 16 test cells
    nu = torch.as_tensor(protocol.nu(ids))
    audio = MembraneTwin(cfg.sr, cfg.n_samples).from_nu(nu).float()
    nu_hat = model.predict_nu(audio).double()
    assert nu_hat.shape == (16, 5) and bool((nu_hat.abs() <= 1).all())
    # Guessing the centre scores 0.5 * 5 / 3 = 0.83 on uniform cells; the shipped
    # model's validation P-loss was 0.084: 0.3 leaves room for 16 sounds' spread.
    p = 0.5 * ((nu_hat - nu) ** 2).sum(1).mean()
    assert float(p) < 0.3, float(p)


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, match", [
    (["fit", "--config", "nope.toml"], "does not exist"),
    (["fit", "--config", str(TINY / "p.toml"), "--devices", "0"], "allowed integers >= 1"),
    (["evaluate", "nope.pt"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, match):
    r = _cli(*args)
    assert r.returncode == 2 and match in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_config_keys_and_values_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('loss = "p"\n[optim]\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match=r"\[optim\] unknown keys \['learning_rate'\]"):
        load_config(bad)
    bad.write_text('loss = "ddsp"\n')
    with pytest.raises(ValueError, match="allowed p, pnp, mss, jtfs"):
        load_config(bad)
    bad.write_text('[data]\nn_samples = 8192\n[features]\nn_samples = 4096\n')
    with pytest.raises(ValueError, match="differ"):
        load_config(bad)
    bad.write_text('[damping]\nkind = "sometimes"\n')
    with pytest.raises(ValueError, match="damping kind"):
        load_config(bad)
    r = _cli("fit", "--config", str(bad))
    assert r.returncode == 2 and "damping kind" in r.stderr and "Traceback" not in r.stderr


def test_pnp_without_metric_says_how_to_make_it(tmp_path):
    cfg = tiny(tmp_path, "pnp")
    cfg = replace(cfg, metric=replace(cfg.metric, compute_missing=False))
    with pytest.raises(ValueError, match="tympan train metric --split train"):
        fit(cfg)


def test_every_shipped_config_loads():
    # Run files; campaign plans (configs/*/campaign.toml) are tested in test_campaign,
    # the recorded sets' halves (real-hits.toml) in test_finetune.
    files = sorted(f for f in (ROOT / "configs").rglob("*.toml")
                   if f.name not in ("campaign.toml", "real-hits.toml"))
    assert len(files) >= 18
    names = set()
    for f in files:
        cfg = load_config(f)
        names.add(cfg.name)
    for loss in ("p", "pnp-constant", "pnp-scheduled", "pnp-adaptive", "pnp-diagonal", "mss", "jtfs"):
        assert loss in names and f"{loss}-pitch-known" in names
