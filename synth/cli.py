"""``tympan synth ...``: render single hits from the command line."""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import numpy as np

from .params import NAMES, PARAMS, DrumParams, ParameterError
from .presets import PRESETS

__all__ = ["main", "render_hit"]


def render_hit(params: DrumParams, sr: float, n_samples: int, engine: str = "voice",
               block: int = 256, velocity: float = 1.0) -> np.ndarray:
    """Render one peak-normalized hit, ``[N]`` float64, with the chosen engine.

    ``engine="voice"`` streams the real-time Numba voice in blocks of ``block``
    samples; ``engine="torch"`` renders the differentiable twin in float64.
    """
    if engine == "torch":
        import torch  # only this engine pays for importing torch

        from .twin import MembraneTwin

        twin = MembraneTwin(sr, n_samples)
        with torch.no_grad():
            y = twin(torch.tensor(params.to_array(), dtype=torch.float64), velocity)
        return y.numpy()
    from .voice import DrumVoice

    voice = DrumVoice(sr)
    voice.note_on(params, velocity)
    out = np.zeros(n_samples)
    for start in range(0, n_samples, block):
        voice.render_into(out[start:start + block])
    return out


def _bounded(kind, low: float, high: float, unit: str = ""):
    """argparse type: a number of ``kind`` in ``[low, high]``, with a clear message."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed [{low:g}, {high:g}]"
                                             f"{' ' + unit if unit else ''}")
        return value
    return parse


def _param_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tympan synth",
                                     description="Render struck-membrane hits.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    render = sub.add_parser(
        "render", help="render one hit to an audio file",
        description="Render one hit of the membrane to an audio file (wav, flac, aiff, ogg, "
                    "mp3). Give every parameter, or a --preset and override some of them.")
    for spec in PARAMS:
        render.add_argument(f"--{spec.name}", type=_param_value, metavar=spec.unit.upper() or "X",
                            help=f"{spec.description}; range {spec.range_text()}, "
                                 f"{spec.scale} scale")
    render.add_argument("--preset", choices=sorted(PRESETS),
                        help="start from a named preset (flags above override it)")
    render.add_argument("--sr", type=_bounded(int, 8000, 384000, "Hz"), default=48000,
                        help="sample rate in Hz (default 48000)")
    render.add_argument("--seconds", type=_bounded(float, 0.001, 60.0, "s"), default=2.0,
                        help="length in seconds (default 2)")
    render.add_argument("--engine", choices=("voice", "torch"), default="voice",
                        help="real-time Numba voice (default) or the torch twin")
    render.add_argument("--block", type=_bounded(int, 1, 1 << 20), default=256,
                        help="block size of the voice engine in samples (default 256)")
    render.add_argument("--velocity", type=_bounded(float, 0.0, 1.0), default=1.0,
                        help="peak level of the hit, 0..1 (default 1)")
    render.add_argument("--bit-depth", type=int, choices=(16, 24, 32), default=24,
                        help="16/24-bit PCM or 32-bit float (wav only); default 24")
    render.add_argument("-o", "--out", required=True, metavar="FILE",
                        help="output audio file; the extension picks the format")
    return parser


def _params_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> DrumParams:
    base = PRESETS[args.preset].to_dict() if args.preset else {}
    given = {n: getattr(args, n) for n in NAMES if getattr(args, n) is not None}
    values = {**base, **given}
    missing = [f"--{n}" for n in NAMES if n not in values]
    if missing:
        parser.exit(2, f"tympan synth render: error: missing {', '.join(missing)} "
                       "(give every parameter or a --preset)\n")
    return DrumParams.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tympan synth``; returns the exit code."""
    from .audio_writer import write_audio

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        params = _params_from(args, parser)
    except ParameterError as err:
        parser.exit(2, f"tympan synth render: error: {err}\n")
    n = max(1, round(args.seconds * args.sr))
    audio = render_hit(params, args.sr, n, args.engine, args.block, args.velocity)
    path = write_audio(args.out, audio, args.sr, args.bit_depth)
    peak_db = 20 * math.log10(max(np.abs(audio).max(), 1e-12))
    print(f"wrote {path}: {n / args.sr:.3f} s at {args.sr} Hz, peak {peak_db:.1f} dBFS, "
          f"engine {args.engine}" + (f" (block {args.block})" if args.engine == "voice" else ""))
    print("  " + "  ".join(f"{k}={v:g}" for k, v in params.to_dict().items()))
    return 0
