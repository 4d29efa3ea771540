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
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from synth.cli_parser import OneLineParser

if TYPE_CHECKING:
    from .match import MatchResult

__all__ = ["main"]

# Mirrors of matcher.match.Method and its defaults, so that parsing needs no torch;
# tests/test_match.py checks that they agree.
METHODS = ("search", "encoder", "nn", "hybrid")
DEFAULT_METHOD = "search"
DEFAULT_BUDGET_MS = 2000.0


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``tympan match`` (its defaults are the default match)."""
    p = OneLineParser(
        prog="tympan match",
        description="Estimate the membrane parameters (f0, tau, p, D, alpha) of a recorded "
                    "drum hit, and report how close the matched sound is.")
    p.add_argument("file", metavar="FILE", help="audio file with the hit (wav, flac, aiff, ogg, "
                   "mp3), or a folder: every audio file in it is matched")
    p.add_argument("--model", metavar="ARTIFACT", default=None,
                   help="model artifact (.tympan, from 'tympan train export'); default: the "
                        "shipped model")
    p.add_argument("--onset", metavar="SECONDS", type=float, default=None,
                   help="start of the hit in FILE, s (default: detected)")
    p.add_argument("--f0", metavar="HZ", type=float, default=None,
                   help="known fundamental, Hz (required by pitch-known models; otherwise it "
                        "replaces the estimate)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write the matched hit here (model-side rate; format by extension); "
                        "for a folder: a folder receiving NAME-matched.wav per file")
    p.add_argument("--summary", metavar="FILE", default=None,
                   help="folder mode: where to write the JSON summary (default: "
                        "./tympan-match-FOLDER.json)")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="draw target and match side by side (waveform and CQT)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--determine", action="store_true",
                   help="also report how well the sound determines each parameter "
                        "(sensitivity, identifiability; seconds on a CPU)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="search (default): the encoder's estimate, the nearest sounds of the "
                        "shipped dense index, a local step and a pitch candidate, re-ranked by "
                        "JTFS distance; encoder: the encoder alone (fastest); nn: the nearest "
                        "sound of --nn-index (a baseline); hybrid: the closer of encoder and nn")
    p.add_argument("--index", metavar="FILE", default=None,
                   help="dense sound index for --method search (default: the shipped one; "
                        "'tympan train sound-index' builds one)")
    p.add_argument("--nn-index", metavar="FILE", default=None,
                   help="nearest-neighbour index for --method nn/hybrid "
                        "('tympan train nn-index')")
    p.add_argument("--refine", nargs="?", const="adam", choices=("adam", "lm"), default=None,
                   help="refine the best candidate through the synthesizer with what the budget "
                        "leaves: adam (on --refine-loss; the default) or lm "
                        "(Levenberg-Marquardt on the JTFS)")
    p.add_argument("--refine-loss", choices=("mss", "jtfs"), default="mss",
                   help="distance descended by adam (mss)")
    p.add_argument("--budget-ms", type=float, default=DEFAULT_BUDGET_MS, metavar="MS",
                   help=f"time allowed to the whole match, ms ({DEFAULT_BUDGET_MS:g}): "
                        "search, re-ranking, refinement and scoring (loading apart)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    return p


def main(argv: Sequence[str] | None = None,
         on_result: Callable[[MatchResult], str | None] | None = None) -> int:
    """Entry point of ``tympan match``; returns the exit code.

    ``on_result`` is called with a single file's result before printing; a
    string it returns is printed after the report (``plugin_host`` uses it to
    write the match into a kit, a layer above the matcher).

    Raises
    ------
    ValueError
        Bad audio file (:class:`matcher.audio.AudioError`), model file, onset or f0.
    OSError
        ``--out`` cannot be written.
    """
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if Path(args.file).is_dir():
        if on_result is not None:
            raise ValueError("--kit/--pad take one file, not a folder")
        return _match_folder(args)
    from synth.audio_writer import check_destination, write_audio

    out = check_destination(args.out) if args.out is not None else None  # before any work
    from .match import Matcher

    options = match_options(args)
    matcher = Matcher(args.model, args.device, args.nn_index, args.index)
    result = matcher.match_file(args.file, onset=args.onset, determine=args.determine,
                                f0_hz=args.f0, **options)
    extra = on_result(result) if on_result is not None else None
    if out is not None:
        write_audio(out, matcher.render(result), matcher.audio_config.sr)
    if args.plot is not None:
        from .audio import load_hit
        from .plot import plot_match

        target = load_hit(args.file, matcher.audio_config, args.onset).audio
        plot_match(target, matcher.render(result), matcher.model.features,
                   matcher.audio_config.sr, args.plot,
                   f"{Path(args.file).name}: JTFS {result.jtfs_distance:.3g}, "
                   f"MSS {result.mss_distance:.3g}")
    if args.json:
        doc = result.to_json()
        doc["model"] = str(matcher.path)
        doc["encoder_backend"] = matcher.model.backend
        doc["out"] = None if out is None else str(out)
        doc["plot"] = args.plot
        print(json.dumps(doc, indent=2))
    else:
        print(result.table())
        if out is not None:
            print(f"wrote {out} ({matcher.audio_config.n_samples} samples at "
                  f"{matcher.audio_config.sr:g} Hz)")
        if args.plot is not None:
            print(f"wrote {args.plot}")
        if extra:
            print(extra)
    return 0


def match_options(args: argparse.Namespace) -> dict:
    """``Matcher.match_hit`` keyword options from parsed arguments; ValueError on a bad mix."""
    if args.budget_ms is None or not args.budget_ms > 0:
        raise ValueError(f"--budget-ms {args.budget_ms}: allowed a positive number of ms")
    if args.method in ("nn", "hybrid") and args.nn_index is None:
        raise ValueError(f"--method {args.method} needs --nn-index FILE (build one with "
                         "'tympan train nn-index --out FILE')")
    if args.index is not None and args.method != "search":
        raise ValueError(f"--index is the index of --method search, not of {args.method}")
    return {"refine": args.refine, "refine_loss": args.refine_loss, "budget_ms": args.budget_ms,
            "method": args.method}


AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg", ".mp3")


def _match_folder(args: argparse.Namespace) -> int:
    """``tympan match DIR``: every audio file in DIR (not recursive), a progress bar,
    a table and a JSON summary. Exit 0 if all matched, 1 if some failed."""
    from tqdm import tqdm

    from synth.audio_writer import write_audio
    from synth.files import atomic_write

    from .audio import AudioError
    from .match import Matcher

    folder = Path(args.file)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"folder {folder} holds no audio files (allowed: "
                         f"{', '.join(AUDIO_SUFFIXES)})")
    if args.onset is not None or args.plot is not None:
        raise ValueError("--onset and --plot apply to one file, not to a folder")
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = Path(args.summary or f"tympan-match-{folder.resolve().name}.json")
    options = match_options(args)
    matcher = Matcher(args.model, args.device, args.nn_index, args.index)
    results, failed = [], []
    for path in tqdm(files, unit="file", desc="match", file=sys.stderr, dynamic_ncols=True):
        try:
            r = matcher.match_file(path, determine=args.determine, f0_hz=args.f0, **options)
        except AudioError as err:          # a bad file is reported, the others go on
            failed.append({"source": str(path), "error": str(err)})
            continue
        doc = r.to_json()
        if out_dir is not None:
            dest = out_dir / f"{path.stem}-matched.wav"
            write_audio(dest, matcher.render(r), matcher.audio_config.sr)
            doc["out"] = str(dest)
        results.append(doc)
    summary = {"folder": str(folder), "model": str(matcher.path), "matched": results,
               "failed": failed}
    atomic_write(summary_path, lambda f: f.write(json.dumps(summary, indent=2).encode()))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        names = [n for n in results[0]["theta"]] if results else []
        print(f"{'file':28s} " + " ".join(f"{n:>9s}" for n in names) + f" {'JTFS':>7s} {'MSS':>6s}")
        for d in results:
            print(f"{Path(d['source']).name[:28]:28s} "
                  + " ".join(f"{d['theta'][n]:9.4g}" for n in names)
                  + f" {d['jtfs_distance']:7.3f} {d['mss_distance']:6.3f}")
        for f in failed:
            print(f"{Path(f['source']).name[:28]:28s} failed: {f['error']}")
        print(f"matched {len(results)} of {len(files)} files; summary in {summary_path}")
    return 1 if failed else 0
