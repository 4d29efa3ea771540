"""The representation ``Phi`` that the PNP metric ``M = J^T J`` differentiates.

Torch-free at import time: the run-file parsers (:mod:`training.config`, the
campaign plan) validate ``phi`` names against :data:`PHIS` without loading torch;
:func:`build_phi` imports the matcher's modules only when it builds one.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["PHIS", "build_phi"]

# "jtfs": the reference JTFS; "stft-test": a fast non-perceptual stand-in (tests, smoke runs).
PHIS = ("jtfs", "stft-test")


def build_phi(name: str, n_samples: int, jtfs_config: Callable[[], Any], device: Any
              ) -> Callable:
    """The representation ``Phi`` named ``name`` (``"jtfs"`` or ``"stft-test"``,
    optionally followed by ``:details``) for ``n_samples``-long input, on ``device``.

    ``jtfs_config()`` gives the :class:`matcher.jtfs.JTFSConfig`; it is called
    only for ``"jtfs"`` (the stand-in works at lengths the reference JTFS refuses).
    Returns a callable ``[B, n_samples] -> [B, P]``.
    """
    kind = name.split(":", 1)[0]
    if kind == "stft-test":
        from matcher.metric import StftTestPhi
        return StftTestPhi(n_samples).to(device)
    if kind == "jtfs":
        from matcher.jtfs import JTFS
        return JTFS(jtfs_config()).to(device).phi
    raise ValueError(f"unknown phi {name!r}; allowed: {', '.join(PHIS)}")
