"""Writing the encoder-only ONNX graph of a ``.tympan`` (read by :mod:`matcher.onnx_model`).

Apart from the reader so that :mod:`matcher.model` (which the export loads) and
:mod:`matcher.onnx_model` (which the model loads) do not import each other.
Needs ``onnx``, ``onnxscript`` and ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .features import FeatureConfig
from synth.files import file_sha256

from .onnx_model import ONNX_FORMAT, ONNX_VERSION, OPSET, TOLERANCE, onnx_path

__all__ = ["export_onnx"]


def _example_audio(cfg: FeatureConfig, batch: int = 2) -> np.ndarray:
    """Decaying noise bursts, peak 1 (the export's trace and agreement check)."""
    rng = np.random.default_rng(0)
    t = np.arange(cfg.n_samples) / cfg.sr
    decay = np.geomspace(0.05, 1.0, batch)[:, None]                    # seconds
    x = rng.standard_normal((batch, cfg.n_samples)) * np.exp(-t / decay)
    return (x / np.abs(x).max(-1, keepdims=True)).astype(np.float32)


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

    from synth.files import atomic_write

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
