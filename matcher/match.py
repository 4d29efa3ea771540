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

The result and its determination (how well the hit pins each parameter) are
:mod:`matcher.match_result`'s.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from synth.params import NAMES, check_value
from synth.twin import MembraneTwin

from .audio import AudioConfig, Hit, load_hit
from .device import resolve_device
from .distances import jtfs_distance, multiscale_spectral_distance
from .jtfs import JTFS, JTFSConfig
from .match_result import UNITS, MatchResult, determination
from .metric import metric
from .model import DEFAULT_MODEL, MatcherModel
from .pitch import estimate_f0
from .refine import Loss, RefineMethod, RefineResult, as_loss, as_method
from .refine import refine as refine_nu
from .search import (Candidate, PhiCost, Source, choose, nu_of_f0, propose, rerank,
                     settle)
from .sound_index import SoundIndex, index_beside

__all__ = ["DEFAULT_BUDGET_MS", "DEFAULT_METHOD", "Estimate", "MatchResult", "Matcher",
           "Method", "determination", "metric"]


class Method(str, Enum):
    """How the estimate is found (``tympan match --method``)."""

    SEARCH = "search"      # encoder + dense index + local step + nudges + pitch, re-ranked
    ENCODER = "encoder"    # the encoder alone (milliseconds)
    NN = "nn"              # the baseline: the nearest sound of an exact index
    HYBRID = "hybrid"      # the closer of encoder and nn


DEFAULT_METHOD = Method.SEARCH.value
DEFAULT_BUDGET_MS = 2000.0
# Kept back from re-ranking and refinement for the final render and MSS distance.
_SCORE_RESERVE_S = 0.06


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
        self._phi_cost = PhiCost()
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
                  refine: RefineMethod | str | None = None, refine_loss: Loss | str = Loss.MSS,
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
            the dense index's nearest sound, a local step, the encoder's
            estimate, f0 nudges and a pitch candidate by their JTFS and MSS
            distances (:func:`matcher.search.choose`); ``encoder`` alone; ``nn`` the
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
        refine = None if refine is None else as_method(refine)
        refine_loss = as_loss(refine_loss)
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
        theta, nu = settle(best.nu, f0)
        refined = None
        if refine is not None:
            # Scoring after refinement measures JTFS again unless the refinement did.
            phi_passes = 0 if not score else (2 if found.target_phi is None else 1)
            reserve = _SCORE_RESERVE_S + phi_passes * self._phi_cost.per_sound(1)
            r = self.refine(nu, target, refine, refine_loss, deadline, t, reserve)
            if r.best < r.start:
                theta, nu = settle(r.nu, f0)
                if found.target_phi is not None and r.loss is Loss.JTFS and f0 is None:
                    best = Candidate(nu, best.source, r.best)   # its JTFS distance is known
                else:
                    best = Candidate(nu, best.source)
            refined = {"method": r.method.value, "loss": r.loss.value, "start": r.start,
                       "best": r.best, "iterations": r.iterations,
                       "elapsed_ms": r.elapsed_ms, "started_from": best.source.value}
        same = np.allclose(best.nu, nu)
        d_jtfs = best.jtfs if same else math.nan
        d_mss = best.mss if same else math.nan
        if score:
            d_jtfs, d_mss = self.score(nu, target, t, d_jtfs, found.target_phi, d_mss)
        det = None
        if determine:
            with self._timer(t, "metric"):
                nu_t = torch.as_tensor(nu, dtype=torch.float32, device=self.device)[None]
                det = determination(metric(nu_t, self.twin, self.jtfs.phi)[0][0].cpu().numpy())
        t["total"] = sum(t.values())
        search = None
        if found.ranked:
            search = {"candidates": [{"source": c.source.value, "jtfs": c.jtfs, "mss": c.mss,
                                      "nu": [float(v) for v in c.nu]} for c in found.ranked],
                      "f0_spectrum_hz": found.f0_spectrum}
        return MatchResult(
            source=hit.source, theta=dict(zip(NAMES, map(float, theta))), units=dict(UNITS),
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
        """The candidates of a method, re-ranked where there are several (JTFS and MSS
        distances; :func:`matcher.search.choose` picks the search's winner, the closest
        in JTFS wins for ``hybrid``).

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
            cands.append(Candidate(settle(raw[0].double().cpu().numpy(), f0)[1],
                                   Source.ENCODER))
        if method is Method.ENCODER:
            return Estimate(cands[0], cands, [], None, None)
        with self._timer(t, "search"), torch.no_grad():
            t_phi = time.perf_counter()
            target_phi = self.jtfs.phi(target)
            self._phi_cost.note(time.perf_counter() - t_phi, 1)
            if method in (Method.NN, Method.HYBRID):
                cands.append(Candidate(settle(self.nn.query(target_phi)[0][0, 0], f0)[1],
                                       Source.NN))
            else:
                f0_spec = None if f0 is not None else estimate_f0(target[0].cpu().numpy(),
                                                                  self.audio_config.sr)
                cands = propose(self.index, target_phi, cands[0], f0, f0_spec)
        if method is Method.NN:
            return Estimate(cands[0], cands, [], target_phi, None)
        # Re-rank as many as the budget allows, most promising first; at least the
        # first three (search: the index's nearest and two in tune), whatever the budget.
        left = deadline - time.perf_counter() - _SCORE_RESERVE_S
        k = min(len(cands), max(3, int(left / self._phi_cost.per_sound(len(cands)))))
        with self._timer(t, "rerank"):
            t_r = time.perf_counter()
            ranked = rerank(cands[:k], target_phi, self.render_batch, self.jtfs.phi, target)
            self._phi_cost.note(time.perf_counter() - t_r, k)
        best = ranked[0] if method is Method.HYBRID else choose(ranked)
        return Estimate(best, cands, ranked, target_phi, f0_spec)

    def refine(self, nu: np.ndarray, target: torch.Tensor, method: RefineMethod, loss: Loss,
               deadline: float, t: dict[str, float], reserve_s: float = _SCORE_RESERVE_S
               ) -> RefineResult:
        """Refine ``nu [5]`` until ``deadline`` less ``reserve_s`` (scoring's share).

        Returns a :class:`matcher.refine.RefineResult`; with no time left it
        evaluates the start only (0 iterations).
        """
        phi = self.jtfs.phi if (method is RefineMethod.LM or loss is Loss.JTFS) else None
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
              jtfs: float = math.nan, target_phi: torch.Tensor | None = None,
              mss: float = math.nan) -> tuple[float, float]:
        """``(JTFS, MSS)`` distances of ``nu``'s render to the target; a distance
        already measured (``jtfs``, ``mss``: not NaN) is not measured again (its
        stages are then timed at what they cost: nothing)."""
        known = not (math.isnan(jtfs) or math.isnan(mss))
        with self._timer(t, "render"):
            est = None if known else self.render_nu(nu)
        with self._timer(t, "distances"), torch.no_grad():
            if est is None:
                return jtfs, mss
            if math.isnan(jtfs) and target_phi is None:
                return self.distances(est[0], target[0])
            if math.isnan(jtfs):
                jtfs = float(torch.linalg.vector_norm(self.jtfs.phi(est) - target_phi))
            if math.isnan(mss):
                mss = float(multiscale_spectral_distance(est, target, reduction="none")[0])
        return jtfs, mss

    def render(self, result: MatchResult) -> np.ndarray:
        """Model-side audio of a match: float32 ``[n_samples]`` at ``audio_config.sr`` Hz, peak 1."""
        nu = np.asarray(result.nu, dtype=np.float64)
        if nu.shape != (5,) or not np.isfinite(nu).all() or np.abs(nu).max() > 1:
            raise ValueError(f"result.nu = {result.nu!r}: allowed 5 finite values in [-1, 1]")
        return self.render_nu(nu)[0].cpu().numpy()

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
    def render_batch(self, nu: torch.Tensor) -> torch.Tensor:
        """``nu [B, 5]`` float64 on the device -> float32 ``[B, n_samples]`` (peak 1)."""
        return self.twin.from_nu(nu).to(torch.float32)

    @torch.no_grad()
    def render_nu(self, nu: np.ndarray) -> torch.Tensor:
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
