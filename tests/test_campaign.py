"""The GPU campaign's machinery on a CPU: the tiny plan end to end (preflight, metric,
time-boxed runs, evaluation, half-precision export, pack, unpack, report), deadlines,
sizing a run to its budget, the max_seconds backstop, and bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.campaign import StageRecord, load_plan, run_campaign, toml_text
from training.campaign.stages import _size_run
from training.config import TrainConfig, load_config
from training.metric_job import MetricJob, merge_metric, run_metric
from training.protocol import Protocol

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "tympan_cli.py"), "train"]
TINY_PLAN = ROOT / "configs" / "tiny" / "campaign.toml"


def sh(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=1100)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def roomy_plan(tmp: Path) -> Path:
    """The tiny plan with a run budget no loaded machine can exceed.

    Each tiny run is one epoch of 4 steps whatever its budget; with the plan's
    15 s, a probe step slowed by a loaded CI machine sized it down to fewer
    steps (the time box working as designed). 300 s keeps the 4 steps that the
    assertions below count; sizing to a short budget has its own test.
    """
    plan = tmp / "campaign.toml"
    text = TINY_PLAN.read_text()
    assert "budget_s = 15\n" in text
    plan.write_text(text.replace("budget_s = 15\n", "budget_s = 300\n"))
    return plan


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The tiny plan run once through the CLI as a device call would run it."""
    tmp = tmp_path_factory.mktemp("campaign")
    proc = sh("campaign", "--plan", str(roomy_plan(tmp)), "--device", "cpu", "--state",
              str(tmp / "device"), "--pack", str(tmp / "out"), "--deadline-s", "1000", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, proc


# The campaign is time-boxed: about a minute on a quiet 2-core machine, but a
# deadline of 400 s left run:pnp undone with a clean-clone CI, an index build
# and other tests beside it (458 s). 1000 s covers both runs' need (1.15 x 300 s
# budget + evaluation + overhead each, checked before each starts) with room for
# a loaded machine; this test's own timeout covers the module fixture that runs it.
@pytest.mark.timeout(1200)
def test_tiny_plan_runs_every_stage_and_records_it(campaign):
    tmp, proc = campaign
    data = json.loads((tmp / "device" / "campaign.json").read_text())
    assert {n: s["status"] for n, s in data["stages"].items()} == {
        "preflight": "done", "metric:test": "done", "run:p": "done", "run:pnp": "done"}
    assert data["complete"] is True and "campaign: complete" in proc.stdout
    assert data["hardware"]["device"] == "cpu" and data["hardware"]["torch"] == torch.__version__
    for name in ("p", "pnp"):
        st = data["stages"][f"run:{name}"]
        assert st["eval_sounds"] == 8 and st["steps"] == 4 and st["epochs_done"] == 1
        assert len(st["epoch_s"]) == 1 and 0 < st["epoch_s"][0] < st["fit_s"]
        assert st["samples_per_s"] == pytest.approx(4 * 4 / st["fit_s"], rel=1e-9)
        assert st["overhead_s"] > 0 and st["seconds"] >= st["fit_s"] + st["eval_s"]
        report = json.loads((tmp / "device" / st["report"]).read_text())
        assert report["jtfs_distance"]["mean"] == pytest.approx(st["jtfs_mean"], rel=1e-12)
    best = min(("p", "pnp"), key=lambda n: data["stages"][f"run:{n}"]["jtfs_mean"])
    assert data["best"]["run"] == best and data["best"]["half"] is True


def test_metric_stage_matches_the_metric_command_and_records_checksums(campaign, tmp_path):
    tmp, _ = campaign
    data = json.loads((tmp / "device" / "campaign.json").read_text())
    st = data["stages"]["metric:test"]
    compact = tmp / "device" / st["file"]
    assert sha256(compact) == st["sha256"]
    # The same job run independently through tympan train metric's functions.
    job = MetricJob("test", Protocol(), 4, 8, "float32", "stft-test", n_samples=8192)
    run_metric(job, tmp_path, device="cpu", batch=4, progress=False)
    full = merge_metric("test", tmp_path)
    assert sha256(full) == st["sha256_full"]                  # bit-identical computation
    with np.load(full) as f_full, np.load(compact) as f:
        assert set(f.files) == {"cell_ids", "M", "header"} and f["M"].dtype == np.float32
        np.testing.assert_array_equal(f["cell_ids"], f_full["cell_ids"])
        np.testing.assert_allclose(f["M"], f_full["M"], rtol=1e-6, atol=0)
    assert not (tmp / "device" / "metric-work" / "test").exists()   # shards dropped after merge


def test_half_precision_export_predicts_like_the_float32_one(campaign, tmp_path):
    from safetensors import safe_open

    from matcher.model import MatcherModel
    from training.model_export import export

    tmp, _ = campaign
    data = json.loads((tmp / "device" / "campaign.json").read_text())
    run_dir = tmp / "device" / "runs" / data["best"]["run"]
    half = tmp / "out" / "default.tympan"
    assert sha256(half) == data["best"]["sha256"]
    with safe_open(str(half), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        info = json.loads(f.metadata()["tympan"])
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    assert info["weights_dtype"] == "float16" and info["test_metrics"]["n_sounds"] == 8
    full = export(run_dir / "best.pt", tmp_path / "f32.tympan")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    audio = torch.from_numpy(np.random.default_rng(3).uniform(-0.5, 0.5, (6, 8192)).astype(np.float32))
    a = MatcherModel.load(half).predict_nu(audio)
    b = MatcherModel.load(full).predict_nu(audio)
    # float16 weights: about 3 significant digits on each weight.
    assert (a - b).abs().max().item() < 0.02


def test_pack_unpack_and_report(campaign, tmp_path):
    tmp, _ = campaign
    out = tmp / "out"
    parts = sorted(out.glob("state.tgz.*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    assert "campaign: complete" in (out / "campaign.log").read_text()
    # An older local state is kept beside the new one, not lost.
    state = tmp_path / "state"
    state.mkdir()
    (state / "old.txt").write_text("mine")
    proc = sh("campaign", "--unpack", str(out), "--state", str(state))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "state.prev" / "old.txt").read_text() == "mine"
    assert not list(state.rglob("*.pt")) and (state / "export" / "default.tympan").exists()
    assert json.loads((state / "campaign.json").read_text())["complete"] is True
    proc = sh("campaign-report", "--state", str(state), "--docs", str(tmp_path / "docs"),
              "--configs", str(tmp_path / "ran"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "docs" / "results.md").read_text()
    data = json.loads((state / "campaign.json").read_text())
    for name in ("p", "pnp"):
        st = data["stages"][f"run:{name}"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | {st['loss']} "))
        assert f"{st['jtfs_mean']:.4g}" in row and f"{st['mss_mean']:.4g}" in row
        assert (tmp_path / "docs" / "results" / f"{name}.png").stat().st_size > 10_000
        # The run file as it ran loads and is what was trained (no clock in it).
        ran = load_config(tmp_path / "ran" / f"{name}.toml")
        trained = TrainConfig.from_dict(json.loads(
            (tmp / "device" / "runs" / name / "config.json").read_text()))
        assert ran.optim.max_seconds == 0 and ran.optim.epochs == trained.optim.epochs
        assert ran.data == trained.data and ran.loss == trained.loss
    assert data["stages"]["metric:test"]["sha256"] in text and data["best"]["sha256"] in text


def test_a_finished_campaign_does_nothing_on_the_next_call(campaign):
    tmp, _ = campaign
    before = json.loads((tmp / "device" / "campaign.json").read_text())["stages"]
    proc = sh("campaign", "--plan", str(tmp / "campaign.toml"), "--device", "cpu", "--state",
              str(tmp / "device"), "--deadline-s", "60", "--quiet")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stdout + proc.stderr
    data = json.loads((tmp / "device" / "campaign.json").read_text())
    assert len(data["calls"]) == 2 and data["calls"][1]["ran"] == []    # no preflight, no rerun
    assert data["stages"] == before


@pytest.mark.timeout(1200)
def test_a_short_call_defers_what_does_not_fit_and_the_next_continues(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(TINY_PLAN.read_text().replace("preflight = true", "preflight = false")
                    .replace("limit = 8", "limit = 12"))
    lines: list[str] = []
    # Half a second: the metric starts (its first shard may finish), the runs wait.
    data = run_campaign(load_plan(plan), tmp_path / "s", 0.5, "cpu", progress=False,
                        say=lines.append)
    assert data["complete"] is False
    assert not any(n.startswith("run:") for n in data["stages"]), lines
    assert any("deferred" in line for line in lines), lines
    # A deadline with room for a loaded machine (a minute is usual): only the first is short.
    data = run_campaign(load_plan(plan), tmp_path / "s", 1000, "cpu", progress=False,
                        say=lines.append)
    assert data["complete"] is True
    st = data["stages"]["metric:test"]
    assert st["sounds"] == 12 and st["sounds_computed"] == 12 and st["shards"] == "3/3"


def test_a_failed_preflight_ends_the_call_recorded_and_packed(tmp_path):
    plan = tmp_path / "plan.toml"       # a JTFS too long for 1000 samples: fails at once
    plan.write_text("[metric]\nsplits = ['test']\nlimit = 2\nn_samples = 1000\n"
                    "[[run]]\nconfig = 'configs/tiny/p.toml'\n")
    proc = sh("campaign", "--plan", str(plan), "--state", str(tmp_path / "s"), "--device", "cpu",
              "--pack", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 1 and "campaign stopped: preflight failed" in proc.stdout
    assert "N = 1000" in proc.stdout and "Traceback" not in proc.stderr
    stages = json.loads((tmp_path / "s" / "campaign.json").read_text())["stages"]
    assert list(stages) == ["preflight"] and stages["preflight"]["status"] == "failed"
    assert (tmp_path / "out" / "state.tgz.00").exists()
    assert "preflight failed" in (tmp_path / "out" / "campaign.log").read_text()


def test_run_metric_starts_no_shard_past_its_deadline(tmp_path):
    job = MetricJob("test", Protocol(), 4, 8, "float32", "stft-test", n_samples=8192)
    assert run_metric(job, tmp_path, device="cpu", batch=4, progress=False,
                      deadline=time.monotonic() - 1) == []
    assert run_metric(job, tmp_path, device="cpu", batch=4, progress=False,
                      deadline=time.monotonic() + 600) == [0, 1]


def test_size_run_fits_epochs_or_a_subset_into_the_budget():
    cfg = load_config(ROOT / "configs" / "pnp-adaptive.toml")        # 82224 cells, batch 64
    per_epoch = 82224 // 64
    probe = {"step_s": 0.05, "val_s": 2.0}
    epoch_s = per_epoch * 0.05 + 2.0
    big = _size_run(cfg, 7.5 * epoch_s, probe)
    assert big.optim.epochs == 7 and big.data.n_train == 0
    assert big.optim.max_seconds == pytest.approx(1.15 * 7.5 * epoch_s, abs=0.05)
    capped = _size_run(cfg, 1000 * epoch_s, probe)
    assert capped.optim.epochs == 50                                   # never past the run file's
    small = _size_run(cfg, 30.0, probe)
    assert small.optim.epochs == 1 and small.data.n_train == int(28.0 / 0.05) * 64


def test_max_seconds_stops_a_run_at_the_next_step(tmp_path):
    from training.trainer import fit, load_checkpoint

    cfg = load_config(ROOT / "configs" / "tiny" / "p.toml")
    cfg = replace(cfg, log=replace(cfg.log, dir=str(tmp_path), progress=False, tensorboard=False),
                  optim=replace(cfg.optim, max_seconds=1e-6))
    run = fit(cfg)
    assert load_checkpoint(run / "last.pt")["step"] == 1 and (run / "best.pt").exists()


def test_reference_run_files_survive_the_toml_round_trip():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        if path.name == "real-hits.toml":          # recorded sets, not a run file
            continue
        cfg = load_config(path)
        again = TrainConfig.from_dict(tomllib.loads(toml_text(cfg.to_dict(), "x\ny")))
        assert again == cfg, path


def test_toml_text_is_read_back_identically():
    d = {"name": 'a "quoted"\nname', "seed": 3, "flag": False, "x": 1e-05, "big": 2.0**40,
         "pair": [0.15, 0.8], "names": ["p", "pnp"],
         "data": {"n_train": 0, "sr": 22050.0, "span": [-6.0, 6.0]},
         "log": {"dir": "runs/x y", "progress": True}}
    text = toml_text(d, "first line\nsecond line")
    assert text.startswith("# first line\n# second line\n")
    assert tomllib.loads(text) == d and tomllib.loads(toml_text(d)) == d
    with pytest.raises(ValueError, match="no TOML form"):
        toml_text({"x": None})


# Stage records as the campaign wrote them before StageRecord existed: the keys on disk.
OLD_RECORDS = {
    "preflight": {"status": "done", "seconds": 41.2},
    "failed": {"status": "failed", "error": "RuntimeError: out of luck", "seconds": 3.5},
    "metric partial": {"seconds": 12.0, "sounds_computed": 8, "sounds": 12, "sounds_per_s": 0.67,
                       "shards": "2/3", "batch": 4, "phi": "stft-test", "status": "partial"},
    "metric done": {"seconds": 18.0, "sounds_computed": 12, "sounds": 12, "sounds_per_s": 0.67,
                    "shards": "3/3", "batch": 4, "phi": "stft-test", "status": "done",
                    "sha256_full": "ab" * 32, "bytes_full": 9000, "sha256": "cd" * 32,
                    "bytes": 4000, "file": "metric/metric-test.npz"},
    "run": {"status": "done", "config": "configs/tiny/p.toml", "loss": "p", "pitch_known": False,
            "budget_s": 300, "probe": {"step_s": 0.2, "val_s": 0.5, "steps": 1}, "n_train": 16,
            "batch_size": 4, "epochs_planned": 1, "epochs_done": 1, "steps": 4, "fit_s": 3.0,
            "epoch_s": [2.5], "samples_per_s": 5.3, "step_samples_per_s": 20.0, "best_step": 4,
            "eval_s": 4.0, "eval_batch": 4, "eval_sounds": 8, "jtfs_mean": 0.5, "mss_mean": 1.5,
            "p_loss": 0.3, "report": "runs/p/eval-test-best.json", "overhead_s": 2.0,
            "seconds": 9.5},
}


@pytest.mark.parametrize("name", sorted(OLD_RECORDS))
def test_stage_records_round_trip_with_the_keys_on_disk(name):
    d = OLD_RECORDS[name]
    record = StageRecord.from_dict(d)
    assert record.to_dict() == d                                    # same keys, same values
    assert StageRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert (record.metric is not None) == name.startswith("metric")
    assert (record.run is not None) == (name == "run")
    exported = StageRecord.from_dict({**d, "exported": True}) if name == "run" else None
    assert exported is None or exported.run.exported is True


def test_stage_records_of_a_campaign_are_read_back_identically(campaign):
    tmp, _ = campaign
    stages = json.loads((tmp / "device" / "campaign.json").read_text())["stages"]
    for d in stages.values():
        assert StageRecord.from_dict(d).to_dict() == d
    assert StageRecord.from_dict(stages["run:p"]).run.jtfs_mean == stages["run:p"]["jtfs_mean"]
    with pytest.raises(ValueError, match="status 'finished'"):
        StageRecord("finished")


def test_the_gpu_plan_names_every_reference_run_in_the_issue_order():
    plan = load_plan(ROOT / "configs" / "gpu" / "campaign.toml")
    names = [r.name for r in plan.runs]
    assert names[:5] == ["pnp-adaptive", "p", "pnp-scheduled", "pnp-constant", "mss"]
    assert names[5:] == [n + "-pitch-known" for n in names[:5]]
    assert plan.metric.splits == ("train", "val", "test") and plan.metric.phi == "jtfs"
    assert plan.half and plan.preflight


@pytest.mark.parametrize("text, message", [
    ("bogus = 1\n", "unknown keys ['bogus']"),
    ("[metric]\nsplits = ['train', 'nope']\n", "split 'nope'"),
    ("[metric]\nbatchsize = 3\n", "unknown keys ['batchsize']"),
    ("[metric]\nphi = 'mfcc'\n", "phi 'mfcc'"),
    ("[[run]]\nbudget_s = 3\n", "needs config"),
    ("[[run]]\nconfig = 'configs/none.toml'\n", "does not exist"),
    ("[[run]]\nconfig = 'configs/p.toml'\n[[run]]\nconfig = 'configs/p.toml'\n", "share a name"),
    ("[[run]]\nconfig = 'configs/p.toml'\nbudget_s = -1\n", "budget_s must be > 0"),
    ("[export]\nhalf = true\nformat = 'onnx'\n", "[export] allows only half"),
    ("[metric\n", "not valid TOML"),
])
def test_bad_plans_are_named(tmp_path, text, message):
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_plan(plan)
    proc = sh("campaign", "--plan", str(plan), "--state", str(tmp_path / "s"), "--device", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "error" in proc.stderr


def test_cli_errors_are_one_line(tmp_path):
    cases = [
        ("campaign", "--state", str(tmp_path / "s"), "--device", "cpu"),                 # no plan
        ("campaign", "--plan", str(TINY_PLAN), "--state", str(tmp_path / "s"),
         "--device", "cpu", "--deadline-s", "0"),
        ("campaign", "--unpack", str(tmp_path), "--state", str(tmp_path / "s")),         # no parts
        ("campaign-report", "--state", str(tmp_path / "nothing")),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.tgz.00").write_bytes(b"not a tar")
    cases.append(("campaign", "--unpack", str(tmp_path / "bad"), "--state", str(tmp_path / "s")))
    if not torch.cuda.is_available():
        cases.append(("campaign", "--plan", str(TINY_PLAN), "--state", str(tmp_path / "s")))
    for args in cases:
        proc = sh(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "s").exists()              # nothing half-made
