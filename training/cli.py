"""``tympan train ...``: build datasets, metrics and models for the matcher.

Each subcommand lives in the module of its step and is imported only when run
(``tympan train merge-metric`` never imports torch). A subcommand is a function
``(argv) -> int`` that raises :class:`ValueError` for bad input; this module
turns that into one line on stderr and exit code 2. To add one, add a
line to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

__all__ = ["SUBCOMMANDS", "main"]

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "metric": ("training.metric_job", "metric_main",
               "precompute M(theta) = J^T J over a protocol split, in resumable shards"),
    "merge-metric": ("training.metric_job", "merge_main",
                     "check a split's metric shards and merge them into one file"),
    "fit": ("training.trainer", "fit_main",
            "train the encoder from a run file (P, PNP, MSS or JTFS loss; DDP; resumable)"),
    "default": ("training.default_recipe", "default_main",
                "retrain the shipped default model end to end (resumable; --install ships it)"),
    "teacher": ("training.teacher", "teacher_main",
                "pseudo-labels of the recorded fine-tuning hits from the match search"),
    "evaluate": ("training.evaluate", "evaluate_main",
                 "JTFS / spectral distances and parameter errors of a checkpoint on a split"),
    "export": ("training.model_export", "export_main",
               "write a checkpoint as a portable .tympan model (and its .onnx) for the matcher"),
    "export-onnx": ("training.model_export", "export_onnx_main",
                    "(re)build a .tympan model's encoder-only ONNX graph beside it"),
    "campaign": ("training.campaign", "campaign_main",
                 "run a time-boxed GPU campaign (metric, reference runs, evaluation, export)"),
    "campaign-report": ("training.campaign", "report_main",
                        "docs/results.md from a campaign's state"),
    "nn-index": ("training.nn_index", "nn_index_main",
                 "JTFS features of a split's sounds: the nearest-neighbour baseline's index"),
    "sound-index": ("training.sound_index_job", "sound_index_main",
                    "the dense index of 'tympan match': Sobol-spread sounds, PCA of their JTFS"),
}


def _usage() -> str:
    lines = ["usage: tympan train COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'tympan train COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tympan train``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"tympan train: error: unknown command {name!r}; allowed: "
              f"{', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name, function, _ = SUBCOMMANDS[name]
    entry = getattr(importlib.import_module(module_name), function)
    try:
        return int(entry(rest) or 0)
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else 2
    except ValueError as err:
        print(f"tympan train {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
