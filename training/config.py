"""Training run configuration: one TOML file per run, read into a frozen :class:`TrainConfig`.

A file has top-level keys (``name``, ``seed``, ``loss``, ``pitch_known``) and
the tables ``[data]``, ``[features]``, ``[augment]``, ``[finetune]``, ``[optim]``,
``[damping]``, ``[metric]``, ``[jtfs]``, ``[log]``; every key is optional and defaults to the reference run.
Unknown keys are errors (a typo must not silently train the wrong model).
See ``configs/README.md`` for the shipped runs.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from matcher.features import FeatureConfig

from .augment import AugmentConfig
from .damping import make_damping
from .finetune import FinetuneConfig
from .phi import PHIS
from .protocol import Protocol

__all__ = ["LOSSES", "TrainConfig", "DataConfig", "OptimConfig", "MetricConfig",
           "LogConfig", "load_config", "read_toml"]

LOSSES = ("p", "pnp", "mss", "jtfs")


def _positive_int(owner: str, name: str, v: Any, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"[{owner}] {name} = {v!r}: allowed integers >= {low}")


def _positive_float(owner: str, name: str, v: Any, zero_ok: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (v == 0 and not zero_ok):
        raise ValueError(f"[{owner}] {name} = {v!r}: allowed a {'non-negative' if zero_ok else 'positive'} number")


@dataclass(frozen=True)
class DataConfig:
    """Which sounds, how long, how many per step.

    ``n_train`` / ``n_val``: the first that many cells of the (shuffled,
    seeded) split; 0 means the whole split. ``sr`` / ``n_samples``: the twin's
    rate (Hz) and length (samples); the features must use the same values.
    """

    cells: int = 10
    protocol_seed: int = 0
    n_train: int = 0
    n_val: int = 0
    batch_size: int = 32
    sr: float = 22050.0
    n_samples: int = 2**16

    def __post_init__(self) -> None:
        for name in ("cells", "batch_size", "n_samples"):
            _positive_int("data", name, getattr(self, name))
        for name in ("n_train", "n_val", "protocol_seed"):
            _positive_int("data", name, getattr(self, name), zero_ok=True)
        _positive_float("data", "sr", self.sr)

    @property
    def protocol(self) -> Protocol:
        return Protocol(cells=self.cells, seed=self.protocol_seed)


@dataclass(frozen=True)
class OptimConfig:
    """Adam with optional cosine decay. ``max_steps`` > 0 stops early (tiny runs, benchmarks);
    ``max_seconds`` > 0 stops at the first step past that much training time
    (time-boxed runs on a lent GPU; the schedule still spans ``epochs``)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 30
    max_steps: int = 0
    schedule: str = "constant"     # or "cosine" (to 0 over all steps)
    grad_clip: float = 0.0         # 0: off
    max_seconds: float = 0.0       # 0: off

    def __post_init__(self) -> None:
        _positive_float("optim", "lr", self.lr)
        _positive_float("optim", "max_seconds", self.max_seconds, zero_ok=True)
        _positive_float("optim", "weight_decay", self.weight_decay, zero_ok=True)
        _positive_float("optim", "grad_clip", self.grad_clip, zero_ok=True)
        _positive_int("optim", "epochs", self.epochs)
        _positive_int("optim", "max_steps", self.max_steps, zero_ok=True)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"[optim] schedule = {self.schedule!r}: allowed 'constant', 'cosine'")


@dataclass(frozen=True)
class MetricConfig:
    """Where the PNP metric comes from.

    ``dir`` holds ``metric-train.npz`` and ``metric-val.npz`` (from ``tympan
    train metric`` then ``merge-metric``). With ``compute_missing`` a run whose
    files are absent computes ``M`` for its own cells with ``phi`` and stores
    them in ``dir`` (small runs only: the JTFS metric costs about 3 s per sound
    on a CPU).
    """

    dir: str = "runs/metric"
    phi: str = "jtfs"
    compute_missing: bool = False

    def __post_init__(self) -> None:
        if self.phi.split(":", 1)[0] not in PHIS:
            raise ValueError(f"[metric] phi = {self.phi!r}: allowed {', '.join(map(repr, PHIS))}")


@dataclass(frozen=True)
class LogConfig:
    """Run directory is ``dir/name``; a checkpoint every ``ckpt_every`` steps and each epoch."""

    dir: str = "runs"
    every: int = 10
    ckpt_every: int = 200
    monitor: str = "val_loss"      # or "val_p": what "best" and adaptive damping watch
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        _positive_int("log", "every", self.every)
        _positive_int("log", "ckpt_every", self.ckpt_every)
        if self.monitor not in ("val_loss", "val_p"):
            raise ValueError(f"[log] monitor = {self.monitor!r}: allowed 'val_loss', 'val_p'")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (stored in its checkpoints and export)."""

    name: str = "run"
    seed: int = 0
    loss: str = "p"
    pitch_known: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    damping: dict[str, Any] = field(default_factory=lambda: {"kind": "constant", "lam": 0.0})
    metric: MetricConfig = field(default_factory=MetricConfig)
    jtfs: dict[str, Any] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss = {self.loss!r}: allowed {', '.join(LOSSES)}")
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"name = {self.name!r}: allowed a non-empty name without '/'")
        _positive_int("run", "seed", self.seed, zero_ok=True)
        if (self.features.sr, self.features.n_samples) != (self.data.sr, self.data.n_samples):
            raise ValueError(f"[features] sr/n_samples ({self.features.sr}, {self.features.n_samples}) "
                             f"differ from [data] ({self.data.sr}, {self.data.n_samples}): "
                             "set both to the same values")
        make_damping(dict(self.damping))      # checks kind and options
        if self.finetune.active and self.pitch_known:
            raise ValueError("[finetune] needs pitch_known = false: a recording comes with no "
                             "known fundamental")
        self.jtfs_config()                    # checks the JTFS overrides

    @property
    def run_dir(self) -> Path:
        return Path(self.log.dir) / self.name

    def jtfs_config(self) -> Any:
        """The JTFS of the ``jtfs`` loss and of metric computation: reference, overridden."""
        from matcher.jtfs import JTFSConfig
        known = {f.name for f in fields(JTFSConfig)}
        unknown = sorted(set(self.jtfs) - known)
        if unknown:
            raise ValueError(f"[jtfs] unknown keys {unknown}; allowed: {sorted(known)}")
        base = JTFSConfig.reference(self.data.n_samples, self.data.sr)
        return replace(base, **self.jtfs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        top = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - top)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(top)}")
        sub = {"data": DataConfig, "features": FeatureConfig, "optim": OptimConfig,
               "metric": MetricConfig, "log": LogConfig}
        for key, kind in sub.items():
            if key in d:
                table = d[key]
                if not isinstance(table, Mapping):
                    raise ValueError(f"[{key}] must be a table of settings, got {table!r}")
                allowed = {f.name for f in fields(kind)}
                bad = sorted(set(table) - allowed)
                if bad:
                    raise ValueError(f"[{key}] unknown keys {bad}; allowed: {sorted(allowed)}")
                d[key] = kind(**table)
        if "augment" in d:
            if not isinstance(d["augment"], Mapping):
                raise ValueError(f"[augment] must be a table of settings, got {d['augment']!r}")
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        if "finetune" in d:
            if not isinstance(d["finetune"], Mapping):
                raise ValueError(f"[finetune] must be a table of settings, got {d['finetune']!r}")
            d["finetune"] = FinetuneConfig.from_dict(d["finetune"])
        if "features" not in d and "data" in d:   # features follow the data's rate and length
            d["features"] = FeatureConfig(sr=d["data"].sr, n_samples=d["data"].n_samples)
        for key in ("damping", "jtfs"):
            if key in d and not isinstance(d[key], Mapping):
                raise ValueError(f"[{key}] must be a table of settings, got {d[key]!r}")
            if key in d:
                d[key] = dict(d[key])
        return cls(**d)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; ValueError naming ``what`` when it is absent or not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what} {path} is not valid TOML: {err}") from None


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a TOML run file; ``overrides`` replace top-level fields (e.g. ``name``)."""
    path = Path(path)
    raw = read_toml(path)
    raw.update(overrides)
    try:
        return TrainConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
