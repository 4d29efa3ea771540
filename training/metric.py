"""The PNP metric ``M(theta) = J^T J`` for training: see :mod:`matcher.metric`.

The computation lives in the matcher (it also reports how well a match's
parameters are determined); training re-exports it under its historical name.
"""

from __future__ import annotations

from typing import Any, Callable

from matcher.metric import StftTestPhi, jacobian, metric

from .metric_job import PHIS

__all__ = ["PHIS", "StftTestPhi", "build_phi", "jacobian", "metric"]


def build_phi(name: str, n_samples: int, jtfs_config: Callable[[], Any], device: Any
              ) -> Callable:
    """The representation ``Phi`` named ``name`` (``"jtfs"`` or ``"stft-test"``,
    optionally followed by ``:details``) for ``n_samples``-long input, on ``device``.

    ``jtfs_config()`` gives the JTFS configuration; it is called only for
    ``"jtfs"`` (the stand-in works at lengths the reference JTFS refuses).
    """
    kind = name.split(":", 1)[0]
    if kind == "stft-test":
        return StftTestPhi(n_samples).to(device)
    if kind == "jtfs":
        from matcher.jtfs import JTFS
        return JTFS(jtfs_config()).to(device).phi
    raise ValueError(f"unknown phi {name!r}; allowed: {', '.join(PHIS)}")
