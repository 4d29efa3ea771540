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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from synth.params import NAMES, PARAMS, check_value, clamp_theta, nu_to_theta, theta_to_nu
from synth.twin import MembraneTwin

from .audio import AudioConfig, Hit, load_hit
from .distances import jtfs_distance, multiscale_spectral_distance
from .jtfs import JTFS, JTFSConfig
from .metric import metric
from .refine import refine as refine_nu
from .model import DEFAULT_MODEL, MatcherModel
from .nn import NNIndex

__all__ = ["MatchResult", "Matcher", "determination", "metric"]

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
        Where the parameters came from: ``encoder`` or ``nn`` (with
        ``method="hybrid"``, the closer of the two).
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
        if self.estimate != "encoder":
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


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: allowed 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is visible; use 'cpu'")
    return dev


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
                 nn_index: str | Path | None = None) -> None:
        self.device = _device(device)
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
            self.jtfs_config = replace(JTFSConfig.reference(), N=int(fc.n_samples), sr=float(fc.sr))
        except ValueError as err:
            raise ValueError(f"{path}: model length {fc.n_samples} samples does not fit the "
                             f"reference JTFS ({err})") from None
        self._jtfs: JTFS | None = None
        self._warm: set[tuple[str, str]] = set()   # refinement paths already run once
        self.nn: NNIndex | None = None
        if nn_index is not None:          # the baseline: checked against this model's JTFS now
            self.nn = NNIndex.load(nn_index)
            self.nn.check(self.jtfs_config)

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
                  budget_ms: float = 1000.0, method: str = "encoder",
                  score: bool = True) -> MatchResult:
        """Match a prepared hit.

        Parameters
        ----------
        hit : Hit
            Prepared with :attr:`audio_config` (``hit.audio``: ``[n_samples]`` at the model's rate).
        determine : bool
            Also compute :attr:`MatchResult.determination` (seconds on a CPU).
        f0_hz : float, optional
            The hit's fundamental, Hz, in ``[40, 1000]``. Required by a
            pitch-known model (its encoder takes f0 as given); for a model
            that estimates f0, it replaces the estimate.
        refine : {None, "adam", "lm"}
            Test-time refinement of the encoder's estimate (:mod:`matcher.refine`);
            with ``f0_hz`` given, f0 is set back to it afterwards.
        refine_loss : {"mss", "jtfs"}
            The distance ``adam`` descends (``lm`` uses the JTFS residual).
        budget_ms : float
            Time allowed to refinement, ms.
        method : {"encoder", "nn", "hybrid"}
            The estimate: the encoder; the nearest point of the
            nearest-neighbour index given to the constructor (the baseline);
            or whichever of those two renders closer to the hit in JTFS
            distance (:attr:`MatchResult.estimate` says which; refinement
            starts from it).
        score : bool
            Render the match and compute its distances to the target (~1 s on
            a CPU). False leaves both distances NaN: the parameters come back
            at once, and :meth:`score` fills them in later.

        Raises
        ------
        ValueError
            A pitch-known model without ``f0_hz``; ``f0_hz`` out of range; a
            hit of another length.
        """
        n = self.audio_config.n_samples
        audio = np.asarray(hit.audio)
        if audio.shape != (n,):
            raise ValueError(f"{hit.source}: hit of shape {audio.shape}; this model needs "
                             f"[{n}] samples at {self.audio_config.sr:g} Hz (prepare it with "
                             "Matcher.audio_config)")
        f0 = nu_f0 = None
        if f0_hz is not None:
            f0 = check_value("f0", f0_hz, " (f0_hz, the hit's known fundamental)")
            nu_f0 = float(theta_to_nu(np.array([f0, 0.3, 1e-3, 1e-3, 0.5]))[0])
        elif self.model.pitch_known:
            raise ValueError(f"model {self.path} was trained with the pitch known: give the "
                             "hit's fundamental in Hz (f0_hz=..., or --f0 HZ)")
        t: dict[str, float] = {}
        if self.model._features is None or self._jtfs is None:  # first use: timed apart
            with self._timer(t, "setup"):
                _ = self.model.features, self.jtfs                # CQT kernels, JTFS filters
        target = torch.tensor(audio, dtype=torch.float32, device=self.device)[None]  # a copy:
        # hit.audio is read-only, which torch.as_tensor warns about
        if method not in ("encoder", "nn", "hybrid"):
            raise ValueError(f"match method {method!r}: allowed encoder, nn, hybrid")
        if method != "encoder" and self.nn is None:
            raise ValueError(f"method {method!r} needs a nearest-neighbour index (--nn-index "
                             "FILE; 'tympan train nn-index' builds one)")
        chosen = method
        if method in ("encoder", "hybrid"):
            with self._timer(t, "encode"):
                known = None if nu_f0 is None else torch.tensor([nu_f0], device=self.device)
                raw = self.model.predict_nu(target, known if self.model.pitch_known else None)
                raw = raw[0].double().cpu().numpy()
            chosen = "encoder"
        if method in ("nn", "hybrid"):
            with self._timer(t, "search"), torch.no_grad():
                target_phi = self.jtfs.phi(target)
                raw_nn = self.nn.query(target_phi)[0][0]
            if method == "nn":
                raw, chosen = raw_nn, "nn"
            else:
                # Both candidates rendered in one batch; the closer in JTFS distance wins.
                with self._timer(t, "choose"), torch.no_grad():
                    nus = np.stack([_settle(c)[1] for c in (raw, raw_nn)])
                    nu_t = torch.as_tensor(nus, dtype=torch.float64, device=self.device)
                    audio = self.twin.from_nu(nu_t).to(torch.float32)
                    d = torch.linalg.vector_norm(self.jtfs.phi(audio) - target_phi, dim=-1)
                if float(d[1]) < float(d[0]):
                    raw, chosen = raw_nn, "nn"
        theta, nu = _settle(raw, f0)
        refined = None
        if refine is not None:
            phi = self.jtfs.phi if (refine == "lm" or refine_loss == "jtfs") else None
            if (refine, refine_loss) not in self._warm:
                # The first backward pass through the twin builds autograd's and the
                # allocator's caches (~1 s on a CPU): pay it here, timed as setup,
                # so the first hit's budget buys as many steps as the next ones'.
                with self._timer(t, "setup"):
                    refine_nu(nu, target[0], self.twin, method=refine, loss=refine_loss,
                              budget_ms=60_000.0, phi=phi, max_iter=1)
                self._warm.add((refine, refine_loss))
            with self._timer(t, "refine"):
                r = refine_nu(nu, target[0], self.twin, method=refine, loss=refine_loss,
                              budget_ms=budget_ms, phi=phi)
            theta, nu = _settle(r.nu, f0)
            refined = {"method": r.method, "loss": r.loss, "start": r.start, "best": r.best,
                       "iterations": r.iterations, "elapsed_ms": r.elapsed_ms,
                       "started_from": chosen}
        d_jtfs = d_mss = math.nan
        if score:
            with self._timer(t, "render"):
                est = self._render(nu)
            with self._timer(t, "distances"):
                d_jtfs, d_mss = self.distances(est[0], target[0])
        det = None
        if determine:
            with self._timer(t, "metric"):
                nu_t = torch.as_tensor(nu, dtype=torch.float32, device=self.device)[None]
                det = determination(metric(nu_t, self.twin, self.jtfs.phi)[0][0].cpu().numpy())
        t["total"] = sum(t.values())
        return MatchResult(
            source=hit.source, theta=dict(zip(NAMES, map(float, theta))), units=dict(_UNITS),
            nu=[float(v) for v in nu], jtfs_distance=d_jtfs, mss_distance=d_mss,
            determination=det, timings_ms=t, onset_seconds=float(hit.onset_seconds),
            truncated=bool(hit.truncated), refinement=refined, estimate=chosen)

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
