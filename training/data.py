"""Training data, made on the fly: cell ids -> theta -> twin audio -> CQT features (+ M).

No audio is stored. A split's cells come from :class:`training.protocol.Protocol`;
each step renders its batch with the torch twin on the training device and
computes the encoder's features there. The PNP metric ``M`` of each target is
looked up in the precomputed file of its split (:class:`MetricTable`).

Order: epoch ``e`` visits the run's cells in a permutation seeded by
``(seed, e)``, cut into batches; under DDP rank ``r`` of ``w`` takes every
``w``-th batch. The order is a pure function of the seed, the epoch and the
batch index, which is what makes resuming exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from matcher.features import CQTFeatures
from synth.files import atomic_savez
from synth.twin import MembraneTwin, clamp_nu

from .augment import Augmenter
from .config import TrainConfig
from .metric_job import check_sha256, sha256_path
from .phi import build_phi
from .shard_headers import json_array

__all__ = ["Split", "Renderer", "MetricTable", "run_phi"]


class Split:
    """The cells one run uses from one split, and their per-epoch batch order.

    Parameters
    ----------
    cfg : TrainConfig
    split : {"train", "val", "test"}
    limit : int
        Use a seeded subset of this many cells (0: the whole split).
    """

    def __init__(self, cfg: TrainConfig, split: str, limit: int = 0):
        protocol = cfg.data.protocol
        ids = protocol.subset(split, limit)
        self.name = split
        self.protocol = protocol
        self.ids = ids
        self.seed = cfg.seed
        self.batch_size = cfg.data.batch_size

    def __len__(self) -> int:
        return len(self.ids)

    def n_batches(self, world: int = 1, drop_last: bool = True) -> int:
        """Batches per rank per epoch."""
        full = len(self.ids) // self.batch_size if drop_last else -(-len(self.ids) // self.batch_size)
        return full // world if drop_last else -(-full // world)

    def epoch_batches(self, epoch: int, rank: int = 0, world: int = 1, start: int = 0,
                      shuffle: bool = True, drop_last: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(batch index, cell ids)`` of this rank, from batch ``start`` on."""
        if shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.ids)
        else:
            order = self.ids
        n = self.n_batches(world, drop_last)
        for i in range(start, n):
            j = i * world + rank
            chunk = order[j * self.batch_size:(j + 1) * self.batch_size]
            if len(chunk):
                yield i, chunk


class Renderer(torch.nn.Module):
    """Cell ids -> a training batch on the device.

    Returns dicts with ``ids`` ``[B]`` (numpy), ``nu`` ``[B, 5]`` float32,
    ``audio`` ``[B, N]`` float32 (peak-normalized), ``x`` ``[B, 1, bins,
    frames]`` float32 features. With an ``augment`` key (training batches) and
    an active ``[augment]`` table, ``audio`` and ``x`` are of the augmented
    sound (:mod:`training.augment`); ``nu`` stays the label.
    """

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.protocol = cfg.data.protocol
        self.twin = MembraneTwin(cfg.data.sr, cfg.data.n_samples)
        self.features = CQTFeatures(cfg.features)
        self.augment = cfg.augment
        self._augmenter: Augmenter | None = None

    @torch.no_grad()
    def forward(self, ids: np.ndarray, augment: tuple[int, ...] | None = None) -> dict[str, Any]:
        dev = self.features.idx.device
        nu = torch.as_tensor(self.protocol.nu(ids), dtype=torch.float64, device=dev)
        audio = self.twin.from_nu(nu).to(torch.float32)
        if augment is not None and self.augment.active:
            if self._augmenter is None or self._augmenter.device != audio.device:
                self._augmenter = Augmenter(self.augment, self.twin.sr, audio.device)
            audio, _ = self._augmenter(audio, augment)
        return {"ids": ids, "nu": nu.to(torch.float32), "audio": audio,
                "x": self.features(audio)[:, None]}


    def render_nu(self, nu_hat: torch.Tensor) -> torch.Tensor:
        """Differentiable render of estimates ``[B, 5]``, clamped first (:func:`clamp_nu`)."""
        return self.twin.from_nu(clamp_nu(nu_hat))


def run_phi(cfg: TrainConfig, device: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The representation of the run's metric (``cfg.metric.phi``) on ``device``."""
    return build_phi(cfg.metric.phi, cfg.data.n_samples, cfg.jtfs_config, device)


class MetricTable:
    """``M`` of a split's cells, from ``{dir}/metric-{split}.npz``.

    With ``cfg.metric.compute_missing`` the cells absent from the file are
    computed here (forward-mode Jacobians of ``Phi``) and the file rewritten
    atomically with the union: small runs need no separate metric job.
    """

    def __init__(self, cfg: TrainConfig, split: str, need: np.ndarray, device: Any = "cpu",
                 progress: bool = True):
        self.path = Path(cfg.metric.dir) / f"metric-{split}.npz"
        ids, M, header = self._read(cfg)
        missing = np.setdiff1d(need, ids)
        if len(missing):
            if not cfg.metric.compute_missing:
                raise ValueError(
                    f"the metric of {len(missing)} of the run's {len(need)} {split} cells is not in "
                    f"{self.path}; compute it with 'tympan train metric --split {split} --out "
                    f"{cfg.metric.dir}' and 'tympan train merge-metric --split {split} --out "
                    f"{cfg.metric.dir}', or set [metric] compute_missing = true (small runs)")
            new = self._compute(cfg, missing, device, progress)
            ids = np.concatenate([ids, missing])
            M = np.concatenate([M, new])
            order = np.argsort(ids)
            ids, M = ids[order], M[order]
            header = self._header(cfg)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            protocol = cfg.data.protocol
            atomic_savez(self.path, cell_ids=ids, nu=protocol.nu(ids), theta=protocol.theta(ids),
                         M=M, eigvals=np.linalg.eigvalsh(M), header=json_array(header))
            sha256_path(self.path).unlink(missing_ok=True)     # the sum was the old file's
        self.ids = ids
        self.M = torch.as_tensor(M, dtype=torch.float32)

    def lookup(self, ids: np.ndarray) -> torch.Tensor:
        """``M`` of these cells, ``[B, 5, 5]`` float32 (CPU)."""
        pos = np.searchsorted(self.ids, ids)
        return self.M[torch.as_tensor(pos)]

    @staticmethod
    def _header(cfg: TrainConfig) -> dict[str, Any]:
        return {"phi": cfg.metric.phi, "sr": cfg.data.sr, "n_samples": cfg.data.n_samples,
                "protocol": cfg.data.protocol.to_dict(),
                "jtfs": {k: v for k, v in cfg.jtfs.items()}}

    def _read(self, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if not self.path.exists():
            return np.zeros(0, np.int64), np.zeros((0, 5, 5)), {}
        check_sha256(self.path)
        try:
            with np.load(self.path, allow_pickle=False) as f:
                ids, M, header = f["cell_ids"], f["M"], json.loads(str(f["header"]))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot read the metric file {self.path}: {err}") from None
        for key in ("phi", "sr", "n_samples", "protocol"):
            if key in header and header[key] != self._header(cfg)[key]:
                raise ValueError(f"{self.path} was computed with {key} = {header[key]!r}, this run "
                                 f"uses {self._header(cfg)[key]!r}: point [metric] dir elsewhere")
        return ids.astype(np.int64), M.astype(np.float64), header

    def _compute(self, cfg: TrainConfig, ids: np.ndarray, device: Any, progress: bool) -> np.ndarray:
        from tqdm import tqdm

        from matcher.metric import metric
        twin = MembraneTwin(cfg.data.sr, cfg.data.n_samples).to(device)
        phi = run_phi(cfg, device)
        nu = cfg.data.protocol.nu(ids)
        out = []
        with tqdm(total=len(ids), unit="sound", desc="metric", disable=not progress) as bar:
            for s in range(0, len(ids), 8):
                part = torch.as_tensor(nu[s:s + 8], dtype=torch.float32, device=device)
                out.append(metric(part, twin, phi)[0].cpu().numpy())
                bar.update(len(part))
        return np.concatenate(out).astype(np.float64)
