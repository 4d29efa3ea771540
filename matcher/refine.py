"""Test-time refinement: improve an estimate ``nu`` by descending a perceptual
distance to the target through the differentiable synthesizer, within a time budget.

Two methods:

* ``adam``: Adam on ``loss(render(nu), target)``, with ``loss`` the multi-scale
  spectral distance (``"mss"``, cheap) or the JTFS distance (``"jtfs"``);
* ``lm``: Levenberg-Marquardt on the JTFS residual ``r = Phi(render(nu)) -
  Phi(target)``: ``J`` by forward mode (5 columns), step ``-(J^T J + lambda
  diag(J^T J))^-1 J^T r``; a step that lowers ``||r||`` is taken and ``lambda``
  shrinks, otherwise ``lambda`` grows and the step is retried. ``J^T J`` is
  the PNP metric ``M`` at the current point.

Both keep the best point seen, the start included, so the result is never
worse than the start in the distance being descended. Iterations stop when
the budget is spent (checked before each iteration, which may overrun it by
one iteration's time), after ``max_iter``, or (lm) when ``lambda`` runs away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import numpy as np
import torch

from synth.twin import MembraneTwin, clamp_nu

from .distances import multiscale_spectral_distance

__all__ = ["METHODS", "LOSSES", "Loss", "RefineMethod", "RefineResult", "as_loss",
           "as_method", "refine"]


class RefineMethod(str, Enum):
    """How :func:`refine` descends."""

    ADAM = "adam"
    LM = "lm"


class Loss(str, Enum):
    """The distance ``adam`` descends (``lm`` always uses the JTFS residual)."""

    MSS = "mss"
    JTFS = "jtfs"


METHODS = tuple(m.value for m in RefineMethod)
LOSSES = tuple(m.value for m in Loss)


def as_method(method: RefineMethod | str) -> RefineMethod:
    """``method`` as a :class:`RefineMethod`; ValueError naming the allowed ones."""
    try:
        return RefineMethod(method)
    except ValueError:
        raise ValueError(f"refine method {method!r}: allowed {', '.join(METHODS)}") from None


def as_loss(loss: Loss | str) -> Loss:
    """``loss`` as a :class:`Loss`; ValueError naming the allowed ones."""
    try:
        return Loss(loss)
    except ValueError:
        raise ValueError(f"refine loss {loss!r}: allowed {', '.join(LOSSES)}") from None


@dataclass
class RefineResult:
    """Outcome of :func:`refine`.

    ``nu``: the best point, ``[5]``; ``start`` / ``best``: the descended
    distance at the start and at ``nu``; ``history``: the distance at each
    evaluated point, in order.
    """

    nu: np.ndarray
    method: RefineMethod
    loss: Loss
    start: float
    best: float
    iterations: int
    elapsed_ms: float
    history: list[float] = field(default_factory=list)


def refine(nu0: np.ndarray, target: torch.Tensor, twin: MembraneTwin, *,
           method: RefineMethod | str = RefineMethod.ADAM, loss: Loss | str = Loss.MSS,
           budget_ms: float = 1000.0,
           phi: Callable[[torch.Tensor], torch.Tensor] | None = None, lr: float = 0.01,
           max_iter: int = 500) -> RefineResult:
    """Refine ``nu0`` towards ``target``.

    Parameters
    ----------
    nu0 : array ``[5]``
        Start (the encoder's estimate), in ``[-1, 1]``.
    target : torch.Tensor ``[N]``
        Model-side target audio (peak 1), on the twin's device.
    twin : MembraneTwin
        Renders ``[B, 5] -> [B, N]`` (peak-normalized).
    method : {"adam", "lm"}
    loss : {"mss", "jtfs"}
        Distance descended by ``adam`` (``lm`` always uses the JTFS residual).
    budget_ms : float
        Time allowed, ms (> 0).
    phi : callable ``[B, N] -> [B, P]``
        The JTFS ``Phi``; needed for ``loss="jtfs"`` and ``method="lm"``.
    lr : float
        Adam's step size in ``nu``.
    max_iter : int

    Raises
    ------
    ValueError
        Unknown method or loss, a non-positive budget, a missing ``phi``.
    """
    method, loss = as_method(method), as_loss(loss)
    if not budget_ms > 0:
        raise ValueError(f"refine budget {budget_ms!r} ms: allowed a positive number of ms")
    if (method is RefineMethod.LM or loss is Loss.JTFS) and phi is None:
        raise ValueError("JTFS refinement needs phi (the JTFS feature map)")
    t0 = time.perf_counter()
    deadline = t0 + budget_ms / 1e3
    start = torch.as_tensor(np.asarray(nu0, dtype=np.float64), dtype=torch.float32,
                            device=target.device)[None]
    start = clamp_nu(start)
    if method is RefineMethod.LM:
        nu, hist, iters = _lm(start, target, twin, phi, deadline, max_iter)
        used = Loss.JTFS
    else:
        nu, hist, iters = _adam(start, target, twin, phi, loss, deadline, max_iter, lr)
        used = loss
    best_i = int(np.argmin(hist))
    return RefineResult(nu=nu, method=method, loss=used, start=hist[0], best=hist[best_i],
                        iterations=iters, elapsed_ms=1e3 * (time.perf_counter() - t0),
                        history=hist)


def _adam(start: torch.Tensor, target: torch.Tensor, twin: MembraneTwin, phi, loss: Loss,
          deadline: float, max_iter: int, lr: float) -> tuple[np.ndarray, list[float], int]:
    tgt = target[None]
    if loss is Loss.JTFS:
        with torch.no_grad():
            tgt_phi = phi(tgt)

        def dist(nu: torch.Tensor) -> torch.Tensor:
            return torch.linalg.vector_norm(phi(twin.from_nu(clamp_nu(nu))) - tgt_phi)
    else:
        def dist(nu: torch.Tensor) -> torch.Tensor:
            return multiscale_spectral_distance(twin.from_nu(clamp_nu(nu)), tgt)

    nu = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([nu], lr=lr)
    hist: list[float] = []
    best, best_nu = float("inf"), start.clone()
    iters = 0
    while True:
        d = dist(nu)                       # the distance at the current point ...
        value = float(d.detach())
        hist.append(value)
        if value < best:                   # ... is what "best" is judged on
            best, best_nu = value, clamp_nu(nu.detach()).clone()
        if iters >= max_iter or time.perf_counter() >= deadline or not np.isfinite(value):
            break
        opt.zero_grad()
        d.backward()
        opt.step()
        iters += 1
    return best_nu[0].double().cpu().numpy(), hist, iters


def _lm(start: torch.Tensor, target: torch.Tensor, twin: MembraneTwin, phi, deadline: float,
        max_iter: int) -> tuple[np.ndarray, list[float], int]:
    with torch.no_grad():
        tgt_phi = phi(target[None])[0].double()

    def residual(nu: torch.Tensor) -> torch.Tensor:
        return phi(twin.from_nu(clamp_nu(nu)))[0].double() - tgt_phi

    nu = start.clone()
    with torch.no_grad():
        r = residual(nu)
    cost = float(torch.linalg.vector_norm(r))
    hist, lam, iters = [cost], 1e-2, 0
    while iters < max_iter and time.perf_counter() < deadline and lam < 1e8:
        jac = torch.func.jacfwd(lambda x: residual(x))(nu)[:, 0, :]       # [P, 5]
        m = jac.T @ jac
        g = jac.T @ r
        while time.perf_counter() < deadline and lam < 1e8:
            a = m + lam * torch.diag(torch.diag(m).clamp(min=1e-12))
            step = -torch.linalg.solve(a, g)
            trial = clamp_nu(nu + step.to(nu.dtype)[None])
            with torch.no_grad():
                r_trial = residual(trial)
            c_trial = float(torch.linalg.vector_norm(r_trial))
            hist.append(c_trial)
            if c_trial < cost:               # accept: trust the quadratic model more
                nu, r, cost, lam = trial, r_trial, c_trial, lam / 3
                break
            lam *= 3                          # reject: damp harder, retry from the same point
        iters += 1
    return nu[0].double().cpu().numpy(), hist, iters
