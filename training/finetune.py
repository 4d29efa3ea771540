"""Fine-tuning on recorded hits without labels: the ``[finetune]`` table of a run file.

A recording has no parameters to learn from, but it has a sound. Each training
step adds, beside the run's supervised loss on its synthetic batch, a batch of
recorded hits from the *fine-tuning* halves of ``configs/real-hits.toml``: the
encoder estimates their parameters, the differentiable twin renders the
estimates, and the multi-scale spectral (or JTFS) distance between render and
recording is the loss, weighted by ``weight``. The supervised term keeps the
estimates physical; the perceptual one pulls them towards what a microphone
heard. The *validation* halves are only measured (``real_val`` in
``metrics.csv``), never trained on and never used to choose a checkpoint.

A ``teacher`` adds pseudo-labels: the parameters the match search found for each
fine-tuning hit (``tympan train teacher``, :mod:`training.teacher`), pulled into
the encoder by the P loss, weighted by ``teacher_weight``.

Hits are prepared as :func:`matcher.audio.load_hit` prepares a dragged-in file
(onset, pre-roll, resampling, peak 1), once per run.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

__all__ = ["FinetuneConfig", "RealSet", "checkout_path", "read_real_sets", "read_teacher",
           "RealHits", "DISTANCES"]

DISTANCES = ("mss", "jtfs")
HALVES = ("finetune", "validation")
ROOT = Path(__file__).resolve().parents[1]


def checkout_path(path: str | Path) -> Path:
    """``path`` as given when absolute or found from the working directory, else
    from the checkout: run files name the project's files (``configs/...``,
    ``runs/...``) relative to it, and are run from anywhere."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else ROOT / path


@dataclass(frozen=True)
class FinetuneConfig:
    """The ``[finetune]`` table; ``hits = ""`` (the default) is off.

    Parameters
    ----------
    hits : str
        The recorded sets and their halves (TOML; relative paths from the checkout).
    weight : float
        Weight of the perceptual term beside the supervised loss.
    batch : int
        Recorded hits per step (drawn from the fine-tuning halves, seeded by the step).
    distance : {"mss", "jtfs"}
        Render-to-recording distance of the perceptual term.
    init : str
        A ``.tympan`` model whose weights the run starts from ("": from scratch); also
        honoured when ``hits`` is empty (a supervised run from a shipped model).
    freeze_bn : bool
        Keep batch norm in eval mode while training (its statistics stay the
        initial model's; the usual choice when fine-tuning on small batches).
    teacher : str
        Pseudo-labels of the fine-tuning hits (``tympan train teacher``: the match
        search's parameters for each, an ``.npz``); "" (the default) is none.
    teacher_weight : float
        Weight of the P loss between the encoder's estimate of a fine-tuning hit and
        its pseudo-label (the search distilled into the encoder).
    """

    hits: str = ""
    weight: float = 1.0
    batch: int = 8
    distance: str = "mss"
    init: str = ""
    freeze_bn: bool = True
    teacher: str = ""
    teacher_weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_bn, bool):
            raise ValueError(f"[finetune] freeze_bn = {self.freeze_bn!r}: allowed true or false")
        if not all(isinstance(p, str) for p in (self.hits, self.init, self.teacher)):
            raise ValueError("[finetune] hits, init and teacher are paths (strings)")
        for key in ("weight", "teacher_weight"):
            w = getattr(self, key)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
                raise ValueError(f"[finetune] {key} = {w!r}: allowed a number >= 0")
        if self.teacher and not self.hits:
            raise ValueError("[finetune] teacher needs hits: its labels are of the hits' "
                             "fine-tuning halves")
        if self.hits and self.weight == 0 and not (self.teacher and self.teacher_weight > 0):
            raise ValueError("[finetune] weight = 0 leaves nothing to learn from the hits: "
                             "give weight > 0, or a teacher with teacher_weight > 0")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"[finetune] batch = {self.batch!r}: allowed integers >= 1")
        if self.distance not in DISTANCES:
            raise ValueError(f"[finetune] distance = {self.distance!r}: allowed "
                             f"{', '.join(map(repr, DISTANCES))}")

    @property
    def active(self) -> bool:
        return bool(self.hits)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FinetuneConfig":
        allowed = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - allowed)
        if bad:
            raise ValueError(f"[finetune] unknown keys {bad}; allowed: {sorted(allowed)}")
        return cls(**d)


@dataclass(frozen=True)
class RealSet:
    """One recorded set: where its files are, the Debian package holding them, its halves."""

    name: str
    folder: Path
    package: str
    finetune: tuple[str, ...]
    validation: tuple[str, ...]

    def files(self, half: str) -> list[Path]:
        """The half's files; a missing one is a ValueError naming the package."""
        if half not in HALVES:
            raise ValueError(f"half {half!r}: allowed {', '.join(HALVES)}")
        paths = [self.folder / n for n in getattr(self, half)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"{len(missing)} of {len(paths)} {self.name} hits missing in "
                             f"{self.folder} (first: {missing[0]}): install Debian's "
                             f"{self.package} (apt-get install {self.package}; `make install` does)")
        return paths


def read_real_sets(path: str | Path) -> dict[str, RealSet]:
    """The sets of a real-hits file (``configs/real-hits.toml``), checked.

    Each table needs ``folder``, ``package`` and non-empty, disjoint ``finetune``
    and ``validation`` lists of file names.
    """
    path = checkout_path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"real-hits file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"real-hits file {path} is not valid TOML: {err}") from None
    sets = {}
    for name, t in raw.items():
        where = f"{path} [{name}]"
        if not isinstance(t, dict) or set(t) != {"folder", "package", *HALVES}:
            raise ValueError(f"{where}: needs exactly folder, package, finetune, validation")
        halves = {h: t[h] for h in HALVES}
        for h, names in halves.items():
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{where} {h}: allowed a non-empty list of file names")
        both = sorted(set(halves["finetune"]) & set(halves["validation"]))
        if both:
            raise ValueError(f"{where}: {both[0]} is in both halves; a file is in one only")
        sets[name] = RealSet(name, Path(t["folder"]), str(t["package"]),
                             tuple(halves["finetune"]), tuple(halves["validation"]))
    if not sets:
        raise ValueError(f"real-hits file {path} lists no set")
    return sets


def read_teacher(path: str | Path, names: list[str]) -> np.ndarray:
    """The pseudo-labels of ``names`` (``"folder/file"``, the fine-tuning hits) from a
    teacher file (``tympan train teacher``), in that order: ``[len(names), 5]`` nu.

    Raises
    ------
    ValueError
        Missing or unreadable file, a hit it does not label, labels not finite or
        outside [-1, 1].
    """
    path = checkout_path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            have = [str(n) for n in z["names"]]
            nu = np.asarray(z["nu"], dtype=np.float32)
    except FileNotFoundError:
        raise ValueError(f"[finetune] teacher = {path}: no such file; write it with "
                         "'tympan train teacher'") from None
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"[finetune] teacher = {path}: not a teacher file with names and nu "
                         f"({err})") from None
    if nu.ndim != 2 or nu.shape != (len(have), 5):
        raise ValueError(f"[finetune] teacher = {path}: nu has shape {nu.shape}, allowed "
                         f"[{len(have)}, 5] (one row per name)")
    if not np.all(np.isfinite(nu)) or np.abs(nu).max() > 1:
        raise ValueError(f"[finetune] teacher = {path}: labels must be finite and in [-1, 1] (nu)")
    row = {n: i for i, n in enumerate(have)}
    missing = [n for n in names if n not in row]
    if missing:
        raise ValueError(f"[finetune] teacher = {path}: {len(missing)} fine-tuning hits have no "
                         f"label (first: {missing[0]}); remake it for these hits")
    return nu[[row[n] for n in names]]


class RealHits:
    """The run's recorded hits on the training device: audio, features, distance.

    Parameters
    ----------
    cfg : FinetuneConfig
    sr : float
    n_samples : int
    features : torch.nn.Module
        The run's CQT front end (``[B, N] -> [B, bins, frames]``).
    render : callable
        Differentiable ``nu_hat [B, 5] -> audio [B, N]`` (the renderer's ``render_nu``).
    phi : callable, optional
        JTFS features ``[B, N] -> [B, P]``; needed when ``distance`` is "jtfs".
    seed : int
        With the step, seeds which hits a step draws.
    """

    def __init__(self, cfg: FinetuneConfig, sr: float, n_samples: int, features: torch.nn.Module,
                 render: Callable[[torch.Tensor], torch.Tensor],
                 phi: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0):
        from matcher.audio import AudioConfig, load_hit

        if cfg.distance == "jtfs" and phi is None:
            raise ValueError("[finetune] distance = 'jtfs' needs the run's JTFS")
        self.cfg, self.render, self.phi, self.seed = cfg, render, phi, seed
        audio_cfg = AudioConfig(sr=sr, n_samples=n_samples)
        dev = next(iter(features.buffers())).device
        self.audio: dict[str, torch.Tensor] = {}
        self.x: dict[str, torch.Tensor] = {}
        self.names: dict[str, list[str]] = {}
        sets = read_real_sets(cfg.hits)
        for half in HALVES:
            paths = [p for s in sets.values() for p in s.files(half)]
            a = np.stack([load_hit(p, audio_cfg).audio for p in paths])
            self.audio[half] = torch.as_tensor(a, device=dev)
            with torch.no_grad():
                self.x[half] = features(self.audio[half])[:, None]
            self.names[half] = [f"{p.parent.name}/{p.name}" for p in paths]
        self.teacher: torch.Tensor | None = None
        if cfg.teacher:
            self.teacher = torch.as_tensor(read_teacher(cfg.teacher, self.names["finetune"]),
                                           device=dev)

    def __len__(self) -> int:
        return len(self.names["finetune"])

    def batch(self, step: int) -> np.ndarray:
        """Indices of the fine-tuning hits of ``step`` (seeded; without repeats in a step)."""
        rng = np.random.default_rng([self.seed, 7177, step])
        n = len(self)
        return rng.choice(n, size=min(self.cfg.batch, n), replace=False)

    def distance(self, nu_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean render-to-recording distance of estimates ``[B, 5]`` and recordings ``[B, N]``."""
        from matcher.distances import multiscale_spectral_distance

        y = self.render(nu_hat)
        if self.cfg.distance == "mss":
            return multiscale_spectral_distance(y, target.to(y.dtype))
        d = self.phi(y) - self.phi(target.to(y.dtype))
        return 0.5 * (d * d).sum(-1).mean()

    def loss(self, step: int, predict: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The recorded hits' term of ``step``, weighted: ``weight`` x the render-to-recording
        distance plus ``teacher_weight`` x the P loss to the pseudo-labels (when a teacher
        is given). ``predict`` maps features to ``nu_hat``."""
        from .losses import p_loss

        idx = torch.as_tensor(self.batch(step), device=self.x["finetune"].device)
        nu_hat = predict(self.x["finetune"][idx])
        total = nu_hat.new_zeros(())
        if self.cfg.weight > 0:       # rendering is the costly part: skipped when unweighted
            total = total + self.cfg.weight * self.distance(nu_hat, self.audio["finetune"][idx])
        if self.teacher is not None and self.cfg.teacher_weight > 0:
            label = self.teacher[idx].to(nu_hat.dtype)
            total = total + self.cfg.teacher_weight * p_loss(nu_hat, label)
        return total

    @torch.no_grad()
    def score(self, predict: Callable[[torch.Tensor], torch.Tensor], chunk: int = 8
              ) -> dict[str, float]:
        """Mean distance over each half: ``{"real_ft": ..., "real_val": ...}``."""
        out = {}
        for half, key in (("finetune", "real_ft"), ("validation", "real_val")):
            x, a = self.x[half], self.audio[half]
            total = 0.0
            for s in range(0, len(a), chunk):
                total += float(self.distance(predict(x[s:s + chunk]), a[s:s + chunk])) * len(a[s:s + chunk])
            out[key] = total / len(a)
        return out
