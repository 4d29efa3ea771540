"""Nearest-neighbour baseline: the closest synthesized sound in JTFS space.

What a user would otherwise reach for: render a set of parameter points once,
store their JTFS features, and answer a query with the stored point whose
features are nearest (Euclidean, i.e. the JTFS distance). Its cost grows with
the set and its precision is the set's spacing; the encoder has neither limit.

An index is one ``.npz`` (no pickles): ``nu [K, 5]`` float64, ``phi [K, P]``
float32, and a JSON header with the JTFS configuration, rate and length,
which a query must match. ``tympan train nn-index`` builds one over a
protocol split.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synth.export import atomic_write
from synth.twin import MembraneTwin

from .jtfs import JTFS, JTFSConfig

__all__ = ["NNIndex", "NN_FORMAT"]

NN_FORMAT = "tympan-nn-index"


class NNIndex:
    """Stored JTFS features of rendered points, queried by Euclidean distance.

    Parameters
    ----------
    nu : np.ndarray ``[K, 5]``
    phi : np.ndarray ``[K, P]``
    header : dict
        ``format``, ``jtfs`` (a JTFSConfig as a dict), ``sr``, ``n_samples``, ``source``.
    """

    def __init__(self, nu: np.ndarray, phi: np.ndarray, header: dict[str, Any]):
        if nu.ndim != 2 or nu.shape[1] != 5 or phi.shape[0] != nu.shape[0] or len(nu) == 0:
            raise ValueError(f"index arrays nu {nu.shape} and phi {phi.shape}: expected [K, 5] "
                             "and [K, P] with K >= 1")
        self.nu = nu.astype(np.float64)
        self.phi = torch.as_tensor(phi, dtype=torch.float32)
        self.header = header

    @classmethod
    def build(cls, nu: np.ndarray, jtfs: JTFSConfig, batch: int = 8, device: str = "cpu",
              progress: bool = True, source: str = "") -> "NNIndex":
        """Render every row of ``nu`` (``[K, 5]``) and store its JTFS ``Phi``."""
        from tqdm import tqdm

        nu = np.asarray(nu, dtype=np.float64)
        twin = MembraneTwin(jtfs.sr, jtfs.N).to(device)
        phi_fn = JTFS(jtfs).to(device).phi
        out = []
        with torch.no_grad(), tqdm(total=len(nu), unit="sound", desc="nn index",
                                   disable=not progress) as bar:
            for s in range(0, len(nu), batch):
                part = torch.as_tensor(nu[s:s + batch], dtype=torch.float32, device=device)
                out.append(phi_fn(twin.from_nu(part)).cpu())
                bar.update(len(part))
        header = {"format": NN_FORMAT, "jtfs": asdict(jtfs), "sr": jtfs.sr, "n_samples": jtfs.N,
                  "source": source}
        return cls(nu, torch.cat(out).numpy(), header)

    def save(self, path: str | Path) -> Path:
        """Write atomically (``.npz``, no pickles)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda f: np.savez(f, nu=self.nu, phi=self.phi.numpy(),
                                                     header=np.array(json.dumps(self.header))))

    @classmethod
    def load(cls, path: str | Path) -> "NNIndex":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"nearest-neighbour index {path} does not exist; build one with "
                             "'tympan train nn-index --out FILE'")
        try:
            with np.load(path, allow_pickle=False) as f:
                nu, phi, header = f["nu"], f["phi"], json.loads(str(f["header"]))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path} is not a nearest-neighbour index ({err})") from None
        if header.get("format") != NN_FORMAT:
            raise ValueError(f"{path} is not a nearest-neighbour index (format "
                             f"{header.get('format')!r})")
        return cls(nu, phi, header)

    def check(self, jtfs: JTFSConfig) -> None:
        """Raise ValueError unless the index was built with this JTFS configuration."""
        if self.header["jtfs"] != json.loads(json.dumps(asdict(jtfs))):
            raise ValueError(f"the index was built with JTFS {self.header['jtfs']}, the query "
                             f"uses {asdict(jtfs)}: build an index for this model's length/rate")

    def query(self, phi: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Nearest stored points of ``phi`` ``[B, P]``: ``(nu [B, 5], distance [B])``."""
        q = phi.detach().to("cpu", torch.float32)
        if q.dim() != 2 or q.shape[1] != self.phi.shape[1]:
            raise ValueError(f"query features {tuple(q.shape)}: expected [B, {self.phi.shape[1]}]")
        d = torch.cdist(q.double(), self.phi.double())          # [B, K]
        dist, idx = d.min(dim=1)
        return self.nu[idx.numpy()], dist.numpy()

    def __len__(self) -> int:
        return len(self.nu)
