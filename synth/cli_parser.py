"""The command-line parser every ``tympan`` subcommand with one-line errors uses.

In ``synth``, the ground floor of the layering, so that ``matcher``,
``training`` and ``plugin_host`` share one definition.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit code 2.

    argparse's own prints the whole usage first; a musician who mistyped one
    option needs the one line that names it (``--help`` still prints the usage).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")
