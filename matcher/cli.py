"""``tympan match FILE``: estimate membrane parameters from a recorded hit.

Prints the parameters with their units and ranges and the two distances of the
match to the hit (or, with ``--json``, one JSON document); ``--out`` writes the
matched hit as the model hears it (model-side rate and length, peak 1). Bad
input (a missing, unreadable or silent file, a bad model file, a bad option)
raises :class:`ValueError`, which ``tympan`` turns into one line on stderr and
exit code 2; argparse's own errors are one line and exit code 2 too.
Torch and the model load only after the arguments are checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn, Sequence

__all__ = ["OneLineParser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit code 2
    (shared by the ``tympan train`` subcommands)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="tympan match",
        description="Estimate the membrane parameters (f0, tau, p, D, alpha) of a recorded "
                    "drum hit, and report how close the matched sound is.")
    p.add_argument("file", metavar="FILE", help="audio file with the hit (wav, flac, aiff, ogg, mp3)")
    p.add_argument("--model", metavar="ARTIFACT", default=None,
                   help="model artifact (.tympan, from 'tympan train export'); default: the "
                        "shipped model")
    p.add_argument("--onset", metavar="SECONDS", type=float, default=None,
                   help="start of the hit in FILE, s (default: detected)")
    p.add_argument("--f0", metavar="HZ", type=float, default=None,
                   help="known fundamental, Hz (required by pitch-known models; otherwise it "
                        "replaces the estimate)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write the matched hit here (model-side rate; format by extension)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--determine", action="store_true",
                   help="also report how well the sound determines each parameter "
                        "(sensitivity, identifiability; seconds on a CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tympan match``; returns the exit code.

    Raises
    ------
    ValueError
        Bad audio file (:class:`matcher.audio.AudioError`), model file, onset or f0.
    OSError
        ``--out`` cannot be written.
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from synth.export import check_destination, write_audio

    out = check_destination(args.out) if args.out is not None else None  # before any work
    from .match import Matcher

    matcher = Matcher(args.model, args.device)
    result = matcher.match_file(args.file, onset=args.onset, determine=args.determine,
                                f0_hz=args.f0)
    if out is not None:
        write_audio(out, matcher.render(result), matcher.audio_config.sr)
    if args.json:
        doc = result.to_json()
        doc["model"] = str(matcher.path)
        doc["out"] = None if out is None else str(out)
        print(json.dumps(doc, indent=2))
    else:
        print(result.table())
        if out is not None:
            print(f"wrote {out} ({matcher.audio_config.n_samples} samples at "
                  f"{matcher.audio_config.sr:g} Hz)")
    return 0
