"""``tympan demo``: the showcase, then the example hits matched and played back.

First the presets and a groove are rendered (:mod:`synth.showcase`). Then each
bundled example hit (``plugin_host/examples/*.flac``, made by a circular-
membrane model that is not Tympan's) goes through the shipped matcher; its
parameters are rendered through a real voice at the demo's rate, a picture of
target against match is drawn, and the matches become pads of a kit that
``tympan play --kit`` plays. Matching imports torch, so it lives here, a layer
above both the synthesizer and the matcher.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["EXAMPLES", "EXAMPLE_PADS", "main"]

EXAMPLES = Path(__file__).resolve().parent / "examples"
# Example name -> General MIDI note of the pad it replaces in the demo kit.
EXAMPLE_PADS = {"kick": 36, "snare": 38, "tom": 45}


def _parser() -> argparse.ArgumentParser:
    from synth.cli_parser import OneLineParser

    parser = OneLineParser(prog="tympan demo", description=(
        "Render Tympan's showcase presets and a groove, then match the bundled example hits "
        "with the shipped model and render the matches."))
    parser.add_argument("-o", "--out", default="tympan-demo", metavar="DIR",
                        help="folder to write into (created; default ./tympan-demo)")
    parser.add_argument("--sr", type=int, default=48000, choices=(22050, 44100, 48000, 96000),
                        help="sample rate in Hz (default 48000)")
    parser.add_argument("--no-match", action="store_true",
                        help="only the showcase: skip matching (no torch needed)")
    parser.add_argument("--model", metavar="FILE",
                        help="matcher artifact (default: the shipped model)")
    parser.add_argument("--budget-ms", type=float, default=2000.0, metavar="MS",
                        help="time per hit for 'tympan match''s default search (default 2000; "
                             "0: the encoder alone)")
    return parser


def match_examples(out_dir: Path, sr: int, model: str | None, budget_ms: float) -> list[Path]:
    """Match every example hit, write its render, a plot and the demo kit.

    Parameters
    ----------
    out_dir : Path
        Existing folder.
    sr : int
        Rate of the rendered matches, Hz.
    model : str, optional
        Matcher artifact; default the shipped one.
    budget_ms : float
        Time per hit of the default match (``tympan match``'s search), ms; 0: the
        encoder alone.

    Returns
    -------
    list of Path
        Per example: a copy of the example, the matched hit, the plot; then the kit.
    """
    from matcher.audio import load_hit
    from matcher.match import Matcher
    from matcher.plot import plot_match
    from synth import DrumParams
    from synth.showcase import render_hit
    from synth.audio_writer import write_audio
    from synth.voice import VoicePreset

    from .kit import Kit, Pad, load_default_kit

    t0 = time.perf_counter()
    matcher = Matcher(model, device="cpu")   # a demo on any machine; CUDA adds start-up time
    _ = matcher.model.features, matcher.jtfs, matcher.index  # once, before the per-hit timings
    print(f"\nmatching the example hits with {matcher.path.name} "
          f"(loaded in {time.perf_counter() - t0:.1f} s)")
    print(f"{'example':<7} {'f0 Hz':>7} {'tau s':>6} {'p':>8} {'D':>8} {'alpha':>5} "
          f"{'JTFS':>6} {'MSS':>6} {'ms':>6} {'estimate':<13} file")
    options = {"budget_ms": budget_ms} if budget_ms > 0 else {"method": "encoder"}
    kit: Kit = load_default_kit()
    written: list[Path] = []
    for name, note in EXAMPLE_PADS.items():
        source = EXAMPLES / f"{name}.flac"
        hit = load_hit(source, matcher.audio_config)      # read once: matched and drawn
        result = matcher.match_hit(hit, **options)
        params = DrumParams(**result.theta)
        copy = out_dir / f"example-{name}.flac"
        shutil.copyfile(source, copy)
        matched = write_audio(out_dir / f"matched-{name}.wav",
                              render_hit(VoicePreset.build(params, sr), sr), sr)
        picture = plot_match(hit.audio, matcher.render(result),
                             matcher.model.features, matcher.audio_config.sr,
                             out_dir / f"matched-{name}.png",
                             f"{name}: JTFS {result.jtfs_distance:.3g}, "
                             f"MSS {result.mss_distance:.3g}")
        written += [copy, matched, picture]
        kit = kit.with_pad(Pad(note=note, name=f"matched {name}", params=params))
        th = result.theta
        ms = result.timings_ms["total"] - result.timings_ms.get("setup", 0.0)
        print(f"{name:<7} {th['f0']:>7.1f} {th['tau']:>6.2f} {th['p']:>8.2g} {th['D']:>8.2g} "
              f"{th['alpha']:>5.2f} {result.jtfs_distance:>6.2f} {result.mss_distance:>6.3f} "
              f"{ms:>6.0f} {result.estimate:<13} {matched}")
    kit_path = kit.save(out_dir / "matched-kit.json")
    print(f"the matches are pads {', '.join(map(str, EXAMPLE_PADS.values()))} of {kit_path}: "
          f"tympan play --kit {kit_path}")
    return written + [kit_path]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 0 <= args.budget_ms <= 60_000:
        raise ValueError(f"--budget-ms {args.budget_ms:g}: allowed 0..60000")
    if args.model is not None and not Path(args.model).is_file():
        raise ValueError(f"--model {args.model}: no such file")
    from synth.showcase import render_showcase

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = render_showcase(out_dir, args.sr)
    if not args.no_match:
        written += match_examples(out_dir, args.sr, args.model, args.budget_ms)
    print(f"\n{len(written)} files in {out_dir.resolve()}")
    return 0
