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
measured at export (:mod:`matcher.onnx_export` writes it). :class:`OnnxEncoder` checks them on load, so a graph left
from another model, another configuration, or a damaged file is one clear
error instead of wrong parameters. Rebuild with
``tympan train export-onnx MODEL.tympan`` (``make default-onnx`` for the
shipped model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from synth.files import file_sha256

from .features import FeatureConfig

__all__ = ["ONNX_FORMAT", "ONNX_VERSION", "OPSET", "TOLERANCE", "OnnxEncoder", "onnx_path"]

ONNX_FORMAT = "tympan-encoder-onnx"
ONNX_VERSION = 1
OPSET = 18
TOLERANCE = 1e-4          # max |nu| difference to torch accepted at export


def onnx_path(model_path: str | Path) -> Path:
    """Where the graph of ``model_path`` lives: beside it, suffix ``.onnx``."""
    return Path(model_path).with_suffix(".onnx")


def _rebuild(model_path: Path) -> str:
    return f"rebuild it with 'tympan train export-onnx {model_path}' or delete it"


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
