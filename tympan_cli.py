"""The ``tympan`` console script: dispatches to each package's own CLI module.

Subcommand modules are imported lazily, so ``tympan synth`` never imports
torch or training code. Each entry is a function ``(argv) -> int``.
Bad input surfaces as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# subcommand -> (module, function, one-line help); later packages add their entries.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("synth.cli", "main", "render single membrane hits to audio files"),
    "demo": ("plugin_host.demo", "main", "render the showcase, match the example hits, render the matches"),
    "devices": ("plugin_host.cli", "devices_main", "list audio outputs and MIDI inputs"),
    "play": ("plugin_host.cli", "play_main", "play a kit live from MIDI"),
    "render": ("plugin_host.cli", "render_main", "render a MIDI file with a kit"),
    "train": ("training.cli", "main", "build datasets, metrics and models for the matcher"),
    "match": ("plugin_host.match_cli", "main", "estimate membrane parameters from a recorded hit"),
    "serve": ("plugin_host.server", "main", "the plugin backend: web page, matching, live play"),
}


def _usage() -> str:
    lines = ["usage: tympan COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'tympan COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"tympan {version('tympan')}")
        except PackageNotFoundError:
            print("tympan (not installed)")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"tympan: error: unknown command {name!r}; allowed: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    entry = getattr(importlib.import_module(module_name), function)
    try:
        return int(entry(rest) or 0)
    except KeyboardInterrupt:
        print("tympan: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as err:
        # Input and file errors carry their own explanation; a traceback adds nothing.
        print(f"tympan {name}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
