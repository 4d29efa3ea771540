"""``tympan train export`` (``training.model_export``): checkpoint -> ``.tympan``.

One tiny checkpoint (configs/tiny/p.toml: 16 cells, 4 steps) serves the
module. The artifact loads in :class:`matcher.model.MatcherModel` and
predicts what the checkpoint's encoder predicts (float32: exactly; float16
weights: within 2e-2 in nu); ``--half`` about halves the file; bad input
is one line and exit code 2; a failed write leaves nothing behind.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import load_config
from training.model_export import export
from training.trainer import fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "tympan_cli.py"), "train", "export"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(ROOT / "configs" / "tiny" / "p.toml")
    cfg = replace(cfg, log=replace(cfg.log, dir=str(tmp / "runs"), progress=False),
                  metric=replace(cfg.metric, dir=str(tmp / "metric")))
    return fit(cfg) / "best.pt"


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The checkpoint's encoder, as training left it (eval mode)."""
    from matcher.encoder import Encoder

    ref = Encoder()
    ref.load_state_dict(load_checkpoint(tiny_checkpoint)["model"])
    return ref.eval()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), cwd=ROOT, capture_output=True, text=True, timeout=300)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def test_export_then_load_gives_identical_predictions(tiny_checkpoint, reference, tmp_path):
    from matcher.model import MatcherModel

    out = export(tiny_checkpoint, tmp_path / "m.tympan")
    model = MatcherModel.load(out)
    x = torch.randn(3, 1, *model.feature_config.shape)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_features(x), reference(x), rtol=0, atol=0)
    assert model.info["features"]["n_samples"] == 8192
    assert model.info["weights_dtype"] == "float32"
    assert [p["name"] for p in model.info["parameters"]] == ["f0", "tau", "p", "D", "alpha"]
    assert model.info["training"]["checkpoint"] == "best.pt"
    theta = model.predict_theta(np.zeros((2, 8192), np.float32) + np.eye(1, 8192, 5))
    assert theta.shape == (2, 5) and np.all(np.isfinite(theta))


def test_half_halves_the_file_and_predicts_nu_within_2e_2(tiny_checkpoint, reference, tmp_path):
    from safetensors import safe_open

    from matcher.model import MatcherModel

    full = export(tiny_checkpoint, tmp_path / "f32.tympan")
    half = export(tiny_checkpoint, tmp_path / "f16.tympan", half=True)
    with safe_open(str(half), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} - {torch.int64} == {torch.float16}
    # Weights are half the bytes; the JSON metadata (a few kB) is not.
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    model = MatcherModel.load(half)
    assert model.info["weights_dtype"] == "float16"
    x = torch.randn(4, 1, *model.feature_config.shape)
    with torch.no_grad():
        got, want = model.predict_features(x), reference(x)
    # float16 keeps ~3 significant digits per weight; nu lies in [-1, 1].
    assert (got - want).abs().max().item() < 2e-2


def test_the_cli_writes_a_loadable_model(tiny_checkpoint, tmp_path):
    out = tmp_path / "cli" / "model.tympan"
    r = _cli(str(tiny_checkpoint), "-o", str(out), "--no-onnx")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out} (") and "without test metrics" in r.stdout
    assert out.is_file() and not out.with_suffix(".onnx").exists()
    assert _leftovers(out.parent) == []


@pytest.mark.parametrize("case", ["missing", "random bytes", "not a zip", "a folder"])
def test_bad_input_is_one_line_and_exit_2(tiny_checkpoint, tmp_path, case):
    ckpt, out = tmp_path / "c.pt", tmp_path / "m.tympan"
    match = {"missing": "does not exist", "random bytes": "not a readable checkpoint",
             "not a zip": "not a readable checkpoint", "a folder": "cannot write"}[case]
    if case == "random bytes":
        ckpt.write_bytes(np.random.default_rng(0).bytes(3000))
    elif case == "not a zip":
        ckpt.write_bytes(b"PK\x03\x04 and then garbage")
    elif case == "a folder":
        ckpt = tiny_checkpoint
        out.mkdir()                     # the output path is taken by a folder
    if case != "a folder":
        out.write_bytes(b"an earlier model")    # a failed export leaves it alone
    r = _cli(str(ckpt), "-o", str(out), "--no-onnx")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("tympan train export: error: ") and match in r.stderr, r.stderr
    if case != "a folder":
        assert out.read_bytes() == b"an earlier model"
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_no_partial_file(tiny_checkpoint, tmp_path):
    # The artifact is written whole to a temporary file beside the target, then
    # renamed; here the rename fails (a folder holds the name): nothing is left.
    target = tmp_path / "model.tympan"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot write"):
        export(tiny_checkpoint, target)
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.tympan"]
    assert [p.name for p in target.iterdir()] == ["inside"]
    # A good export over an existing file replaces it whole.
    good = tmp_path / "good.tympan"
    good.write_bytes(b"an earlier model")
    export(tiny_checkpoint, good)
    assert good.read_bytes()[:8] != b"an earli" and _leftovers(tmp_path) == []
