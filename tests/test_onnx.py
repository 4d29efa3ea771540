"""The encoder's ONNX graph (``matcher.onnx_model``, ``matcher.cqt_graph``) against torch.

One algorithm, two implementations: the shipped ``matcher/models/default.onnx``
(``make default-onnx`` rebuilds it) must give the nu of the torch path
(``CQTFeatures`` + encoder) to 1e-4 on membrane hits from the twin and the
voice, noise, silence and recorded GMRockKit hits. A graph built for another
model, or a damaged one, is a one-line error; without a graph the model runs
on torch. The export itself is checked on a tiny pitch-known model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from matcher.audio import AudioConfig, load_hit  # noqa: E402
from matcher.cqt_graph import CQTGraph  # noqa: E402
from matcher.features import CQTFeatures, FeatureConfig  # noqa: E402
from matcher.model import DEFAULT_MODEL, MatcherModel  # noqa: E402
from matcher.onnx_export import export_onnx  # noqa: E402
from matcher.onnx_model import TOLERANCE, onnx_path  # noqa: E402
from synth.params import theta_to_nu  # noqa: E402
from synth.twin import MembraneTwin  # noqa: E402
from synth.voice import DrumVoice  # noqa: E402

GMROCKKIT = Path("/usr/share/hydrogen/data/drumkits/GMRockKit")
REAL = ("Kick-Hard.wav", "Snare-Soft.wav", "TomFloor-Med.wav")


def _peak1(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.abs(x).max()), 1e-12)).astype(np.float32)


def _hits(cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """Model-side inputs of every kind the matcher meets."""
    sr, n = cfg.sr, cfg.n_samples
    thetas = np.array([[45.0, 0.7, 1e-5, 1e-5, 1.0], [200.0, 0.3, 1e-3, 1e-3, 0.7],
                       [900.0, 0.08, 0.15, 0.25, 0.2]])
    twin = MembraneTwin(sr, n).from_nu(torch.as_tensor(theta_to_nu(thetas))).float().numpy()
    out = {f"twin f0={t[0]:g}": _peak1(y) for t, y in zip(thetas, twin)}
    voice = DrumVoice(sr)
    voice.note_on(np.array([120.0, 0.5, 5e-3, 2e-2, 0.9]))
    y = np.zeros(n, np.float32)
    voice.render_into(y)
    out["voice"] = _peak1(y)
    t = np.arange(n) / sr
    out["noise burst"] = _peak1(np.random.default_rng(1).standard_normal(n) * np.exp(-t / 0.1))
    out["silence"] = np.zeros(n, np.float32)
    for name in REAL:
        if (GMROCKKIT / name).is_file():
            out[name] = load_hit(GMROCKKIT / name, AudioConfig(sr, n)).audio.astype(np.float32)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch (and so ONNX Runtime) thread: on a loaded 2-core box two threads'
    barriers can make a forward pass 50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shipped():
    """(onnx model, torch model, hits) of the shipped default."""
    if not onnx_path(DEFAULT_MODEL).is_file():
        pytest.fail(f"{onnx_path(DEFAULT_MODEL)} is missing: run 'make default-onnx'")
    fast = MatcherModel.load(backend="onnx")
    ref = MatcherModel.load(backend="torch")
    return fast, ref, _hits(ref.feature_config)


def test_shipped_onnx_agrees_with_torch_within_1e4_in_nu(shipped):
    fast, ref, hits = shipped
    assert fast.backend == "onnx" and ref.backend == "torch"
    assert MatcherModel.load().backend == "onnx"          # auto picks it on the CPU
    x = np.stack(list(hits.values()))
    a, b = fast.predict_nu(x), ref.predict_nu(x)
    diff = (a - b).abs().max(1).values
    worst = {name: f"{d:.1e}" for name, d in zip(hits, diff.tolist())}
    assert float(diff.max()) <= TOLERANCE, worst
    if GMROCKKIT.is_dir():                                 # hydrogen-data: `make install`
        assert all(name in hits for name in REAL)
    # one hit at a time ([N] in, [5] out) gives the batch's rows
    torch.testing.assert_close(fast.predict_nu(x[1]), a[1], rtol=0, atol=1e-6)
    theta = fast.predict_theta(x[:2])
    assert theta.shape == (2, 5) and np.all(np.isfinite(theta))


def test_cqt_graph_equals_cqt_features_on_another_configuration():
    cfg = FeatureConfig(n_samples=8192, fmin=40.0, n_bins=96)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.stack([_peak1(rng.standard_normal(8192) * np.exp(-np.arange(8192) / d))
                                  for d in (300.0, 3000.0)]))
    ref = CQTFeatures(cfg).cqt(x)
    for group in (None, 5):              # octaves; groups across octave boundaries
        with torch.no_grad():
            got = CQTGraph(cfg, group)(x)
        assert got.shape == ref.shape
        # same kernel spectra on the same supports: float32 rounding apart
        assert float((got - ref).abs().max()) <= 1e-6 * float(ref.max())
        with torch.no_grad():            # batch of one = row of the batch
            torch.testing.assert_close(CQTGraph(cfg, group)(x[1:]), got[1:], rtol=0, atol=1e-6)


def _copy_default(tmp_path: Path, with_onnx: bool = True) -> Path:
    model = tmp_path / "m.tympan"
    shutil.copyfile(DEFAULT_MODEL, model)
    if with_onnx:
        shutil.copyfile(onnx_path(DEFAULT_MODEL), onnx_path(model))
    return model


def _rewrite_meta(graph: Path, **changes) -> None:
    proto = onnx.load(str(graph))
    entry = next(e for e in proto.metadata_props if e.key == "tympan")
    info = json.loads(entry.value)
    info.update(changes)
    entry.value = json.dumps(info)
    onnx.save(proto, str(graph))


def _one_line_error(model: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        MatcherModel.load(model)          # auto: a graph that is there must check
    msg = str(err.value)
    assert "\n" not in msg and "export-onnx" in msg


def test_stale_or_corrupt_onnx_is_a_one_line_error(tmp_path):
    model = _copy_default(tmp_path)
    graph = onnx_path(model)
    _rewrite_meta(graph, model_sha256="0" * 64)
    _one_line_error(model, "built for another model")
    _rewrite_meta(graph, model_sha256=json.loads(next(
        e.value for e in onnx.load(str(onnx_path(DEFAULT_MODEL))).metadata_props
        if e.key == "tympan"))["model_sha256"], features={"sr": 44100.0})
    _one_line_error(model, "another feature configuration")
    proto = onnx.load(str(graph))
    del proto.metadata_props[:]
    onnx.save(proto, str(graph))
    _one_line_error(model, "not a Tympan encoder graph")
    data = onnx_path(DEFAULT_MODEL).read_bytes()
    graph.write_bytes(data[: len(data) // 3])                 # truncated
    _one_line_error(model, "not a loadable ONNX model")
    graph.write_bytes(b"\x00garbage" * 100)
    _one_line_error(model, "not a loadable ONNX model")


def test_without_onnx_the_model_runs_on_torch(tmp_path, monkeypatch):
    model = _copy_default(tmp_path, with_onnx=False)
    m = MatcherModel.load(model)
    assert m.backend == "torch" and m.onnx is None
    assert m.predict_nu(np.zeros((1, m.feature_config.n_samples), np.float32)).shape == (1, 5)
    with pytest.raises(ValueError, match="no ONNX graph"):
        MatcherModel.load(model, backend="onnx")
    with pytest.raises(ValueError, match="backend 'fast'"):
        MatcherModel.load(model, backend="fast")
    monkeypatch.setenv("TYMPAN_BACKEND", "torch")
    assert MatcherModel.load().backend == "torch"


@pytest.mark.slow
def test_export_of_a_pitch_known_model_round_trips(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from matcher.encoder import Encoder

    torch.manual_seed(0)
    cfg = FeatureConfig(n_samples=8192, fmin=40.0, n_bins=96)
    enc = Encoder(pitch_known=True).eval()
    with torch.no_grad():                         # a head that does not saturate tanh
        enc.head[2].running_var.fill_(4.0)
    with safe_open(str(DEFAULT_MODEL), "pt") as f:
        info = json.loads(f.metadata()["tympan"])
    info.update(pitch_known=True, features=cfg.to_dict(), test_metrics=None)
    model = tmp_path / "pk.tympan"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(model),
              metadata={"tympan": json.dumps(info)})
    graph = export_onnx(model)
    assert graph == onnx_path(model)
    fast = MatcherModel.load(model)
    ref = MatcherModel.load(model, backend="torch")
    assert fast.backend == "onnx"
    assert fast.onnx.info["outputs"] == 4 and fast.onnx.info["export_max_abs_nu_diff"] <= TOLERANCE
    x = np.stack(list(_hits(cfg).values()))
    nu_f0 = torch.linspace(-0.5, 0.5, len(x))
    a, b = fast.predict_nu(x, nu_f0), ref.predict_nu(x, nu_f0)
    assert a.shape == (len(x), 5) and bool((a[:, 0] == nu_f0).all())
    assert float((a - b).abs().max()) <= TOLERANCE
