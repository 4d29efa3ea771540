"""Candidates for a match from the dense sound index, and their re-ranking.

::

    Phi(target) -> index nearest (projected JTFS distance)      in ms
                -> the two nearest in tune with the hit's f0     (matcher.pitch)
                -> local Gauss-Newton step around the nearest    one point, no render
                + the encoder's estimate
                -> the nearest with f0 nudged half a semitone    two points
                -> re-rank a prefix by the true JTFS and MSS distances, one batch
                -> choose: the best balance of the two

The local step: near the index's nearest sound ``nu_c`` the projected
features are close to affine in ``nu``, ``e(nu) ~ a + J (nu - nu_c)``. ``a``
and ``J`` are fitted by weighted least squares to the ``m`` index points
nearest to ``nu_c`` in ``nu`` (Gaussian weights in that distance), and the
step minimises ``||e_target - a - J dnu||^2 + lam ||dnu||^2`` (a
Levenberg-Marquardt step with a Jacobian estimated from sounds already
rendered, so it costs no JTFS pass). It is only a proposal: it is re-ranked
with the rest, so a bad step loses and costs one rendered sound.

The nudges: the index is a grid a few semitones coarse in f0, while the JTFS
distance is sharpest along f0 (the metric's largest diagonal entries are f0
and alpha), so the nearest sound moved half a semitone either way is often
closer.

The choice: on recordings the JTFS and multi-scale spectral distances
disagree (no twin sound reproduces a recorded drum), and a match that wins
one distance by losing the other is not a better match. :func:`choose` takes
the candidate with the smallest ``jtfs / min(jtfs) + MSS_WEIGHT * mss /
min(mss)`` over the re-ranked ones, each distance relative to the best any
candidate reached. The in-tune candidates come first because the JTFS
distance alone, over a model that cannot reproduce the recording, often
prefers a sound an octave away from the drum's fundamental; the MSS distance
usually does not, and with ``MSS_WEIGHT = 2`` (chosen on the fine-tuning
halves of the recorded sets, ``configs/real-hits.toml``) it gets the say
where the JTFS distances are close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from synth.params import clamp_theta, nu_to_theta, theta_to_nu

from .distances import multiscale_spectral_distance
from .sound_index import SoundIndex

__all__ = ["MSS_WEIGHT", "Candidate", "PhiCost", "Source", "SEMITONE_NU", "choose", "dedupe", "f0_nudges",
           "local_step", "nu_of_f0", "pitch_candidates", "propose", "rerank", "settle"]

# How much the MSS distance counts in :func:`choose` against the JTFS distance (1).
MSS_WEIGHT = 2.0
# One semitone of f0 in nu units (f0 is log-scaled over [40, 1000] Hz onto [-1, 1]).
SEMITONE_NU = 2.0 * math.log10(2.0) / 12.0 / math.log10(1000.0 / 40.0)


class Source(str, Enum):
    """Where a candidate came from (reported as ``MatchResult.estimate``)."""

    ENCODER = "encoder"
    NN = "nn"                       # the exact baseline index's nearest sound
    INDEX = "index"                 # a dense-index sound
    LOCAL = "local"                 # the local Gauss-Newton step from the index
    NUDGE = "nudge"                 # the index's nearest, f0 moved half a semitone
    PITCH = "pitch"                 # the index's best near the spectral f0, at that f0
    ENCODER_PITCH = "encoder+pitch"  # the encoder's estimate at the spectral f0


@dataclass
class Candidate:
    """One proposed point: ``nu [5]`` in ``[-1, 1]``, its source, and (once
    re-ranked) its JTFS distance to the target (Phi units) and its multi-scale
    spectral distance (dimensionless; NaN when re-ranked without the target audio)."""

    nu: np.ndarray
    source: Source
    jtfs: float = math.nan
    mss: float = math.nan


def nu_of_f0(f0_hz: float) -> float:
    """The normalized coordinate of a fundamental in Hz (clipped to ``[-1, 1]``)."""
    return float(np.clip(theta_to_nu(np.array([f0_hz, 0.3, 1e-3, 1e-3, 0.5]))[0], -1.0, 1.0))


def settle(nu: np.ndarray, f0: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An estimate in nu -> ``(theta, nu)``: theta inside the ranges (with the known
    ``f0``, Hz, when given), and its nu in ``[-1, 1]``; both ``[5]`` float64."""
    theta = clamp_theta(nu_to_theta(np.clip(nu, -1.0, 1.0)))
    if f0 is not None:
        theta[0] = f0
    return theta, np.clip(theta_to_nu(theta), -1.0, 1.0)


class PhiCost:
    """Seconds per sound of a JTFS forward, learnt from the passes this process ran:
    sizes the re-ranking to the budget. Batches are cheaper per sound than one sound."""

    def __init__(self) -> None:
        self.single = 0.3          # a guess until measured (2-core CPU, 2**16 samples)
        self.batched: float | None = None

    def note(self, seconds: float, batch: int) -> None:
        """Learn from one pass of ``batch`` sounds that took ``seconds``."""
        per = seconds / max(batch, 1)
        if batch == 1:
            self.single = 0.5 * (self.single + per) if self.single else per
        else:
            self.batched = per if self.batched is None else 0.5 * (self.batched + per)

    def per_sound(self, batch: int) -> float:
        """Expected seconds per sound of a pass of ``batch`` sounds."""
        return max(1e-3, self.single if batch == 1 or self.batched is None else self.batched)


def propose(index: SoundIndex, target_phi: torch.Tensor, encoder: Candidate,
            f0: float | None, f0_spectrum: float | None) -> list[Candidate]:
    """The search's candidates, most promising first (re-ranking keeps a prefix).

    Parameters
    ----------
    index : SoundIndex
        The dense index.
    target_phi : torch.Tensor ``[1, P]``
    encoder : Candidate
        The encoder's estimate (best on sounds the model can make).
    f0 : float or None
        A known fundamental, Hz: every candidate is moved to it.
    f0_spectrum : float or None
        The fundamental read from the hit's spectrum, Hz (used when ``f0`` is None).

    Returns
    -------
    list of Candidate
        The index's nearest, the two nearest in tune with the f0 (a drum at
        the wrong pitch is the wrong drum, though a JTFS distance may prefer
        it), the local step around the nearest, the encoder's estimate, the
        nearest nudged up and down in f0, then more of each; no two at the same
        point.
    """
    near, _ = index.query(target_phi, k=3)
    at_f0 = lambda nu: settle(nu, f0)[1]              # noqa: E731
    pitch_hz = f0 if f0 is not None else f0_spectrum
    tuned = ([] if pitch_hz is None else
             [Candidate(v, Source.PITCH) for v in pitch_candidates(index, target_phi, pitch_hz)])
    step = local_step(index, target_phi, center=near[0, 0])
    local = [] if step is None else [Candidate(at_f0(step), Source.LOCAL)]
    nudged = [] if f0 is not None else [Candidate(at_f0(v), Source.NUDGE)
                                        for v in f0_nudges(near[0, 0])]
    cands = ([Candidate(at_f0(near[0, 0]), Source.INDEX)] + tuned[:2] + local + [encoder]
             + nudged + tuned[2:])
    if f0 is None and pitch_hz is not None:
        moved = encoder.nu.copy()
        moved[0] = nu_of_f0(pitch_hz)
        cands.append(Candidate(moved, Source.ENCODER_PITCH))
    cands += [Candidate(at_f0(v), Source.INDEX) for v in near[0, 1:]]
    return dedupe(cands)


def f0_nudges(nu: np.ndarray, semitones: float = 0.5) -> list[np.ndarray]:
    """``nu [5]`` with f0 moved ``semitones`` up, then down (clipped to ``[-1, 1]``)."""
    out = []
    for sign in (1.0, -1.0):
        x = np.array(nu, dtype=np.float64)
        x[0] = np.clip(x[0] + sign * semitones * SEMITONE_NU, -1.0, 1.0)
        out.append(x)
    return out


def local_step(index: SoundIndex, target_phi: torch.Tensor, m: int = 48,
               lam: float = 1e-2, center: np.ndarray | None = None) -> np.ndarray | None:
    """One Gauss-Newton step from the index's neighbourhood of ``center``.

    Parameters
    ----------
    index : SoundIndex
    target_phi : torch.Tensor ``[1, P]``
    m : int
        Neighbours fitted (at least 8): the index points nearest to ``center`` in ``nu``.
    lam : float
        Damping, relative to the mean diagonal of ``J^T J``.
    center : np.ndarray ``[5]``, optional
        Where the affine model is fitted and the step starts; default the
        index's nearest sound to the target.

    Returns
    -------
    np.ndarray ``[5]`` in ``[-1, 1]``, or None when the fit is degenerate.
    The step is limited to the neighbourhood's spread (one standard deviation) per
    coordinate.
    """
    q = index.embed(target_phi)[0].double().numpy()
    emb_all = index.emb.double().numpy()
    if center is None:
        center = index.nu[int(np.argmin(np.linalg.norm(emb_all - q, axis=1)))]
    center = np.asarray(center, dtype=np.float64)
    k = min(max(8, m), len(index))
    d = np.linalg.norm(index.nu - center, axis=1)
    order = np.argsort(d)[:k]
    nu, e, dist = index.nu[order], emb_all[order], d[order]
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


def choose(ranked: list[Candidate]) -> Candidate:
    """The winner of re-ranked candidates: the smallest ``jtfs / min(jtfs) +
    MSS_WEIGHT * mss / min(mss)`` (each distance relative to the best reached; the
    module docstring says why). Without MSS distances (NaN), the closest in JTFS.
    """
    if not ranked:
        raise ValueError("choose: no candidate")
    if any(not math.isfinite(c.mss) for c in ranked):
        return min(ranked, key=lambda c: c.jtfs)
    j0 = max(min(c.jtfs for c in ranked), 1e-12)
    m0 = max(min(c.mss for c in ranked), 1e-12)
    return min(ranked, key=lambda c: c.jtfs / j0 + MSS_WEIGHT * c.mss / m0)


def rerank(candidates: list[Candidate], target_phi: torch.Tensor, render, phi,
           target: torch.Tensor | None = None) -> list[Candidate]:
    """Set each candidate's true JTFS distance (one rendered batch), and its MSS
    distance when the target audio is given, and sort by JTFS, best first.

    Parameters
    ----------
    candidates : list of Candidate
    target_phi : torch.Tensor ``[1, P]``
    render : callable ``nu [B, 5] (float64) -> audio [B, N]`` float32
    phi : callable ``audio [B, N] -> [B, P]``
    target : torch.Tensor ``[1, N]``, optional
        The prepared target audio (peak 1), for the MSS distances.
    """
    if not candidates:
        raise ValueError("rerank: no candidate")
    with torch.no_grad():
        nus = torch.as_tensor(np.stack([c.nu for c in candidates]), dtype=torch.float64,
                              device=target_phi.device)
        audio = render(nus)
        d = torch.linalg.vector_norm(phi(audio) - target_phi, dim=-1).cpu().numpy()
        mss = (np.full(len(candidates), math.nan) if target is None else
               multiscale_spectral_distance(audio, target.expand_as(audio),
                                            reduction="none").cpu().numpy())
    for c, v, s in zip(candidates, d, mss):
        c.jtfs, c.mss = float(v), float(s)
    return sorted(candidates, key=lambda c: c.jtfs)


def dedupe(candidates: list[Candidate], tol: float = 1e-6) -> list[Candidate]:
    """Drop candidates at (nearly) the same point as an earlier one."""
    kept: list[Candidate] = []
    for c in candidates:
        if all(np.abs(c.nu - k.nu).max() > tol for k in kept):
            kept.append(c)
    return kept
