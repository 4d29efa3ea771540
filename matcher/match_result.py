"""What a match returns: the parameters, their distances to the hit, and how well
the hit pins each parameter down (:class:`MatchResult`, :func:`determination`).

Determination
-------------
With ``J = dPhi(g(nu)) / dnu`` (``[P, 5]``, Phi the reference JTFS at the
model's length and rate, ``g`` the twin) and ``M = J^T J`` at the estimate:

- ``sensitivity_k = sqrt(M_kk) = ||J e_k||``: the JTFS distance that moving
  ``nu_k`` by one unit makes with the other parameters held fixed;
- ``identifiability_k = 1 / sqrt((M + eps I)^-1_kk)``: the same once the other
  four parameters move to compensate as well as they can. By the Schur
  complement, ``1 / (M^-1)_kk = min_c ||J e_k + J_{-k} c||^2``, so this is the
  part of ``J e_k`` no combination of the other columns explains. It is at
  most ``sensitivity_k``; near 0 the sound hardly pins that parameter down
  (a trade-off with others: a flat direction of the PNP metric).

Both are first-order (the metric is a local, quadratic model of the JTFS
distance) and in Phi units per unit of ``nu`` (one unit of ``nu`` is half a
parameter's range, in ``log10`` for the log-scaled ones). ``eps = 1e-12 *
max eigenvalue`` (plus the smallest normal float64) only keeps a singular
``M`` invertible. Computing ``J`` costs five forward-mode JVPs through the
twin and the JTFS: seconds per hit on a CPU, so only on request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from synth.params import NAMES, PARAMS

__all__ = ["MatchResult", "UNITS", "determination"]

UNITS = {spec.name: spec.unit for spec in PARAMS}


@dataclass
class MatchResult:
    """The parameters estimated from one hit, and how well they match it.

    Attributes
    ----------
    source : str
        The file (or :class:`~matcher.audio.Hit` name) matched.
    theta : dict of str to float
        Physical parameters ``f0`` (Hz), ``tau`` (s), ``p``, ``D``, ``alpha``
        (dimensionless), inside their ranges.
    units : dict of str to str
        Unit of each parameter ("" for dimensionless).
    nu : list of float
        The same point in normalized coordinates, 5 values in ``[-1, 1]``
        (order f0, tau, p, D, alpha).
    jtfs_distance : float
        ``||Phi(target) - Phi(match)||``, Phi the reference JTFS at the model's
        length and rate (Phi units; 0 for identical sounds).
    mss_distance : float
        Multi-scale spectral distance of the match to the target
        (dimensionless; auraloss's definition).
    determination : dict or None
        ``{"sensitivity": {name: value}, "identifiability": {name: value}}``,
        each ``>= 0`` in Phi units per unit of ``nu`` (see the module
        docstring); None unless asked for (it costs seconds on a CPU).
    timings_ms : dict of str to float
        Wall time per stage, ms: ``setup`` (first use only: CQT kernels and
        JTFS filters), ``load``, ``encode`` (CQT features + encoder),
        ``render``, ``distances``, ``metric`` (with determination), ``total``.
    onset_seconds : float
        Time in the source of the prepared hit's first sample, s.
    truncated : bool
        The source was still sounding where the model-side window ends.
    refinement : dict or None
        With refinement: method, loss, the descended distance at the
        estimate (``start``) and after (``best``), iterations, time, and
        which estimate it started from (``started_from``).
    estimate : str
        Which candidate won (:class:`matcher.search.Source`): ``encoder``,
        ``nn``, ``index``, ``local``, ``nudge``, ``pitch`` or ``encoder+pitch``.
    method : str
        The method that found it (:class:`Method`).
    search : dict or None
        With several candidates: ``candidates`` (those re-ranked, closest in
        JTFS first: source, JTFS and MSS distances, nu) and ``f0_spectrum_hz``
        (the spectrum's fundamental, or None).
    """

    source: str
    theta: dict[str, float]
    units: dict[str, str]
    nu: list[float]
    jtfs_distance: float
    mss_distance: float
    determination: dict[str, dict[str, float]] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    onset_seconds: float = 0.0
    truncated: bool = False
    refinement: dict[str, Any] | None = None
    estimate: str = "encoder"
    method: str = "encoder"
    search: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (plain floats, strings, lists, dicts)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def table(self) -> str:
        """Human-readable report: one row per parameter with units, then the distances."""
        det = self.determination
        head = f"{'parameter':<10} {'value':>10}  {'unit':<4}  {'range':<18}"
        if det is not None:
            head += f" {'sensitivity':>12} {'identifiability':>16}"
        lines = [f"match of {self.source} (onset {self.onset_seconds:.4g} s)", head]
        for spec, v in zip(PARAMS, self.nu):
            name = spec.name
            row = f"{name:<10} {self.theta[name]:>10.4g}  {self.units[name]:<4}  " \
                  f"{spec.range_text():<18}"
            if det is not None:
                row += f" {det['sensitivity'][name]:>12.4g} {det['identifiability'][name]:>16.4g}"
            lines.append(row)
        lines.append(f"JTFS distance {self.jtfs_distance:.4g}   "
                     f"multi-scale spectral distance {self.mss_distance:.4g}")
        if det is not None:
            lines.append("sensitivity / identifiability: JTFS distance per unit of nu, "
                         "others fixed / others compensating")
        if self.truncated:
            lines.append("note: the hit is longer than the model's window; its tail was cut")
        if self.search is not None:
            c = self.search["candidates"]
            f0s = self.search.get("f0_spectrum_hz")
            each = ", ".join(f"{x['source']} {x['jtfs']:.3g}/{x['mss']:.3g}" for x in c)
            lines.append(f"estimate: {self.estimate}, the best of {len(c)} candidates by JTFS / "
                         f"MSS distance ({each})"
                         + (f"; spectrum f0 {f0s:.1f} Hz" if f0s else ""))
        elif self.estimate != "encoder":
            lines.append(f"estimate: {self.estimate} (the nearest-neighbour index's sound)")
        if self.refinement is not None:
            r = self.refinement
            lines.append(f"refined ({r['method']}, {r['loss']}): {r['start']:.4g} -> {r['best']:.4g} "
                         f"in {r['iterations']} iterations, {r['elapsed_ms']:.0f} ms")
        lines.append("time: " + ", ".join(f"{k} {v:.0f} ms" for k, v in self.timings_ms.items()))
        return "\n".join(lines)


def determination(m: np.ndarray) -> dict[str, dict[str, float]]:
    """Sensitivity and identifiability of each parameter from one metric ``M``.

    Parameters
    ----------
    m : np.ndarray, ``[5, 5]``
        Symmetric positive semi-definite ``J^T J`` (Phi units^2 per nu^2).

    Returns
    -------
    dict
        ``{"sensitivity": {name: sqrt(M_kk)}, "identifiability": {name:
        1 / sqrt((M + eps I)^-1_kk)}}``, finite and ``>= 0``; definitions in
        the module docstring.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (5, 5) or not np.isfinite(m).all():
        raise ValueError(f"metric of shape {m.shape}: expected a finite [5, 5] matrix")
    lam, vec = np.linalg.eigh(0.5 * (m + m.T))
    lam = np.clip(lam, 0.0, None)
    eps = 1e-12 * lam.max() + np.finfo(np.float64).tiny
    inv_diag = (vec ** 2 / (lam + eps)).sum(axis=1)        # diag of (M + eps I)^-1
    sens = np.sqrt(np.clip(np.diag(m), 0.0, None))
    ident = np.minimum(1.0 / np.sqrt(inv_diag), sens)      # never above: rounding only
    return {"sensitivity": dict(zip(NAMES, map(float, sens))),
            "identifiability": dict(zip(NAMES, map(float, ident)))}
