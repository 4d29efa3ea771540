"""Candidates for a match from the dense sound index, and their re-ranking.

::

    Phi(target) -> index top-m (projected JTFS distance)       many, in ms
                -> local Gauss-Newton step from the top-m       one point, no render
                -> pitch candidate (matcher.pitch)               the index's best near f0
                + the encoder's estimate
                -> re-rank by the true JTFS distance, one batch  the best of a few

The local step: near the best index point the projected features are close
to affine in ``nu``, ``e(nu) ~ a + J (nu - nu_c)``. ``a`` and ``J`` are fitted
by weighted least squares to the ``m`` nearest index points (Gaussian weights
in feature distance), and the step minimises ``||e_target - a - J dnu||^2 +
lam ||dnu||^2`` (a Levenberg-Marquardt step with a Jacobian estimated from
sounds already rendered, so it costs no JTFS pass). It is only a proposal: it
is re-ranked with the rest, so a bad step loses and costs one rendered sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from synth.params import theta_to_nu

from .sound_index import SoundIndex

__all__ = ["Candidate", "Source", "SEMITONE_NU", "choose", "dedupe", "in_tune", "local_step",
           "nu_of_f0", "pitch_candidates", "rerank"]

# One semitone of f0 in nu units (f0 is log-scaled over [40, 1000] Hz onto [-1, 1]).
SEMITONE_NU = 2.0 * math.log10(2.0) / 12.0 / math.log10(1000.0 / 40.0)


class Source(str, Enum):
    """Where a candidate came from (reported as ``MatchResult.estimate``)."""

    ENCODER = "encoder"
    NN = "nn"                       # the exact baseline index's nearest sound
    INDEX = "index"                 # a dense-index sound
    LOCAL = "local"                 # the local Gauss-Newton step from the index
    PITCH = "pitch"                 # the index's best near the spectral f0, at that f0
    ENCODER_PITCH = "encoder+pitch"  # the encoder's estimate at the spectral f0


@dataclass
class Candidate:
    """One proposed point: ``nu [5]`` in ``[-1, 1]``, its source, and (once
    re-ranked) its JTFS distance to the target (Phi units)."""

    nu: np.ndarray
    source: Source
    jtfs: float = math.nan


def nu_of_f0(f0_hz: float) -> float:
    """The normalized coordinate of a fundamental in Hz (clipped to ``[-1, 1]``)."""
    return float(np.clip(theta_to_nu(np.array([f0_hz, 0.3, 1e-3, 1e-3, 0.5]))[0], -1.0, 1.0))


def local_step(index: SoundIndex, target_phi: torch.Tensor, m: int = 32,
               lam: float = 1e-2) -> np.ndarray | None:
    """One Gauss-Newton step from the index's neighbourhood of the target.

    Parameters
    ----------
    index : SoundIndex
    target_phi : torch.Tensor ``[1, P]``
    m : int
        Neighbours fitted (at least 8).
    lam : float
        Damping, relative to the mean diagonal of ``J^T J``.

    Returns
    -------
    np.ndarray ``[5]`` in ``[-1, 1]``, or None when the fit is degenerate.
    The step is limited to the neighbourhood's spread (one standard deviation) per
    coordinate.
    """
    q = index.embed(target_phi)[0].double().numpy()
    k = min(max(8, m), len(index))
    emb_all = index.emb.double().numpy()
    d = np.linalg.norm(emb_all - q, axis=1)
    order = np.argsort(d)[:k]
    nu, e, dist = index.nu[order], emb_all[order], d[order]
    center = nu[0]
    h = max(float(np.median(dist)), 1e-9)
    w = np.exp(-0.5 * (dist / h) ** 2)
    x = np.hstack([np.ones((k, 1)), nu - center])                 # [k, 6]
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(x * sw, e * sw, rcond=None)         # [6, D]
    a, jac = coef[0], coef[1:].T                                   # [D], [D, 5]
    jtj = jac.T @ jac
    scale = float(np.trace(jtj)) / 5.0
    if not np.isfinite(scale) or scale <= 0:
        return None
    step = np.linalg.solve(jtj + lam * scale * np.eye(5), jac.T @ (q - a))
    spread = np.maximum(nu.std(axis=0), 1e-3)
    step = np.clip(step, -spread, spread)
    out = np.clip(center + step, -1.0, 1.0)
    return out if np.isfinite(out).all() else None


def pitch_candidates(index: SoundIndex, target_phi: torch.Tensor, f0_hz: float, k: int = 2,
                     semitones: float = 1.0) -> np.ndarray:
    """The index's ``k`` nearest sounds among those within ``semitones`` of ``f0_hz``,
    each moved to ``f0_hz``: ``nu [<=k, 5]`` (empty if none is that close in pitch)."""
    nu_f0 = nu_of_f0(f0_hz)
    mask = np.abs(index.nu[:, 0] - nu_f0) <= semitones * SEMITONE_NU
    if not mask.any():
        return np.zeros((0, 5))
    nu, _ = index.query(target_phi, k=k, mask=mask)
    out = nu[0].copy()
    out[:, 0] = nu_f0
    return out


def in_tune(nu: np.ndarray, f0_hz: float, semitones: float = 1.0) -> bool:
    """Whether the point's f0 is within ``semitones`` of ``f0_hz``."""
    return abs(float(nu[0]) - nu_of_f0(f0_hz)) <= semitones * SEMITONE_NU + 1e-9


def choose(ranked: list[Candidate], f0_hz: float | None, margin: float) -> Candidate:
    """The winner of a re-ranked list (best first).

    With the hit's fundamental known from its spectrum, the best candidate in
    tune with it wins unless an out-of-tune one is closer by more than
    ``margin`` (a fraction of the in-tune one's JTFS distance): a drum matched
    at the wrong pitch is the wrong drum, even where a JTFS distance over a
    model that cannot reproduce the recording exactly prefers it.
    """
    best = ranked[0]
    if f0_hz is None or in_tune(best.nu, f0_hz):
        return best
    tuned = [c for c in ranked if in_tune(c.nu, f0_hz)]
    if tuned and best.jtfs >= (1.0 - margin) * tuned[0].jtfs:
        return tuned[0]
    return best


def rerank(candidates: list[Candidate], target_phi: torch.Tensor, render, phi,
           ) -> list[Candidate]:
    """Set each candidate's true JTFS distance (one rendered batch) and sort, best first.

    Parameters
    ----------
    candidates : list of Candidate
    target_phi : torch.Tensor ``[1, P]``
    render : callable ``nu [B, 5] (float64) -> audio [B, N]`` float32
    phi : callable ``audio [B, N] -> [B, P]``
    """
    if not candidates:
        raise ValueError("rerank: no candidate")
    with torch.no_grad():
        nus = torch.as_tensor(np.stack([c.nu for c in candidates]), dtype=torch.float64,
                              device=target_phi.device)
        feats = phi(render(nus))
        d = torch.linalg.vector_norm(feats - target_phi, dim=-1).cpu().numpy()
    for c, v in zip(candidates, d):
        c.jtfs = float(v)
    return sorted(candidates, key=lambda c: c.jtfs)


def dedupe(candidates: list[Candidate], tol: float = 1e-6) -> list[Candidate]:
    """Drop candidates at (nearly) the same point as an earlier one."""
    kept: list[Candidate] = []
    for c in candidates:
        if all(np.abs(c.nu - k.nu).max() > tol for k in kept):
            kept.append(c)
    return kept
