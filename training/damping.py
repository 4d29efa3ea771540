"""Damping of the PNP loss: how ``lambda`` in ``M + lambda I`` evolves during training.

The PNP loss ``0.5 * mean(d^T (M + lambda I) d)`` is a Gauss-Newton
approximation of the perceptual loss; ``lambda`` trades it against the plain
parameter loss (``lambda -> inf`` is P-loss up to scale). Four schedules:

* ``constant``: ``lambda`` fixed;
* ``scheduled``: geometric decay per epoch, ``lambda_0 * decay**epoch``, floored;
* ``adaptive``: Levenberg-Marquardt style, multiply by ``shrink`` when the
  validation loss improves on its best, by ``grow`` otherwise, within bounds;
* ``diagonal``: Marquardt's scaling, ``M + lambda diag(M)`` (fixed ``lambda``).

Each schedule is a small object with :meth:`Damping.on_epoch_end` (called once per
epoch with the validation loss) and ``state_dict``/``load_state_dict`` so that a
resumed run continues with the same ``lambda``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Damping", "KINDS", "damped_metric", "make_damping"]

KINDS = ("constant", "scheduled", "adaptive", "diagonal")


@dataclass
class Damping:
    """A damping schedule (see the module docstring for the kinds).

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    lam : float
        Current ``lambda`` (>= 0).
    decay : float
        ``scheduled``: factor per epoch, in (0, 1].
    floor : float
        ``scheduled``: smallest ``lambda``.
    shrink, grow : float
        ``adaptive``: factors on improvement (< 1) and otherwise (> 1).
    lam_min, lam_max : float
        ``adaptive``: bounds of ``lambda``.
    """

    kind: str = "constant"
    lam: float = 1.0
    decay: float = 0.9
    floor: float = 0.0
    shrink: float = 0.5
    grow: float = 2.0
    lam_min: float = 1e-6
    lam_max: float = 1e6
    epoch: int = 0
    best: float = field(default=math.inf)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"damping kind {self.kind!r}: allowed {', '.join(KINDS)}")
        checks = [("lam", self.lam >= 0 and math.isfinite(self.lam), ">= 0"),
                  ("decay", 0 < self.decay <= 1, "in (0, 1]"),
                  ("floor", self.floor >= 0, ">= 0"),
                  ("shrink", 0 < self.shrink < 1, "in (0, 1)"),
                  ("grow", self.grow > 1 and math.isfinite(self.grow), "> 1"),
                  ("lam_min", 0 <= self.lam_min <= self.lam_max, "in [0, lam_max]")]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"damping {name} = {getattr(self, name)!r}: allowed {allowed}")
        if self.kind == "adaptive":
            self.lam = min(max(self.lam, self.lam_min), self.lam_max)

    def on_epoch_end(self, val_loss: float | None = None) -> float:
        """Advance one epoch; returns the ``lambda`` for the next one.

        ``val_loss`` is required by ``adaptive`` (a NaN or inf counts as no improvement).
        """
        self.epoch += 1
        if self.kind == "scheduled":
            self.lam = max(self.lam * self.decay, self.floor)
        elif self.kind == "adaptive":
            if val_loss is None:
                raise ValueError("adaptive damping needs the validation loss at each epoch end")
            if math.isfinite(val_loss) and val_loss < self.best:
                self.best = float(val_loss)
                self.lam = max(self.lam * self.shrink, self.lam_min)
            else:
                self.lam = min(self.lam * self.grow, self.lam_max)
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lam": self.lam, "epoch": self.epoch, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"damping state is for {state.get('kind')!r}, this run uses "
                             f"{self.kind!r}")
        self.lam, self.epoch, self.best = float(state["lam"]), int(state["epoch"]), float(state["best"])

    def apply(self, M: torch.Tensor) -> torch.Tensor:
        """``M + lambda I`` (or ``M + lambda diag(M)`` for ``diagonal``), ``[B, 5, 5]``."""
        return damped_metric(M, self.lam, diagonal=self.kind == "diagonal")


def damped_metric(M: torch.Tensor, lam: float, diagonal: bool = False) -> torch.Tensor:
    """``M + lam I`` or, with ``diagonal``, ``M + lam diag(M)``; ``M`` is ``[..., K, K]``."""
    if diagonal:
        return M + lam * torch.diag_embed(torch.diagonal(M, dim1=-2, dim2=-1))
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return M + lam * eye


def make_damping(spec: dict[str, Any] | str | None) -> Damping:
    """A schedule from a config entry: a kind name, or a dict with ``kind`` and options."""
    if spec is None:
        return Damping("constant", 0.0)
    if isinstance(spec, str):
        return Damping(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"damping {spec!r}: allowed a kind name or a table with 'kind'")
    allowed = set(Damping.__dataclass_fields__) - {"epoch", "best"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"damping option(s) {', '.join(unknown)}: allowed {', '.join(sorted(allowed))}")
    return Damping(**spec)
