"""The ``tympan`` console script: dispatches to each package's own CLI module.

Subcommand modules are imported lazily, so ``tympan synth`` never imports
torch or training code. Each entry is a function ``(argv) -> int``.
Bad input surfaces as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
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

# Live commands whose process ends without interpreter teardown (see _exit_now).
FAST_EXIT = {"play", "serve"}


def _usage() -> str:
    lines = ["usage: tympan COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'tympan COMMAND --help' for a command's options."]
    return "\n".join(lines)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and ``kill`` stop every command (the live ones install their own wind-down).

    A process started in the background by a non-interactive shell inherits
    SIGINT ignored, and Python then leaves it so: Ctrl-C (or the SIGINT a
    test sends) would do nothing. SIGTERM would kill without cleanup.
    Both raise KeyboardInterrupt here: the command stops, files stay whole
    (writers go through a temporary file and a rename) and the exit code is 130.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


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
    if argv is None:                     # a process of its own, not a call from Python
        _stop_on_signals()
    try:
        entry = getattr(importlib.import_module(module_name), function)
        rc = int(entry(rest) or 0)
    except KeyboardInterrupt:
        print("tympan: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as err:
        # Input and file errors carry their own explanation; a traceback adds nothing.
        print(f"tympan {name}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    if argv is None and name in FAST_EXIT:
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """Leave without tearing the interpreter down (the live commands, once all is closed).

    With torch, FastAPI and Numba loaded, CPython's finalization (freeing
    every module) took 3.6 s on a loaded 2-core machine, after a wind-down
    of 0.3 s: Ctrl-C felt like a hang. The command has closed its devices,
    worker and files by now; atexit handlers still run (PortAudio's
    terminate, multiprocessing's clean-up), then the process ends at once.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
