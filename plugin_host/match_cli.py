"""``tympan match``: the matcher's command, plus ``--kit KIT --pad NOTE``.

Writing a match into a kit needs :mod:`plugin_host.kit`, a layer above the
matcher, so the command is dispatched here: kit options are taken off the
argument list, the rest goes to :func:`matcher.cli.main`, and the result's
parameters become pad ``NOTE`` of ``KIT`` (created from the General MIDI kit
when the file does not exist yet; the pad keeps its other settings when it
exists). ``tympan play --kit KIT`` then plays the matched sound on that note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _note(text: str) -> int:
    try:
        note = int(text)
    except ValueError:
        note = -1
    if not 0 <= note <= 127:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed a MIDI note number 0..127")
    return note


def _kit_options(argv: list[str]) -> tuple[str | None, int | None, list[str]]:
    """Take ``--kit FILE`` and ``--pad NOTE`` out of ``argv``; the rest is the matcher's."""
    from synth.cli_parser import OneLineParser

    parser = OneLineParser(prog="tympan match", add_help=False, allow_abbrev=False)
    parser.add_argument("--kit", metavar="FILE")
    parser.add_argument("--pad", type=_note, metavar="NOTE")
    ours, rest = parser.parse_known_args(argv)
    if (ours.kit is None) != (ours.pad is None):
        raise ValueError("--kit and --pad go together: --kit FILE --pad NOTE")
    return ours.kit, ours.pad, rest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        return _help()
    kit_path, note, rest = _kit_options(args)
    from matcher.cli import main as match_main

    if kit_path is None:
        return match_main(rest)
    from .kit import Kit, Pad, load_default_kit

    path = Path(kit_path)
    kit = Kit.load(path) if path.exists() else load_default_kit()  # checked before matching

    def write(result) -> str:
        from synth import DrumParams
        params = DrumParams(**result.theta)
        i = kit.pad_index(note)
        name = f"match: {Path(result.source).name}"[:64]
        if i is None:
            pad = Pad(note=note, name=name, params=params)
        else:
            old = kit.pads[i]
            pad = Pad(note=note, name=name, params=params, gain_db=old.gain_db, pan=old.pan,
                      choke_group=old.choke_group, velocity=old.velocity, tracking=old.tracking,
                      retrigger=old.retrigger)
        kit.with_pad(pad).save(path)
        return f"wrote pad {note} of kit {path}: tympan play --kit {path}"

    return match_main(rest, on_result=write)


def _help() -> int:
    from matcher.cli import main as match_main
    print("kit options (tympan match FILE --kit KIT --pad NOTE): write the match into pad NOTE "
          "of KIT (created from the General MIDI kit if absent)\n")
    return match_main(["--help"])
