"""Rendered sounds indexed by their JTFS features: candidates for a match.

Two kinds, one file format (``.npz``, no pickles):

``exact``
    ``emb`` is the full JTFS ``Phi`` ``[K, P]`` (float32): the
    nearest-neighbour *baseline* (``tympan train nn-index``, 2000 training
    cells), whose nearest point is the brute-force answer over the set.
``pca``
    ``emb`` is ``Phi`` projected on its ``D`` leading principal axes
    (float16, ``[K, D]``; ``mean [P]`` and ``basis [D, P]`` kept to project a
    query): the *dense* index shipped with the package
    (``matcher/models/default-index.npz``, ``tympan train sound-index``),
    tens of thousands of sounds in a few MB, queried in milliseconds. Its
    Euclidean distances approximate JTFS distances (the residual off the
    ``D`` axes is dropped), so its top ``k`` are re-ranked by the true JTFS
    distance (:mod:`matcher.match`).

The header (JSON) holds the format and version, the kind, the JTFS
configuration, rate and length the sounds were rendered and transformed at
(which a query must match: :meth:`SoundIndex.check`), the sizes, and the
sha256 of the arrays: a truncated or edited file is refused with one line.

Building the dense index takes an hour on 2 CPU cores (a JTFS forward per
sound), so :func:`build_dense` works in resumable shards beside the output.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from synth.files import atomic_write
from synth.twin import MembraneTwin

from .jtfs import JTFS, JTFSConfig

__all__ = ["SoundIndex", "INDEX_FORMAT", "INDEX_VERSION", "DEFAULT_INDEX", "build_dense",
           "dense_points", "index_beside"]

INDEX_FORMAT = "tympan-sound-index"
INDEX_VERSION = 1
_LEGACY_FORMAT = "tympan-nn-index"        # exact indexes written before the rename
DEFAULT_INDEX = Path(__file__).resolve().parent / "models" / "default-index.npz"


def index_beside(model: str | Path) -> Path:
    """Where a model's dense index lives: ``NAME-index.npz`` beside ``NAME.tympan``."""
    model = Path(model)
    return model.with_name(f"{model.stem}-index.npz")
SHARD = 512                                # sounds per resumable shard of a dense build


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class SoundIndex:
    """Rendered points and their (projected) JTFS features.

    Parameters
    ----------
    nu : np.ndarray ``[K, 5]``
        The points, normalized coordinates in ``[-1, 1]``.
    emb : np.ndarray ``[K, D]``
        Their features: ``Phi`` itself (``exact``, ``D = P``) or its PCA
        coordinates (``pca``).
    header : dict
        ``format``, ``version``, ``kind``, ``jtfs`` (a JTFSConfig as a dict),
        ``sr``, ``n_samples``, ``source`` and, for ``pca``, ``explained``
        (fraction of the Phi variance the ``D`` axes keep).
    mean, basis : np.ndarray ``[P]`` and ``[D, P]``, optional
        The projection of a ``pca`` index: ``emb = (Phi - mean) @ basis.T``.
    """

    def __init__(self, nu: np.ndarray, emb: np.ndarray, header: dict[str, Any],
                 mean: np.ndarray | None = None, basis: np.ndarray | None = None):
        if nu.ndim != 2 or nu.shape[1] != 5 or emb.ndim != 2 or emb.shape[0] != nu.shape[0] \
                or len(nu) == 0:
            raise ValueError(f"index arrays nu {nu.shape} and features {emb.shape}: expected "
                             "[K, 5] and [K, D] with K >= 1")
        if (mean is None) != (basis is None) or (basis is not None and (
                basis.shape[0] != emb.shape[1] or mean.shape != (basis.shape[1],))):
            raise ValueError("index projection: mean [P] and basis [D, P] go together, "
                             f"D = {emb.shape[1]}")
        self.nu = np.asarray(nu, dtype=np.float64)
        self.emb = torch.as_tensor(np.asarray(emb, dtype=np.float32))
        # Distances in float64 as |x|^2 - 2 x.q + |q|^2 with |x|^2 kept: one
        # matrix-vector product (~2 ms for 20480 points on 2 loaded cores, where
        # torch.cdist took ~30 ms and converting the table each query more).
        self._emb64 = self.emb.double()
        self._sq = (self._emb64 * self._emb64).sum(1)
        self.header = header
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.basis = None if basis is None else torch.as_tensor(basis, dtype=torch.float32)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, nu: np.ndarray, jtfs: JTFSConfig, batch: int = 8, device: str = "cpu",
              progress: bool = True, source: str = "") -> "SoundIndex":
        """An ``exact`` index: render every row of ``nu`` (``[K, 5]``), store its ``Phi``."""
        nu = np.asarray(nu, dtype=np.float64)
        phi = _render_phi(nu, jtfs, batch, device, progress, "nn index")
        return cls(nu, phi, _header("exact", jtfs, source))

    @classmethod
    def from_phi(cls, nu: np.ndarray, phi: np.ndarray, jtfs: JTFSConfig, dims: int,
                 source: str = "") -> "SoundIndex":
        """A ``pca`` index of ``dims`` axes from the full features ``phi`` ``[K, P]``."""
        phi = np.asarray(phi, dtype=np.float64)
        if not 1 <= dims <= min(phi.shape):
            raise ValueError(f"index dims {dims}: allowed 1..{min(phi.shape)}")
        mean = phi.mean(axis=0)
        _, s, vt = np.linalg.svd(phi - mean, full_matrices=False)
        basis = vt[:dims]
        emb = (phi - mean) @ basis.T
        header = _header("pca", jtfs, source)
        header["explained"] = float((s[:dims] ** 2).sum() / (s ** 2).sum())
        return cls(nu, emb.astype(np.float16), header, mean.astype(np.float32),
                   basis.astype(np.float32))

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write atomically (``.npz``, no pickles), with the arrays' sha256 in the header."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"nu": self.nu.astype(np.float32),
                  "emb": self.emb.numpy().astype(np.float16 if self.kind == "pca" else np.float32)}
        if self.basis is not None:
            arrays.update(mean=self.mean.numpy(), basis=self.basis.numpy())
        header = {**self.header, "size": len(self), "dims": self.dims,
                  "sha256": _digest(*(arrays[k] for k in sorted(arrays)))}
        return atomic_write(path, lambda f: np.savez(f, header=np.array(json.dumps(header)),
                                                     **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "SoundIndex":
        """Read and verify an index.

        Raises
        ------
        ValueError
            One line: missing file, not an index, an unknown version, or
            arrays that do not match the header's sizes or checksum.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"sound index {path} does not exist; build one with 'tympan train "
                             "sound-index --out FILE' (dense; a model's lives beside it as "
                             "NAME-index.npz) or 'tympan train nn-index' (baseline)")
        try:
            with np.load(path, allow_pickle=False) as f:
                header = json.loads(str(f["header"]))
                arrays = {k: f[k] for k in f.files if k != "header"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} is not a sound index ({err})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path} is not a sound index (its header is not an object)")
        if header.get("format") == _LEGACY_FORMAT and "phi" in arrays:
            header = {**header, "format": INDEX_FORMAT, "version": INDEX_VERSION,
                      "kind": "exact"}
            arrays["emb"] = arrays.pop("phi")
        elif header.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path} is not a sound index (format {header.get('format')!r})")
        elif header.get("version") != INDEX_VERSION:
            raise ValueError(f"{path}: sound index version {header.get('version')!r}; this "
                             f"Tympan reads version {INDEX_VERSION}: rebuild it")
        else:
            want = header.get("sha256")
            got = _digest(*(arrays[k] for k in sorted(arrays)))
            if want != got:
                raise ValueError(f"{path}: sound index is corrupt (sha256 of its arrays "
                                 f"{got[:12]}... differs from its header's {str(want)[:12]}...)")
        try:
            index = cls(arrays["nu"], arrays["emb"], header, arrays.get("mean"),
                        arrays.get("basis"))
        except KeyError as err:
            raise ValueError(f"{path}: sound index lacks the array {err}") from None
        for key, value in (("size", len(index)), ("dims", index.dims)):
            if key in header and header[key] != value:
                raise ValueError(f"{path}: sound index header says {key} {header[key]}, "
                                 f"its arrays have {value}")
        return index

    def check(self, jtfs: JTFSConfig) -> None:
        """Raise ValueError unless the index was built with this JTFS configuration."""
        if self.header.get("jtfs") != json.loads(json.dumps(asdict(jtfs))):
            theirs = self.header.get("jtfs") or {}
            raise ValueError(f"the sound index was built for {theirs.get('N')} samples at "
                             f"{theirs.get('sr')} Hz (JTFS {theirs}), the model uses "
                             f"{jtfs.N} at {jtfs.sr:g} Hz: build an index for this model")

    # ------------------------------------------------------------------ queries
    @property
    def kind(self) -> str:
        return "pca" if self.basis is not None else "exact"

    @property
    def dims(self) -> int:
        return int(self.emb.shape[1])

    def embed(self, phi: torch.Tensor) -> torch.Tensor:
        """``Phi`` ``[B, P]`` -> the index's coordinates ``[B, D]`` (float32, CPU)."""
        q = phi.detach().to("cpu", torch.float32)
        p = self.basis.shape[1] if self.basis is not None else self.dims
        if q.dim() != 2 or q.shape[1] != p:
            raise ValueError(f"query features {tuple(q.shape)}: expected [B, {p}]")
        return q if self.basis is None else (q - self.mean) @ self.basis.T

    def query(self, phi: torch.Tensor, k: int = 1,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored points of each query.

        Parameters
        ----------
        phi : torch.Tensor ``[B, P]``
            JTFS features of the queries.
        k : int
            How many (at most the number of points allowed).
        mask : np.ndarray of bool ``[K]``, optional
            Only these points are considered (e.g. those near a pitch).

        Returns
        -------
        nu : np.ndarray ``[B, k, 5]`` and distance : ``[B, k]``, nearest first
            (exact JTFS distances for an ``exact`` index, the projected
            approximation for ``pca``).
        """
        q = self.embed(phi).double()
        emb, sq, rows = self._emb64, self._sq, np.arange(len(self))
        if mask is not None:
            rows = np.flatnonzero(mask)
            if len(rows) == 0:
                raise ValueError("sound index query: the mask allows no point")
            emb, sq = emb[torch.as_tensor(rows)], sq[torch.as_tensor(rows)]
        k = min(int(k), len(rows))
        d2 = sq[None] - 2.0 * (q @ emb.T) + (q * q).sum(1, keepdim=True)    # [B, K]
        d = d2.clamp(min=0.0).sqrt()
        dist, idx = torch.topk(d, k, dim=1, largest=False)
        return self.nu[rows[idx.numpy()]], dist.numpy()

    def __len__(self) -> int:
        return len(self.nu)


def _header(kind: str, jtfs: JTFSConfig, source: str) -> dict[str, Any]:
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": kind,
            "jtfs": json.loads(json.dumps(asdict(jtfs))), "sr": jtfs.sr, "n_samples": jtfs.N,
            "source": source}


def _render_phi(nu: np.ndarray, jtfs: JTFSConfig, batch: int, device: str, progress: bool,
                desc: str, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """``Phi`` ``[K, P]`` (float32) of the twin's render of every row of ``nu`` ``[K, 5]``."""
    from tqdm import tqdm

    twin = MembraneTwin(jtfs.sr, jtfs.N).to(device)
    phi_fn = JTFS(jtfs).to(device).phi
    out = []
    with torch.no_grad(), tqdm(total=len(nu), unit="sound", desc=desc,
                               disable=not progress) as bar:
        for s in range(0, len(nu), batch):
            part = torch.as_tensor(nu[s:s + batch], dtype=torch.float64, device=device)
            out.append(phi_fn(twin.from_nu(part).to(torch.float32)).cpu())
            bar.update(len(part))
            if on_batch is not None:
                on_batch(len(part))
    return torch.cat(out).numpy()


def dense_points(size: int, seed: int = 0) -> np.ndarray:
    """The dense index's points: a scrambled Sobol sequence over ``[-1, 1]^5``, ``[size, 5]``.

    Low-discrepancy, so the sounds cover the space more evenly than random
    draws; the same ``(size, seed)`` always gives the same points.
    """
    engine = torch.quasirandom.SobolEngine(5, scramble=True, seed=seed)
    return engine.draw(size, dtype=torch.float64).numpy() * 2.0 - 1.0


def build_dense(out: str | Path, jtfs: JTFSConfig, size: int = 20480, dims: int = 64,
                seed: int = 0, batch: int = 16, device: str = "cpu",
                progress: bool = True, shard: int = SHARD) -> SoundIndex:
    """Build (or resume) a dense ``pca`` index and write it to ``out``.

    Shards of ``shard`` sounds (default :data:`SHARD`) are written to ``OUT.parts/`` as they
    finish; a rerun with the same arguments skips the finished ones, and a
    rerun with others is refused. The shards are left in place (delete the
    folder once the index is written).

    Returns
    -------
    SoundIndex
        The index written.
    """
    from tqdm import tqdm

    if size < dims or size < 1:
        raise ValueError(f"dense index of {size} sounds and {dims} dims: allowed size >= dims >= 1")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    plan = {"size": size, "seed": seed, "jtfs": json.loads(json.dumps(asdict(jtfs))),
            "shard": shard}
    plan_file = parts / "plan.json"
    if plan_file.is_file():
        old = json.loads(plan_file.read_text())
        if old != plan:
            raise ValueError(f"{parts} holds shards of another build ({old}); delete it or "
                             "pass the same --size/--seed and model length")
    else:
        atomic_write(plan_file, lambda f: f.write(json.dumps(plan).encode()))
    nu = dense_points(size, seed)
    n_shards = -(-size // shard)
    done = sum((parts / f"shard-{i:05d}.npz").is_file() for i in range(n_shards))
    with tqdm(total=size, initial=min(done * shard, size), unit="sound", desc="sound index",
              disable=not progress) as bar:
        for i in range(n_shards):
            done_file = parts / f"shard-{i:05d}.npz"
            if done_file.is_file():
                continue
            rows = nu[i * shard:(i + 1) * shard]
            phi = _render_phi(rows, jtfs, batch, device, False, "", bar.update)
            atomic_write(done_file, lambda f: np.savez(f, nu=rows, phi=phi))
    phis = []
    for i in range(n_shards):
        with np.load(parts / f"shard-{i:05d}.npz", allow_pickle=False) as f:
            if not np.array_equal(f["nu"], nu[i * shard:(i + 1) * shard]):
                raise ValueError(f"{parts}/shard-{i:05d}.npz holds other points: delete {parts}")
            phis.append(f["phi"])
    index = SoundIndex.from_phi(nu, np.concatenate(phis), jtfs, dims,
                                source=f"Sobol points over [-1, 1]^5, seed {seed}, {size} sounds")
    index.save(out)
    return index
