"""Fine-tuning on recorded hits: the halves file, the [finetune] table, the perceptual term
descending, its validation half measured apart, and bad input."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig, load_config
from training.finetune import FinetuneConfig, read_real_sets

ROOT = Path(__file__).resolve().parents[1]
HITS = ROOT / "configs" / "real-hits.toml"
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_halves_cover_the_evaluation_sets_and_do_not_overlap():
    from _common import REAL_SETS

    sets = read_real_sets(HITS)
    assert list(sets) == list(REAL_SETS)
    for name, (folder, files, package) in REAL_SETS.items():
        s = sets[name]
        assert str(s.folder) == folder and s.package == package
        assert sorted(s.finetune + s.validation) == sorted(files)      # every file, once
        assert not set(s.finetune) & set(s.validation)
        assert all(p.is_file() for p in s.files("finetune") + s.files("validation"))
    g = sets["GMRockKit"]
    # Every drum is in both halves (split by velocity layer).
    drums = lambda names: {n.split("-")[0] for n in names}  # noqa: E731
    assert drums(g.finetune) == drums(g.validation) == {"Kick", "Snare", "Tom1", "Tom2", "TomFloor"}
    assert (len(g.finetune), len(g.validation)) == (15, 10)


@pytest.mark.parametrize("text, message", [
    ("[a]\nfolder = '/x'\npackage = 'p'\nfinetune = ['1.wav']\n", "needs exactly folder, package"),
    ("[a]\nfolder = '/x'\npackage = 'p'\nfinetune = ['1.wav']\nvalidation = ['1.wav']\n",
     "1.wav is in both halves"),
    ("[a]\nfolder = '/x'\npackage = 'p'\nfinetune = []\nvalidation = ['1.wav']\n",
     "finetune: allowed a non-empty list"),
    ("", "lists no set"),
    ("[a\n", "is not valid TOML"),
])
def test_bad_real_hits_files_are_named(tmp_path, text, message):
    path = tmp_path / "hits.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="hits.toml") as err:
        read_real_sets(path)
    assert message in str(err.value)


def test_a_missing_hit_names_its_package(tmp_path):
    path = tmp_path / "hits.toml"
    path.write_text(f"[mine]\nfolder = '{tmp_path}'\npackage = 'my-drums'\n"
                    "finetune = ['a.wav']\nvalidation = ['b.wav']\n")
    with pytest.raises(ValueError, match=r"1 of 1 mine hits missing .*first: a.wav.*my-drums"):
        read_real_sets(path)["mine"].files("finetune")


@pytest.mark.parametrize("table, message", [
    ("weight = -1", "weight = -1: allowed a number >= 0"),
    ("weight = 0", "weight = 0 leaves nothing to learn"),
    ("teacher_weight = 'a'", "teacher_weight = 'a': allowed a number >= 0"),
    ("teacher = 3", "hits, init and teacher are paths"),
    ("batch = 0", "batch = 0: allowed integers >= 1"),
    ("distance = 'l2'", "distance = 'l2': allowed 'mss', 'jtfs'"),
    ("hit = 'x'", "unknown keys ['hit']"),
])
def test_bad_finetune_tables_are_named(tmp_path, table, message):
    run = tmp_path / "run.toml"
    run.write_text(f"[finetune]\nhits = 'configs/real-hits.toml'\n{table}\n")
    with pytest.raises(ValueError, match="finetune") as err:
        load_config(run)
    assert message in str(err.value)


def test_pitch_known_runs_cannot_fine_tune():
    with pytest.raises(ValueError, match="needs pitch_known = false"):
        TrainConfig.from_dict({"pitch_known": True, "finetune": {"hits": str(HITS)}})


def four_hits(tmp_path: Path) -> Path:
    """A halves file of GMRockKit's four kick and snare extremes (fine-tune) and two toms."""
    sets = read_real_sets(HITS)
    path = tmp_path / "hits.toml"
    path.write_text(f"[kit]\nfolder = '{sets['GMRockKit'].folder}'\npackage = 'hydrogen-data'\n"
                    "finetune = ['Kick-Hardest.wav', 'Kick-Softest.wav', 'Snare-Hardest.wav', "
                    "'Snare-Softest.wav']\nvalidation = ['Tom1-Soft.wav', 'Tom2-Hard.wav']\n")
    return path


def tiny(tmp_path: Path, **finetune) -> TrainConfig:
    cfg = load_config(ROOT / "configs" / "tiny" / "p.toml")
    return replace(cfg, log=replace(cfg.log, dir=str(tmp_path / "runs"), progress=False),
                   finetune=FinetuneConfig(**finetune))


def test_the_perceptual_term_is_in_the_step_and_descends_in_nu(tmp_path):
    from training.losses import p_loss
    from training.trainer import Run

    cfg = tiny(tmp_path, hits=str(four_hits(tmp_path)), batch=4, weight=20.0)
    run = Run(cfg, 0, 1, torch.device("cpu"))
    assert len(run.real) == 4 and run.real.audio["validation"].shape == (2, 8192)
    # The step's loss is the supervised loss plus weight x the perceptual term.
    ids = run.train.ids[:4]
    run.train_mode()              # batch norm frozen, as in the step
    torch.manual_seed(5)          # dropout draws the same in both passes
    with torch.no_grad():
        batch = run.renderer(ids, augment=(0, 0))
        sup = p_loss(run.predict(batch, run.net), batch["nu"])
        idx = run.real.batch(0)
        nu_real = run.predict({"x": run.real.x["finetune"][idx], "nu": None}, run.net)
        real = run.real.distance(nu_real, run.real.audio["finetune"][idx])
    torch.manual_seed(5)
    assert run.train_step(ids) == pytest.approx(float(sup + 20.0 * real), rel=1e-4)
    # Its gradient leads somewhere: descending it in nu (the encoder's output) from the
    # centre of the space brings the renders closer to the recordings.
    nu = torch.zeros(4, 5, requires_grad=True)
    opt = torch.optim.Adam([nu], lr=0.05)
    target = run.real.audio["finetune"]
    start = float(run.real.distance(nu, target))
    for _ in range(40):
        opt.zero_grad()
        loss = run.real.distance(nu, target)
        loss.backward()
        opt.step()
    # Deterministic (no dropout, no sampling): 40 Adam steps take off about 10 %
    # (the MSS of a wide drum against one membrane is a flat landscape).
    assert float(run.real.distance(nu.detach(), target)) < 0.93 * start
    # The distance is the project's MSS between the render of the estimate and the hit.
    from matcher.distances import multiscale_spectral_distance
    with torch.no_grad():
        ref = multiscale_spectral_distance(run.renderer.render_nu(nu), target)
    assert float(ref) == pytest.approx(float(run.real.distance(nu.detach(), target)), rel=1e-5)
    scores = run.validate()
    assert scores["real_ft"] > 0 and math.isfinite(scores["real_val"])


def test_a_fine_tuning_run_logs_both_halves_and_resumes_exactly(tmp_path):
    from training.model_export import export
    from training.trainer import fit, load_checkpoint

    hits = str(four_hits(tmp_path))
    # Start from an exported model, as fine-tuning the shipped default does.
    base = fit(replace(tiny(tmp_path), name="base"))
    init = export(base / "last.pt", tmp_path / "base.tympan")
    cfg = tiny(tmp_path, hits=hits, batch=2, init=str(init))
    once = fit(replace(cfg, name="once", optim=replace(cfg.optim, epochs=2, max_steps=6)))
    part = replace(cfg, name="twice", optim=replace(cfg.optim, epochs=2, max_steps=3))
    fit(part)
    fit(replace(part, optim=replace(part.optim, max_steps=6)), resume=True)
    a, b = load_checkpoint(once / "last.pt"), load_checkpoint(part.run_dir / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    with (once / "metrics.csv").open() as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    assert len(val) == 1 and float(val[0]["real_ft"]) > 0 and float(val[0]["real_val"]) > 0
    # The run started from the exported weights, not from a fresh initialisation.
    start = fit(replace(cfg, name="start", optim=replace(cfg.optim, max_steps=1, lr=1e-12)))
    w0 = load_checkpoint(start / "last.pt")["model"]
    wb = load_checkpoint(base / "last.pt")["model"]
    k = next(k for k in wb if wb[k].dtype.is_floating_point and wb[k].numel() > 100)
    assert (w0[k] - wb[k]).abs().max() < 1e-3 * wb[k].abs().max() + 1e-6
    assert np.isfinite(float(val[0]["val_loss"]))


def test_fine_tuning_keeps_batch_norm_statistics_unless_told_not_to(tmp_path):
    from training.trainer import Run

    hits = str(four_hits(tmp_path))
    for freeze in (True, False):
        run = Run(tiny(tmp_path, hits=hits, batch=2, freeze_bn=freeze), 0, 1, torch.device("cpu"))
        bn = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = [m.running_mean.clone() for m in bn]
        run.train_step(run.train.ids[:4])
        same = all(torch.equal(a, m.running_mean) for a, m in zip(before, bn))
        assert same == freeze


def write_teacher(path: Path, names: list[str], nu: np.ndarray) -> Path:
    np.savez(path, names=np.array(names), nu=nu.astype(np.float32))
    return path


def test_the_teacher_term_is_the_p_loss_to_the_labels_of_the_drawn_hits(tmp_path):
    from training.trainer import Run

    hits = four_hits(tmp_path)
    names = [f"GMRockKit/{n}" for n in ("Kick-Hardest.wav", "Kick-Softest.wav",
                                         "Snare-Hardest.wav", "Snare-Softest.wav")]
    labels = np.random.default_rng(3).uniform(-0.9, 0.9, (4, 5))
    # Stored in another order, with an extra row: read back by name.
    order = [2, 0, 3, 1]
    teacher = write_teacher(tmp_path / "t.npz", [names[i] for i in order] + ["x/y.wav"],
                            np.concatenate([labels[order], np.zeros((1, 5))]))
    for weight in (0.0, 3.0):
        run = Run(tiny(tmp_path, hits=str(hits), batch=3, weight=weight, teacher=str(teacher),
                       teacher_weight=2.5), 0, 1, torch.device("cpu"))
        run.model.eval()
        predict = lambda x: run.predict({"x": x, "nu": None}, run.model)  # noqa: E731
        with torch.no_grad():
            idx = run.real.batch(7)
            nu_hat = predict(run.real.x["finetune"][idx]).numpy()
            want = 2.5 * 0.5 * ((nu_hat - labels[idx]) ** 2).sum(-1).mean()
            if weight:
                want += weight * float(run.real.distance(torch.as_tensor(nu_hat),
                                                         run.real.audio["finetune"][idx]))
            assert float(run.real.loss(7, predict)) == pytest.approx(want, rel=1e-5)


def test_distilling_the_teacher_brings_the_encoder_to_its_labels(tmp_path):
    from training.trainer import Run

    hits = four_hits(tmp_path)
    names = [f"GMRockKit/{n}" for n in ("Kick-Hardest.wav", "Kick-Softest.wav",
                                         "Snare-Hardest.wav", "Snare-Softest.wav")]
    labels = np.array([[0.5, -0.5, 0.2, 0.1, -0.3]] * 4)
    teacher = write_teacher(tmp_path / "t.npz", names, labels)
    cfg = tiny(tmp_path, hits=str(hits), batch=4, weight=0.0, teacher=str(teacher),
               teacher_weight=50.0)
    run = Run(replace(cfg, optim=replace(cfg.optim, lr=3e-3)), 0, 1, torch.device("cpu"))

    def gap() -> float:
        run.model.eval()
        with torch.no_grad():
            nu = run.predict({"x": run.real.x["finetune"], "nu": None}, run.model).numpy()
        return float(np.abs(nu - labels).mean())

    start = gap()
    for _ in range(15):
        run.train_step(run.train.ids[:4])
    # The encoder moved most of the way to the labels of the hits it was shown.
    assert gap() < 0.5 * start


@pytest.mark.parametrize("make, message", [
    (None, "no such file"),
    (lambda p: p.write_text("not npz"), "not a teacher file"),
    (lambda p: write_teacher(p, ["GMRockKit/Kick-Hardest.wav"], np.zeros((1, 5))),
     "3 fine-tuning hits have no label (first: GMRockKit/Kick-Softest.wav)"),
    (lambda p: np.savez(p, names=np.array(["a", "b"]), nu=np.zeros((2, 4))),
     "nu has shape (2, 4), allowed [2, 5]"),
    (lambda p: np.savez(p, names=np.array(["a"]), nu=np.full((1, 5), 1.5)),
     "labels must be finite and in [-1, 1]"),
])
def test_bad_teacher_files_are_named(tmp_path, make, message):
    from training.finetune import read_teacher

    path = tmp_path / "t.npz"
    if make is not None:
        make(path)
    names = [f"GMRockKit/{n}" for n in ("Kick-Hardest.wav", "Kick-Softest.wav",
                                         "Snare-Hardest.wav", "Snare-Softest.wav")]
    with pytest.raises(ValueError, match="teacher = ") as err:
        read_teacher(path, names)
    assert message in str(err.value)


def test_a_teacher_needs_hits():
    with pytest.raises(ValueError, match="teacher needs hits"):
        FinetuneConfig(teacher="t.npz")
