"""The encoder as an ONNX graph beside its ``.tympan``: export, check, run on ONNX Runtime.

``MODEL.onnx`` next to ``MODEL.tympan`` is the whole encoder-only path in one
graph: peak-normalized audio ``audio [B, n_samples]`` float32 at the model's
rate in, the encoder's output ``nu [B, K]`` out (``K = 5``, or 4 for a
pitch-known model) — the CQT (:class:`matcher.cqt_graph.CQTGraph`), ``log1p``
and EfficientNet-B0. :class:`matcher.model.MatcherModel` runs it on ONNX
Runtime's CPU provider when it is there (about 3x faster than torch on 2
cores); a native plugin shell can load the same file.

The graph's metadata (``metadata_props``, key ``"tympan"``: one JSON document)
names the format and version, the sha256 of the ``.tympan`` it was built from,
the feature configuration, the output size and the agreement with torch
measured at export. :class:`OnnxEncoder` checks them on load, so a graph left
from another model, another configuration, or a damaged file is one clear
error instead of wrong parameters. Rebuild with
``tympan train export-onnx MODEL.tympan`` (``make default-onnx`` for the
shipped model).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .features import FeatureConfig

__all__ = ["ONNX_FORMAT", "ONNX_VERSION", "TOLERANCE", "OnnxEncoder", "export_onnx",
           "file_sha256", "onnx_path"]

ONNX_FORMAT = "tympan-encoder-onnx"
ONNX_VERSION = 1
OPSET = 18
TOLERANCE = 1e-4          # max |nu| difference to torch accepted at export


def onnx_path(model_path: str | Path) -> Path:
    """Where the graph of ``model_path`` lives: beside it, suffix ``.onnx``."""
    return Path(model_path).with_suffix(".onnx")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rebuild(model_path: Path) -> str:
    return f"rebuild it with 'tympan train export-onnx {model_path}' or delete it"


def _example_audio(cfg: FeatureConfig, batch: int = 2) -> np.ndarray:
    """Decaying noise bursts, peak 1 (the export's trace and agreement check)."""
    rng = np.random.default_rng(0)
    t = np.arange(cfg.n_samples) / cfg.sr
    decay = np.geomspace(0.05, 1.0, batch)[:, None]                    # seconds
    x = rng.standard_normal((batch, cfg.n_samples)) * np.exp(-t / decay)
    return (x / np.abs(x).max(-1, keepdims=True)).astype(np.float32)


class OnnxEncoder:
    """An exported graph on ONNX Runtime's CPU provider, checked against its ``.tympan``.

    Parameters
    ----------
    path : Path
        The ``.onnx`` file.
    model_path : Path
        The ``.tympan`` it must have been built from (its sha256 is compared).
    features : FeatureConfig
        The model's feature configuration (compared with the graph's).
    n_out : int
        The encoder's output size.
    threads : int
        ONNX Runtime intra-op threads.

    Raises
    ------
    ValueError
        One line: onnxruntime missing, file unreadable or not an ONNX model,
        not a Tympan graph, built for another model or configuration.
    """

    def __init__(self, path: str | Path, model_path: str | Path, features: FeatureConfig,
                 n_out: int, threads: int = 2):
        self.path, model_path = Path(path), Path(model_path)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ValueError(f"the ONNX backend needs onnxruntime ({err})") from None
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: the audio thread shares these cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own types; all mean "unusable"
            text = str(err).strip()
            first = text.splitlines()[0][:200] if text else type(err).__name__
            raise ValueError(f"{self.path} is not a loadable ONNX model ({first}); "
                             f"{_rebuild(model_path)}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get("tympan")
        try:
            self.info: dict[str, Any] = json.loads(raw) if raw else {}
        except ValueError:
            self.info = {}
        if self.info.get("format") != ONNX_FORMAT or self.info.get("version") != ONNX_VERSION:
            raise ValueError(f"{self.path} is not a Tympan encoder graph v{ONNX_VERSION} (metadata "
                             f"format {self.info.get('format')!r}); {_rebuild(model_path)}")
        sha = file_sha256(model_path)
        if self.info.get("model_sha256") != sha:
            raise ValueError(f"{self.path} was built for another model (sha256 "
                             f"{str(self.info.get('model_sha256'))[:12]}, {model_path.name} has "
                             f"{sha[:12]}); {_rebuild(model_path)}")
        if self.info.get("features") != features.to_dict() or self.info.get("outputs") != n_out:
            raise ValueError(f"{self.path} was built for another feature configuration or "
                             f"output size; {_rebuild(model_path)}")
        self.features, self.n_out = features, n_out
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """``[B, n_samples]`` float audio -> ``[B, n_out]`` float32."""
        x = np.ascontiguousarray(audio, dtype=np.float32)
        n = self.features.n_samples
        if x.ndim != 2 or x.shape[-1] != n:
            raise ValueError(f"audio has shape {tuple(x.shape)}: expected [B, {n}] or [{n}] "
                             f"samples at {self.features.sr:g} Hz")
        return self.session.run(None, {self.input_name: x})[0]


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export_onnx(model: str | Path, out: str | Path | None = None) -> Path:
    """Write the encoder-only graph of the ``.tympan`` ``model``; returns the ``.onnx`` path.

    ``out`` defaults to :func:`onnx_path` (where :class:`~matcher.model.MatcherModel`
    looks). The graph is run on ONNX Runtime and
    compared with the torch path before it is written; a difference above
    :data:`TOLERANCE` in nu is a ValueError. Needs ``onnx`` and ``onnxscript``.
    """
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError as err:
        raise ValueError(f"writing the ONNX graph needs onnx, onnxscript and onnxruntime "
                         f"({err}); install them, or export with --no-onnx") from None
    import torch

    from synth.export import atomic_write

    from .cqt_graph import WaveformEncoder
    from .model import MatcherModel

    model = Path(model)
    out = onnx_path(model) if out is None else Path(out)
    m = MatcherModel.load(model, backend="torch")
    graph = WaveformEncoder(m.encoder, m.feature_config).eval()
    audio = _example_audio(m.feature_config, 3)
    example = torch.from_numpy(audio[:2])
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch"):
        warnings.simplefilter("ignore")    # the exporter's progress lines and notices
        program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["audio"], output_names=["nu"],
                                    dynamic_shapes={"audio": {0: batch}}, external_data=False)
    proto = program.model_proto
    with torch.no_grad():
        ref = m.encoder(m.features(torch.from_numpy(audio))[:, None]).numpy()
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run(None, {"audio": audio})[0]
    diff = float(np.abs(got - ref).max())
    if not diff <= TOLERANCE:
        raise ValueError(f"the ONNX graph of {model} disagrees with torch by {diff:.2e} in nu "
                         f"(allowed {TOLERANCE:g}); not written")
    info = {"format": ONNX_FORMAT, "version": ONNX_VERSION, "model_file": model.name,
            "model_sha256": file_sha256(model), "features": m.feature_config.to_dict(),
            "pitch_known": m.pitch_known, "outputs": int(ref.shape[1]),
            "input": {"name": "audio", "shape": ["batch", m.feature_config.n_samples],
                      "dtype": "float32", "peak_normalized": True},
            "output": {"name": "nu", "range": [-1, 1]},
            "export_max_abs_nu_diff": diff,
            "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "tympan", json.dumps(info)
    proto.producer_name = "tympan"
    onnx.checker.check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda f: f.write(proto.SerializeToString()))
