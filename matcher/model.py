"""The matcher's trained model: load an exported ``.tympan`` artifact and predict parameters.

An artifact is one safetensors file: the encoder's weights as tensors, and in
the header's metadata one JSON document under the key ``"tympan"`` holding the
format version, the parameter table (names, units, ranges, scales), the
feature configuration, the training configuration, test metrics and the
versions that made it. Loading reads tensors and JSON only: nothing is
unpickled, and neither Lightning nor the training package is needed.

The package ships a default model (:data:`DEFAULT_MODEL`), so matching works
right after install, with its encoder-only graph ``default.onnx`` beside it.

Backends of :meth:`MatcherModel.predict_nu`: ``"onnx"`` runs the graph
``MODEL.onnx`` beside ``MODEL.tympan`` on ONNX Runtime's CPU provider (see
:mod:`matcher.onnx_model`); ``"torch"`` runs :class:`~matcher.features.CQTFeatures`
and the encoder; ``"auto"`` (the default, or the ``TYMPAN_BACKEND`` environment
variable) picks ONNX on CPU when the graph exists and onnxruntime imports, and
torch otherwise. A graph that exists but does not match its model is an error,
never a silent fallback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synth.params import NAMES, clamp_theta, nu_to_theta

from .encoder import Encoder
from .features import CQTFeatures, FeatureConfig
from .onnx_model import OnnxEncoder, onnx_path

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "BACKENDS", "DEFAULT_MODEL", "MatcherModel"]

ARTIFACT_FORMAT = "tympan-model"
ARTIFACT_VERSION = 1
DEFAULT_MODEL = Path(__file__).parent / "models" / "default.tympan"
BACKENDS = ("auto", "onnx", "torch")


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class MatcherModel:
    """An exported encoder with its feature front end.

    Parameters
    ----------
    encoder : Encoder
        In eval mode.
    features : FeatureConfig
    info : dict
        The artifact's JSON document.

    Attributes
    ----------
    onnx : OnnxEncoder or None
        The checked ONNX graph, when the backend chosen at load is ``"onnx"``.
    """

    def __init__(self, encoder: Encoder, features: FeatureConfig, info: dict[str, Any]):
        self.encoder = encoder.eval()
        self.feature_config = features
        self.info = info
        self.pitch_known = bool(info["pitch_known"])
        self._features: CQTFeatures | None = None
        self.onnx: OnnxEncoder | None = None

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu",
             backend: str | None = None) -> "MatcherModel":
        """Read an artifact; raises ValueError naming what is wrong with the file.

        ``backend``: ``"auto"``, ``"onnx"`` or ``"torch"`` (see the module
        docstring); default the ``TYMPAN_BACKEND`` environment variable, else
        ``"auto"``. ``"onnx"`` needs a CPU device and a valid ``.onnx`` beside
        ``path``; the graph is checked against the artifact's sha256.
        """
        from safetensors import SafetensorError, safe_open

        backend = os.environ.get("TYMPAN_BACKEND", "auto") if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: allowed {', '.join(BACKENDS)}")

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a Tympan model (not a safetensors file: {err})") from None
        try:
            info = json.loads(meta["tympan"])
        except (KeyError, ValueError):
            raise ValueError(f"{path} is a safetensors file without Tympan metadata; export "
                             "models with 'tympan train export'") from None
        if info.get("format") != ARTIFACT_FORMAT or info.get("version") != ARTIFACT_VERSION:
            raise ValueError(f"{path}: format {info.get('format')!r} v{info.get('version')!r}; "
                             f"this Tympan reads {ARTIFACT_FORMAT!r} v{ARTIFACT_VERSION}")
        if [p["name"] for p in info["parameters"]] != list(NAMES):
            raise ValueError(f"{path} predicts parameters {[p['name'] for p in info['parameters']]}; "
                             f"this Tympan's synth has {list(NAMES)}")
        encoder = Encoder(pitch_known=bool(info["pitch_known"]))
        missing, unexpected = encoder.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the encoder (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        model = cls(encoder, FeatureConfig.from_dict(info["features"]), info).to(device)
        graph = onnx_path(path)
        on_cpu = model.device.type == "cpu"
        if backend == "onnx" or (backend == "auto" and on_cpu and graph.is_file()
                                 and _has_onnxruntime()):
            if not on_cpu:
                raise ValueError(f"the ONNX backend runs on the CPU, not {model.device}; "
                                 "use backend 'torch' (or 'auto')")
            if not graph.is_file():
                raise ValueError(f"no ONNX graph {graph} beside the model; build it with "
                                 f"'tympan train export-onnx {path}' or use backend 'torch'")
            model.onnx = OnnxEncoder(graph, path, model.feature_config, encoder.n_out,
                                     threads=torch.get_num_threads())
        return model

    @property
    def backend(self) -> str:
        """``"onnx"`` or ``"torch"``: what :meth:`predict_nu` runs (ONNX only on the CPU)."""
        return "onnx" if self.onnx is not None and self.device.type == "cpu" else "torch"

    def to(self, device: str | torch.device) -> "MatcherModel":
        self.encoder.to(device)
        if self._features is not None:
            self._features.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def features(self) -> CQTFeatures:
        """The CQT front end (built on first use: its kernels take a few seconds)."""
        if self._features is None:
            self._features = CQTFeatures(self.feature_config).to(self.device)
        return self._features

    @torch.no_grad()
    def predict_nu(self, audio: torch.Tensor | np.ndarray, nu_f0: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Normalized parameters of model-side audio.

        Parameters
        ----------
        audio : ``[B, N]`` or ``[N]``
            Peak-normalized hits at ``feature_config.sr`` Hz, ``N = feature_config.n_samples``.
        nu_f0 : ``[B]`` tensor, optional
            Known normalized f0 (required by a pitch-known model, ignored otherwise).

        Returns
        -------
        torch.Tensor, ``[B, 5]`` (or ``[5]``) float32 in ``[-1, 1]``.
        """
        if self.backend == "onnx":
            a = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
            single = a.ndim == 1
            out = torch.from_numpy(self.onnx(a[None] if single else a))
            return self._with_f0(out, nu_f0)[0 if single else slice(None)]
        x = torch.as_tensor(audio, dtype=torch.float32)
        single = x.dim() == 1
        x = (x[None] if single else x).to(self.device)
        return self.predict_features(self.features(x)[:, None], nu_f0)[0 if single else slice(None)]

    @torch.no_grad()
    def predict_features(self, x: torch.Tensor, nu_f0: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1, bins, frames]`` features -> ``[B, 5]`` nu (the torch encoder alone)."""
        return self._with_f0(self.encoder(x.to(self.device)).float(), nu_f0)

    def _with_f0(self, out: torch.Tensor, nu_f0: torch.Tensor | None) -> torch.Tensor:
        """The encoder's output with the known f0 put first (pitch-known models)."""
        if self.pitch_known:
            if nu_f0 is None:
                raise ValueError("this model was trained with the pitch known: give nu_f0")
            out = torch.cat([torch.as_tensor(nu_f0, dtype=out.dtype, device=out.device).reshape(-1, 1),
                             out], dim=1)
        return out

    def predict_theta(self, audio: torch.Tensor | np.ndarray, nu_f0: torch.Tensor | None = None
                      ) -> np.ndarray:
        """Physical parameters ``(f0 Hz, tau s, p, D, alpha)``, ``[B, 5]`` float64."""
        nu = self.predict_nu(audio, nu_f0).double().cpu().numpy()
        return clamp_theta(nu_to_theta(np.clip(nu, -1.0, 1.0)))
