"""Recorded hit -> membrane parameters: the matcher's last step (``tympan match``).

::

    file -> audio.load_hit (mono, onset, resample, peak 1)
         -> model.predict_nu (CQT features + encoder)        nu in [-1, 1]^5
         -> synth.params (clamp, nu -> theta)                 physical units
         -> twin render + distances (JTFS, multi-scale STFT)  how close the match sounds
         -> [determination from M(nu) = J^T J]                how well each parameter is pinned
         -> MatchResult

Everything is model-side: the model's sample rate and length
(``feature_config.sr``, ``feature_config.n_samples``); the twin renders the
match there, peak-normalized like the prepared target.

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

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from synth.params import NAMES, PARAMS, check_value, clamp_theta, nu_to_theta, theta_to_nu
from synth.twin import MembraneTwin

from .audio import AudioConfig, Hit, load_hit
from .device import resolve_device
from .distances import jtfs_distance, multiscale_spectral_distance
from .jtfs import JTFS, JTFSConfig
from .metric import metric
from .model import DEFAULT_MODEL, MatcherModel
from .pitch import estimate_f0
from .refine import refine as refine_nu
from .search import (Candidate, Source, choose, dedupe, local_step, nu_of_f0,
                     pitch_candidates, rerank)
from .sound_index import SoundIndex, index_beside

__all__ = ["DEFAULT_BUDGET_MS", "DEFAULT_METHOD", "Estimate", "MatchResult", "Matcher",
           "Method", "determination", "metric"]


class Method(str, Enum):
    """How the estimate is found (``tympan match --method``)."""

    SEARCH = "search"      # encoder + dense index + local step + pitch, re-ranked by JTFS
    ENCODER = "encoder"    # the encoder alone (milliseconds)
    NN = "nn"              # the baseline: the nearest sound of an exact index
    HYBRID = "hybrid"      # the closer of encoder and nn


DEFAULT_METHOD = Method.SEARCH.value
DEFAULT_BUDGET_MS = 2000.0
# An out-of-tune candidate beats the best in-tune one only if this much closer (JTFS).
PITCH_MARGIN = 0.4
# Kept back from re-ranking and refinement for the final render and MSS distance.
_SCORE_RESERVE_S = 0.06


class _PhiCost:
    """Seconds per sound of a JTFS forward, learnt from the passes this process ran:
    sizes the re-ranking to the budget. Batches are cheaper per sound than one sound."""

    def __init__(self) -> None:
        self.single = 0.3          # a guess until measured (2-core CPU, 2**16 samples)
        self.batched: float | None = None

    def note(self, seconds: float, batch: int) -> None:
        per = seconds / max(batch, 1)
        if batch == 1:
            self.single = 0.5 * (self.single + per) if self.single else per
        else:
            self.batched = per if self.batched is None else 0.5 * (self.batched + per)

    def per_sound(self, batch: int) -> float:
        return max(1e-3, self.single if batch == 1 or self.batched is None else self.batched)


@dataclass
class Estimate:
    """What :meth:`Matcher.estimate` found: the best candidate, all proposed, those
    re-ranked (best first, with JTFS distances), the target's Phi ``[1, P]`` (None
    for the encoder alone) and the spectrum's f0 in Hz (search only; None if none)."""

    best: Candidate
    candidates: list[Candidate]
    ranked: list[Candidate]
    target_phi: torch.Tensor | None
    f0_spectrum: float | None

_UNITS = {spec.name: spec.unit for spec in PARAMS}


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
        ``nn``, ``index``, ``local``, ``pitch`` or ``encoder+pitch``.
    method : str
        The method that found it (:class:`Method`).
    search : dict or None
        With several candidates: ``candidates`` (those re-ranked, best first:
        source, JTFS distance, nu) and ``f0_spectrum_hz`` (the spectrum's
        fundamental, or None).
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
            each = ", ".join(f"{x['source']} {x['jtfs']:.3g}" for x in c)
            lines.append(f"estimate: {self.estimate}, the best of {len(c)} candidates by JTFS "
                         f"distance ({each})" + (f"; spectrum f0 {f0s:.1f} Hz" if f0s else ""))
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


def _settle(nu: np.ndarray, f0: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An estimate in nu -> ``(theta, nu)``: theta inside the ranges (with the known
    ``f0``, Hz, when given), and its nu in ``[-1, 1]``; both ``[5]`` float64."""
    theta = clamp_theta(nu_to_theta(np.clip(nu, -1.0, 1.0)))
    if f0 is not None:
        theta[0] = f0
    return theta, np.clip(theta_to_nu(theta), -1.0, 1.0)


class Matcher:
    """Loads a model once and matches hits with it.

    Parameters
    ----------
    model : str or Path, optional
        A ``.tympan`` artifact (``tympan train export``); default
        :data:`matcher.model.DEFAULT_MODEL`.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default CUDA when available, else CPU.

    Attributes
    ----------
    model : MatcherModel
    audio_config : AudioConfig
        Model-side rate and length, from the model's feature configuration.
    twin : MembraneTwin
        Renders matches at that rate and length, peak-normalized.
    jtfs_config : JTFSConfig
        The reference JTFS at the model's length and rate.

    Raises
    ------
    ValueError
        Missing or unreadable model file, unknown or absent device, a model
        too short for the reference JTFS (``n_samples < 2**13``).
    """

    def __init__(self, model: str | Path | None = None, device: str | None = None,
                 nn_index: str | Path | None = None, index: str | Path | None = None) -> None:
        self.device = resolve_device(device)
        path = Path(DEFAULT_MODEL if model is None else model)
        if model is None and not path.is_file():
            raise ValueError(f"no default model at {path}: give a model artifact "
                             "(--model FILE; 'tympan train export' writes one)")
        try:
            self.model = MatcherModel.load(path, self.device)
        except (KeyError, TypeError) as err:  # a header that is JSON but not a full document
            raise ValueError(f"{path}: incomplete Tympan metadata (missing or bad {err})") from None
        self.path = path
        fc = self.model.feature_config
        self.audio_config = AudioConfig(sr=float(fc.sr), n_samples=int(fc.n_samples))
        self.twin = MembraneTwin(float(fc.sr), int(fc.n_samples)).to(self.device)
        try:
            self.jtfs_config = JTFSConfig.reference(int(fc.n_samples), float(fc.sr))
        except ValueError as err:
            raise ValueError(f"{path}: model length {fc.n_samples} samples does not fit the "
                             f"reference JTFS ({err})") from None
        self._jtfs: JTFS | None = None
        self._warm: set[tuple[str, str]] = set()   # refinement paths already run once
        self._ready: set[Method] = set()            # methods whose parts are built
        self._phi_cost = _PhiCost()
        self._f0_spectrum: float | None = None
        self.nn: SoundIndex | None = None
        if nn_index is not None:          # the baseline: checked against this model's JTFS now
            self.nn = SoundIndex.load(nn_index)
            self.nn.check(self.jtfs_config)
        self.index_path = index_beside(path) if index is None else Path(index)
        self._index: SoundIndex | None = None
        if index is not None:             # given: checked now; the model's own on first search
            _ = self.index

    @property
    def index(self) -> SoundIndex:
        """The dense sound index of ``method="search"`` (loaded and checked on first use).

        Raises
        ------
        ValueError
            Missing, corrupt, or built for another length or rate.
        """
        if self._index is None:
            if not self.index_path.is_file():
                fc = self.model.feature_config
                raise ValueError(f"no sound index for model {self.path.name} at "
                                 f"{self.index_path}: build it with 'tympan train sound-index "
                                 f"--out {self.index_path} --n-samples {fc.n_samples} --sr "
                                 f"{fc.sr:g}', or match with --method encoder")
            index = SoundIndex.load(self.index_path)
            index.check(self.jtfs_config)
            self._index = index
        return self._index

    @property
    def jtfs(self) -> JTFS:
        """The reference JTFS at the model's length (built on first use: seconds)."""
        if self._jtfs is None:
            self._jtfs = JTFS(self.jtfs_config).to(self.device)
        return self._jtfs

    def match_file(self, path: str | Path, onset: float | None = None, determine: bool = False,
                   f0_hz: float | None = None, **refine_options: Any) -> MatchResult:
        """Match the hit in an audio file.

        Parameters
        ----------
        path : str or Path
            Any file :func:`matcher.audio.load_hit` reads.
        onset : float, optional
            Start of the hit in the file, s; default detected.
        determine, f0_hz, refine_options
            As in :meth:`match_hit`.

        Raises
        ------
        AudioError
            Missing, unreadable, too short or silent file; bad onset.
        """
        t0 = time.perf_counter()
        hit = load_hit(path, self.audio_config, onset)
        load_ms = 1e3 * (time.perf_counter() - t0)
        result = self.match_hit(hit, determine=determine, f0_hz=f0_hz, **refine_options)
        result.timings_ms = {"load": load_ms, **result.timings_ms}
        result.timings_ms["total"] += load_ms
        return result

    def match_hit(self, hit: Hit, determine: bool = False, f0_hz: float | None = None,
                  refine: str | None = None, refine_loss: str = "mss",
                  budget_ms: float = DEFAULT_BUDGET_MS, method: str = DEFAULT_METHOD,
                  score: bool = True) -> MatchResult:
        """Match a prepared hit: estimate, then refine, then score.

        Parameters
        ----------
        hit : Hit
            Prepared with :attr:`audio_config` (``hit.audio``: ``[n_samples]`` at the model's rate).
        determine : bool
            Also compute :attr:`MatchResult.determination` (seconds on a CPU).
        f0_hz : float, optional
            The hit's fundamental, Hz, in ``[40, 1000]``. Required by a
            pitch-known model (its encoder takes f0 as given); otherwise every
            candidate gets this f0.
        refine : {None, "adam", "lm"}
            Test-time refinement of the best candidate (:mod:`matcher.refine`)
            with what the budget leaves; with ``f0_hz`` given, f0 is set back
            to it afterwards.
        refine_loss : {"mss", "jtfs"}
            The distance ``adam`` descends (``lm`` uses the JTFS residual).
        budget_ms : float
            Time allowed to the whole match, ms: estimate, re-ranking,
            refinement and scoring (file loading and first-use setup apart).
            ``search`` sizes its re-ranking to it; refinement gets what is
            left. A budget too small for three candidates is overrun by that much.
        method : {"search", "encoder", "nn", "hybrid"}
            The estimate (:class:`Method`): ``search`` (the default) re-ranks
            the encoder's estimate, dense-index sounds, a local step and a
            pitch candidate by JTFS distance; ``encoder`` alone; ``nn`` the
            nearest sound of the baseline index given to the constructor;
            ``hybrid`` the closer of encoder and nn.
            :attr:`MatchResult.estimate` says which candidate won.
        score : bool
            Also compute the distances of the match to the target. False
            leaves the MSS distance NaN (and the JTFS distance too unless the
            estimate already measured it): the parameters come back sooner,
            and :meth:`distances` fills them in later.

        Raises
        ------
        ValueError
            A pitch-known model without ``f0_hz``; ``f0_hz`` out of range; a
            hit of another length; an unknown method; a method whose index is
            missing.
        """
        n = self.audio_config.n_samples
        audio = np.asarray(hit.audio)
        if audio.shape != (n,):
            raise ValueError(f"{hit.source}: hit of shape {audio.shape}; this model needs "
                             f"[{n}] samples at {self.audio_config.sr:g} Hz (prepare it with "
                             "Matcher.audio_config)")
        try:
            method = Method(method)
        except ValueError:
            raise ValueError(f"match method {method!r}: allowed "
                             f"{', '.join(m.value for m in Method)}") from None
        if not budget_ms > 0:
            raise ValueError(f"match budget {budget_ms!r} ms: allowed a positive number of ms")
        f0 = None
        if f0_hz is not None:
            f0 = check_value("f0", f0_hz, " (f0_hz, the hit's known fundamental)")
        elif self.model.pitch_known:
            raise ValueError(f"model {self.path} was trained with the pitch known: give the "
                             "hit's fundamental in Hz (f0_hz=..., or --f0 HZ)")
        if method in (Method.NN, Method.HYBRID) and self.nn is None:
            raise ValueError(f"method {method.value!r} needs a nearest-neighbour index "
                             "(--nn-index FILE; 'tympan train nn-index' builds one)")
        t: dict[str, float] = {}
        if method not in self._ready:
            with self._timer(t, "setup"):              # first use only: timed apart
                self._setup(method)
            self._ready.add(method)
        deadline = time.perf_counter() + budget_ms / 1e3
        target = torch.tensor(audio, dtype=torch.float32, device=self.device)[None]  # a copy:
        # hit.audio is read-only, which torch.as_tensor warns about
        found = self.estimate(target, method, f0, deadline, t)
        best = found.best
        theta, nu = _settle(best.nu, f0)
        refined = None
        if refine is not None:
            # Scoring after refinement measures JTFS again unless the refinement did.
            phi_passes = 0 if not score else (2 if found.target_phi is None else 1)
            reserve = _SCORE_RESERVE_S + phi_passes * self._phi_cost.per_sound(1)
            r = self.refine(nu, target, refine, refine_loss, deadline, t, reserve)
            if r.best < r.start:
                theta, nu = _settle(r.nu, f0)
                if found.target_phi is not None and (r.method == "lm" or r.loss == "jtfs") \
                        and f0 is None:
                    best = Candidate(nu, best.source, r.best)   # its JTFS distance is known
                else:
                    best = Candidate(nu, best.source)
            refined = {"method": r.method, "loss": r.loss, "start": r.start, "best": r.best,
                       "iterations": r.iterations, "elapsed_ms": r.elapsed_ms,
                       "started_from": best.source.value}
        d_jtfs = best.jtfs if np.allclose(best.nu, nu) else math.nan
        d_mss = math.nan
        if score:
            d_jtfs, d_mss = self.score(nu, target, t, d_jtfs, found.target_phi)
        det = None
        if determine:
            with self._timer(t, "metric"):
                nu_t = torch.as_tensor(nu, dtype=torch.float32, device=self.device)[None]
                det = determination(metric(nu_t, self.twin, self.jtfs.phi)[0][0].cpu().numpy())
        t["total"] = sum(t.values())
        search = None
        if found.ranked:
            search = {"candidates": [{"source": c.source.value, "jtfs": c.jtfs,
                                      "nu": [float(v) for v in c.nu]} for c in found.ranked],
                      "f0_spectrum_hz": found.f0_spectrum}
        return MatchResult(
            source=hit.source, theta=dict(zip(NAMES, map(float, theta))), units=dict(_UNITS),
            nu=[float(v) for v in nu], jtfs_distance=d_jtfs, mss_distance=d_mss,
            determination=det, timings_ms=t, onset_seconds=float(hit.onset_seconds),
            truncated=bool(hit.truncated), refinement=refined, estimate=best.source.value,
            method=method.value, search=search)

    # ------------------------------------------------------------------ steps
    def _setup(self, method: "Method") -> None:
        """Build what the method needs on first use: CQT kernels, JTFS filters, the index."""
        _ = self.model.features
        if method is not Method.ENCODER or self._jtfs is None:
            _ = self.jtfs
        if method is Method.SEARCH:
            _ = self.index

    def estimate(self, target: torch.Tensor, method: "Method", f0: float | None,
                 deadline: float, t: dict[str, float]) -> "Estimate":
        """The candidates of a method, re-ranked by JTFS distance where there are several.

        Parameters
        ----------
        target : torch.Tensor ``[1, N]``
        method : Method
        f0 : float or None
            A known fundamental, Hz: every candidate is moved to it.
        deadline : float
            ``time.perf_counter()`` value by which the whole match should end.
        t : dict
            Stage timings, ms (added to).
        """
        nu_f0 = None if f0 is None else nu_of_f0(f0)
        cands: list[Candidate] = []
        target_phi = None
        f0_spec = None
        if method in (Method.ENCODER, Method.HYBRID, Method.SEARCH):
            with self._timer(t, "encode"):
                known = None if nu_f0 is None else torch.tensor([nu_f0], device=self.device)
                raw = self.model.predict_nu(target, known if self.model.pitch_known else None)
            cands.append(Candidate(_settle(raw[0].double().cpu().numpy(), f0)[1],
                                   Source.ENCODER))
        if method is Method.ENCODER:
            return Estimate(cands[0], cands, [], None, None)
        with self._timer(t, "search"), torch.no_grad():
            t_phi = time.perf_counter()
            target_phi = self.jtfs.phi(target)
            self._phi_cost.note(time.perf_counter() - t_phi, 1)
            if method in (Method.NN, Method.HYBRID):
                cands.append(Candidate(_settle(self.nn.query(target_phi)[0][0, 0], f0)[1],
                                       Source.NN))
            else:
                cands = self._search_candidates(target, target_phi, cands[0], f0)
                f0_spec = self._f0_spectrum
        if method is Method.NN:
            return Estimate(cands[0], cands, [], target_phi, None)
        # Re-rank as many as the budget allows, most promising first; at least the
        # first three (index, encoder, pitch), whatever the budget.
        left = deadline - time.perf_counter() - _SCORE_RESERVE_S
        k = min(len(cands), max(3, int(left / self._phi_cost.per_sound(len(cands)))))
        with self._timer(t, "rerank"):
            t_r = time.perf_counter()
            ranked = rerank(cands[:k], target_phi, self._render_batch, self.jtfs.phi)
            self._phi_cost.note(time.perf_counter() - t_r, k)
        best = ranked[0] if method is Method.HYBRID else choose(ranked, f0_spec, PITCH_MARGIN)
        return Estimate(best, cands, ranked, target_phi, f0_spec)

    def _search_candidates(self, target: torch.Tensor, target_phi: torch.Tensor,
                           encoder: Candidate, f0: float | None) -> list[Candidate]:
        """The search's candidates, most promising first (re-ranking keeps a prefix):
        the index's nearest, the encoder's estimate (best on sounds the model can
        make), the nearest in tune with the spectrum's f0, the local step, then
        more of each."""
        index = self.index
        near, _ = index.query(target_phi, k=3)
        settle = lambda nu: _settle(nu, f0)[1]              # noqa: E731
        pitch_hz = f0
        self._f0_spectrum = None
        if pitch_hz is None:
            pitch_hz = self._f0_spectrum = estimate_f0(target[0].cpu().numpy(),
                                                       self.audio_config.sr)
        tuned = ([] if pitch_hz is None else
                 [Candidate(v, Source.PITCH) for v in pitch_candidates(index, target_phi, pitch_hz)])
        step = local_step(index, target_phi)
        local = [] if step is None else [Candidate(settle(step), Source.LOCAL)]
        cands = [Candidate(settle(near[0, 0]), Source.INDEX), encoder] + tuned[:1] + local
        cands += tuned[1:]
        if f0 is None and pitch_hz is not None:
            moved = encoder.nu.copy()
            moved[0] = nu_of_f0(pitch_hz)
            cands.append(Candidate(moved, Source.ENCODER_PITCH))
        cands += [Candidate(settle(v), Source.INDEX) for v in near[0, 1:]]
        return dedupe(cands)

    def refine(self, nu: np.ndarray, target: torch.Tensor, method: str, loss: str,
               deadline: float, t: dict[str, float], reserve_s: float = _SCORE_RESERVE_S):
        """Refine ``nu [5]`` until ``deadline`` less ``reserve_s`` (scoring's share).

        Returns a :class:`matcher.refine.RefineResult`; with no time left it
        evaluates the start only (0 iterations).
        """
        phi = self.jtfs.phi if (method == "lm" or loss == "jtfs") else None
        if (method, loss) not in self._warm:
            # The first backward pass through the twin builds autograd's and the
            # allocator's caches (~1 s on a CPU): pay it here, timed as setup and
            # outside the budget, so the first hit buys as many steps as the next.
            t0 = time.perf_counter()
            with self._timer(t, "setup"):
                refine_nu(nu, target[0], self.twin, method=method, loss=loss,
                          budget_ms=60_000.0, phi=phi, max_iter=1)
            self._warm.add((method, loss))
            deadline += time.perf_counter() - t0
        left_ms = 1e3 * (deadline - time.perf_counter() - reserve_s)
        with self._timer(t, "refine"):
            return refine_nu(nu, target[0], self.twin, method=method, loss=loss,
                             budget_ms=max(left_ms, 1.0), phi=phi,
                             max_iter=500 if left_ms > 0 else 0)

    def score(self, nu: np.ndarray, target: torch.Tensor, t: dict[str, float],
              jtfs: float = math.nan, target_phi: torch.Tensor | None = None
              ) -> tuple[float, float]:
        """``(JTFS, MSS)`` distances of ``nu``'s render to the target; a JTFS distance
        already measured (``jtfs``) is not measured again."""
        with self._timer(t, "render"):
            est = self._render(nu)
        with self._timer(t, "distances"):
            if math.isnan(jtfs):
                if target_phi is None:
                    jtfs, mss = self.distances(est[0], target[0])
                    return jtfs, mss
                with torch.no_grad():
                    jtfs = float(torch.linalg.vector_norm(self.jtfs.phi(est) - target_phi))
            with torch.no_grad():
                mss = float(multiscale_spectral_distance(est, target, reduction="none")[0])
        return jtfs, mss

    def render(self, result: MatchResult) -> np.ndarray:
        """Model-side audio of a match: float32 ``[n_samples]`` at ``audio_config.sr`` Hz, peak 1."""
        nu = np.asarray(result.nu, dtype=np.float64)
        if nu.shape != (5,) or not np.isfinite(nu).all() or np.abs(nu).max() > 1:
            raise ValueError(f"result.nu = {result.nu!r}: allowed 5 finite values in [-1, 1]")
        return self._render(nu)[0].cpu().numpy()

    @torch.no_grad()
    def distances(self, x: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
                  ) -> tuple[float, float]:
        """``(JTFS distance, multi-scale spectral distance)`` of ``x`` to ``target``.

        Parameters
        ----------
        x, target : ``[n_samples]`` model-side audio (float32 on any device)

        Returns
        -------
        tuple of float
            Phi units (symmetric) and dimensionless (normalized by the target).
        """
        x, y = (a.to(self.device, torch.float32) if isinstance(a, torch.Tensor)
                else torch.tensor(np.asarray(a), dtype=torch.float32, device=self.device)
                for a in (x, target))
        d_jtfs = jtfs_distance(x, y, self.jtfs.phi)
        d_mss = multiscale_spectral_distance(x, y, reduction="none")
        return float(d_jtfs), float(d_mss)

    @torch.no_grad()
    def _render_batch(self, nu: torch.Tensor) -> torch.Tensor:
        """``nu [B, 5]`` float64 on the device -> float32 ``[B, n_samples]`` (peak 1)."""
        return self.twin.from_nu(nu).to(torch.float32)

    @torch.no_grad()
    def _render(self, nu: np.ndarray) -> torch.Tensor:
        """``nu [5]`` (clamped) -> float32 ``[1, n_samples]`` on the device (float64 render)."""
        nu_t = torch.as_tensor(nu, dtype=torch.float64, device=self.device)[None]
        return self.twin.from_nu(nu_t).to(torch.float32)

    @contextmanager
    def _timer(self, into: dict[str, float], name: str) -> Iterator[None]:
        """Add the wall time of the block to ``into[name]``, ms (CUDA work waited for)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        into[name] = into.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)
