"""Export a training checkpoint as the matcher's portable ``.tympan`` artifact.

See :mod:`matcher.model` for the format. The artifact carries the encoder's
weights (float32, or float16 with ``--half``; eval-mode state: BatchNorm
running statistics included), the parameter table, the feature and training
configurations, the test metrics of ``tympan train evaluate`` when they are
found beside the checkpoint, and the library versions. Written atomically.

``tympan train export`` also writes the encoder-only ONNX graph beside it
(``model.onnx``, see :mod:`matcher.onnx_model`; ``--no-onnx`` skips it), and
``tympan train export-onnx MODEL.tympan`` (re)builds that graph for an
existing artifact, e.g. the shipped default (``make default-onnx``).
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from matcher.model import ARTIFACT_FORMAT, ARTIFACT_VERSION
from matcher.onnx_export import export_onnx
from matcher.onnx_model import onnx_path
from synth.cli_parser import OneLineParser
from synth.files import atomic_write
from synth.params import PARAMS

from .config import TrainConfig
from .evaluate import report_stem
from .trainer import load_checkpoint

__all__ = ["export", "export_main", "export_onnx_main"]


def _versions() -> dict[str, str]:
    import numpy
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("nnAudio", "kymatio", "safetensors"):
        try:
            from importlib.metadata import version
            out[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            pass
    return out


def _one_line(err: Exception) -> str:
    """The first line of an error's message (an unclosed parenthesis closed)."""
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else type(err).__name__
    if len(lines) > 1 and first.count("(") > first.count(")"):
        first += " ...)"
    return first


def _finite_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _lineage(init: str) -> dict[str, Any] | None:
    """The training record of the model a run started from (``[finetune] init``),
    so that an artifact says everything that made it: losses, data, epochs, seconds."""
    if not init:
        return None
    from matcher.model import MatcherModel

    try:
        info = MatcherModel.load(init, backend="torch").info
    except (OSError, ValueError):
        return {"path": init, "missing": True}
    return {"path": init, **info.get("training", {})}


def export(ckpt: str | Path, out: str | Path, metrics: str | Path | None = None,
           half: bool = False, onnx: bool = False) -> Path:
    """Write the artifact of checkpoint ``ckpt`` to ``out``; returns ``out``.

    ``metrics``: an evaluation JSON (default: the test report of
    ``tympan train evaluate`` beside the checkpoint, if present). ``half``:
    floating-point weights stored as float16 (half the file; the matcher
    loads them into its float32 encoder). ``onnx``: also write the ONNX graph
    beside ``out`` (needs onnx and onnxscript); without it, a graph left
    beside ``out`` by an earlier export is removed, since it no longer matches.
    """
    from safetensors.torch import save

    try:
        ck = load_checkpoint(ckpt)
    except ValueError as err:     # torch's reasons are paragraphs: the CLI prints one line
        raise ValueError(_one_line(err)) from None
    cfg = TrainConfig.from_dict(ck["config"])
    ckpt = Path(ckpt)
    metrics_path = Path(metrics) if metrics else report_stem(ckpt, "test").with_suffix(".json")
    test_metrics: dict[str, Any] | None = None
    if metrics_path.exists():
        test_metrics = json.loads(metrics_path.read_text())
    elif metrics:
        raise ValueError(f"metrics file {metrics_path} does not exist")
    info = {
        "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
        "pitch_known": cfg.pitch_known,
        "parameters": [{"name": p.name, "unit": p.unit, "low": p.low, "high": p.high,
                        "scale": p.scale, "description": p.description} for p in PARAMS],
        "features": cfg.features.to_dict(),
        "training": {"config": cfg.to_dict(), "step": ck["step"], "epoch": ck["epoch"],
                     "best": ck["best"], "checkpoint": ckpt.name,
                     "seconds": _finite_or_none(ck.get("seconds")),
                     "init": _lineage(cfg.finetune.init)},
        "test_metrics": test_metrics,
        "versions": _versions(),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in ck["model"].items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    info["weights_dtype"] = "float16" if half else "float32"
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(save(tensors, metadata={"tympan": json.dumps(info)})))
    except OSError as err:        # a directory there, no space, no permission: nothing written
        raise ValueError(f"cannot write {out}: {err.strerror or err}") from None
    if onnx:
        export_onnx(out)
    else:
        onnx_path(out).unlink(missing_ok=True)
    return out


def export_main(argv: Sequence[str]) -> int:
    """``tympan train export CKPT -o model.tympan``."""
    parser = OneLineParser(prog="tympan train export", description=(
        "Write a checkpoint as a portable .tympan model (safetensors + JSON) for the matcher."))
    parser.add_argument("ckpt", help="training checkpoint (best.pt or last.pt of a run)")
    parser.add_argument("-o", "--out", required=True, help="output file, e.g. model.tympan")
    parser.add_argument("--metrics", help="evaluation JSON to embed (default: the one "
                        "'tympan train evaluate' wrote beside the checkpoint)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16 (half the size)")
    parser.add_argument("--no-onnx", action="store_true",
                        help="do not write the ONNX graph (model.onnx) beside the model")
    args = parser.parse_args(argv)
    path = export(args.ckpt, args.out, args.metrics, half=args.half, onnx=not args.no_onnx)
    from matcher.model import MatcherModel
    model = MatcherModel.load(path)      # prove it loads (and its graph checks) before saying so
    n = sum(p.numel() for p in model.encoder.parameters())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {n:,} weights, "
          f"{'with' if model.info['test_metrics'] else 'without'} test metrics)")
    if model.onnx is not None:
        _say_onnx(model.onnx.path, model.onnx.info)
    return 0


def _say_onnx(path: Path, info: dict[str, Any]) -> None:
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; agrees with torch to "
          f"{info['export_max_abs_nu_diff']:.1e} in nu)")


def export_onnx_main(argv: Sequence[str]) -> int:
    """``tympan train export-onnx MODEL.tympan [-o MODEL.onnx]``."""
    parser = OneLineParser(prog="tympan train export-onnx", description=(
        "(Re)build the encoder-only ONNX graph (audio -> nu) of a .tympan model; the matcher "
        "runs it on ONNX Runtime when it lies beside the model."))
    parser.add_argument("model", help="a .tympan model, e.g. matcher/models/default.tympan")
    parser.add_argument("-o", "--out", help="output file (default: beside the model, .onnx)")
    args = parser.parse_args(argv)
    from matcher.model import MatcherModel
    from matcher.onnx_model import OnnxEncoder
    path = export_onnx(args.model, args.out)
    m = MatcherModel.load(args.model, backend="torch")
    graph = OnnxEncoder(path, args.model, m.feature_config, m.encoder.n_out)   # it must check
    _say_onnx(path, graph.info)
    return 0
