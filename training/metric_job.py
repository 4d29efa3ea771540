"""Precompute the metric ``M(theta)`` over a protocol split, in resumable shards.

The split's sounds (cell ids in sorted order, :class:`training.protocol.Protocol`)
are cut into fixed shards of ``shard_size`` sounds. A worker computes the shards
``i`` with ``i % count == index`` (``--shard I/N``, or ``RANK`` / ``WORLD_SIZE``
under ``torchrun``), skipping those already finished, so a killed run resumes.

Files under ``OUT``::

    OUT/{split}/job.json              the run's header (written first)
    OUT/{split}/shard-00042.npz       one shard, written atomically
    OUT/metric-{split}.npz            the merged split (``merge-metric``)

Each ``.npz`` holds ``cell_ids [n] int64``, ``nu [n, 5]``, ``theta [n, 5]``,
``M [n, 5, 5]``, ``eigvals [n, 5]`` (float64; ``eigvals`` ascending; ``nu``
and ``theta`` as the protocol gives them, a float32 run evaluates at ``nu``
rounded to float32) and
``header``: a JSON string equal to ``job.json`` (format, version, protocol,
shard size, number of sounds, dtype, phi, sample rate, length). Shards also
carry ``shard`` (their index) and ``provenance`` (JSON: device, batch, torch
version; informative, never compared). A shard is finished when its file loads
with the run's header and the expected cell ids; a different header is an
error, never a silent mix.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from matcher.device import resolve_device
from synth.cli_parser import OneLineParser
from synth.files import atomic_savez, atomic_write, file_sha256, remove_stale

from .phi import PHIS, build_phi
from .protocol import SPLITS, Protocol
from .shard_headers import check_header, claim_header, json_array, writable_dir

__all__ = ["MetricJob", "check_sha256", "load_metric", "merge_metric", "merge_main",
           "metric_main", "parse_shard", "run_metric", "sha256_path", "shard_path"]

FORMAT, VERSION = "tympan-metric", 1
DTYPES = ("float32", "float64")
_ARRAYS = ("cell_ids", "nu", "theta", "M", "eigvals")


@dataclass(frozen=True)
class MetricJob:
    """Frozen configuration of one split's metric run: what every shard must match.

    Parameters
    ----------
    split : {"train", "val", "test"}
    protocol : Protocol
    shard_size : int
        Sounds per shard (the last shard may hold fewer).
    n_sounds : int or None
        Only the first ``n_sounds`` of the split (smoke runs); ``None``: all.
    dtype : {"float32", "float64"}
        Precision of the twin and ``Phi`` (``M`` is accumulated in float64).
    phi : str
        Identity of the representation (``"jtfs"`` or ``"stft-test"``, plus its config).
    sr : float
        Sample rate of the twin, Hz.
    n_samples : int
        Length of each render, samples.
    subset : int
        Take the sounds from the seeded ``subset``-cell subset of the split
        (:meth:`Protocol.subset`: the cells a run with ``[data] n_train`` or
        ``n_val`` = subset trains or validates on); 0: the whole split.
    """

    split: str
    protocol: Protocol = field(default_factory=Protocol)
    shard_size: int = 256
    n_sounds: int | None = None
    dtype: str = "float32"
    phi: str = "jtfs"
    sr: float = 22050.0
    n_samples: int = 2**16
    subset: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; allowed: {', '.join(SPLITS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        for name in ("shard_size", "n_samples") + (("n_sounds",) if self.n_sounds is not None else ()):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)!r}: allowed integers >= 1")
        if isinstance(self.subset, bool) or not isinstance(self.subset, int) or self.subset < 0:
            raise ValueError(f"subset = {self.subset!r}: allowed integers >= 0 (0: the whole split)")
        size = self.protocol.sizes[self.split]
        size = min(self.subset, size) if self.subset else size
        if self.n_sounds is None or self.n_sounds > size:
            object.__setattr__(self, "n_sounds", size)  # a limit past the end means "all"

    @cached_property
    def cell_ids(self) -> np.ndarray:
        """Cell ids of the job's sounds, ``[n_sounds]`` int64, sorted."""
        return self.protocol.subset(self.split, self.subset)[:self.n_sounds]

    @property
    def n_shards(self) -> int:
        return -(-self.n_sounds // self.shard_size)

    def shard_cells(self, i: int) -> np.ndarray:
        """Cell ids of shard ``i``."""
        return self.cell_ids[i * self.shard_size:(i + 1) * self.shard_size]

    def header(self) -> dict[str, Any]:
        """Everything a shard's numbers depend on, as JSON-ready values."""
        return {"format": FORMAT, "version": VERSION, "split": self.split,
                "protocol": self.protocol.to_dict(), "shard_size": self.shard_size,
                "n_sounds": self.n_sounds, "n_shards": self.n_shards, "dtype": self.dtype,
                "phi": self.phi, "sr": self.sr, "n_samples": self.n_samples,
                **({"subset": self.subset} if self.subset else {})}   # older headers stay valid

    @classmethod
    def from_header(cls, h: Mapping[str, Any]) -> "MetricJob":
        if h.get("format") != FORMAT or h.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} header: format {h.get('format')!r}, "
                             f"version {h.get('version')!r}")
        try:
            return cls(h["split"], Protocol(**h["protocol"]), h["shard_size"], h["n_sounds"],
                       h["dtype"], h["phi"], h["sr"], h["n_samples"], h.get("subset", 0))
        except (KeyError, TypeError) as err:
            raise ValueError(f"incomplete {FORMAT} header ({type(err).__name__}: {err})") from None


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ValueError otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"bad --shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return index, count


def run_metric(job: MetricJob, out: str | Path, *, phi: Callable | None = None,
               device: str = "cpu", batch: int = 32, shard: tuple[int, int] | None = None,
               progress: bool = True, env: Mapping[str, str] | None = None,
               deadline: float | None = None) -> list[int]:
    """Compute this worker's unfinished shards of ``job`` under ``out``.

    Parameters
    ----------
    job : MetricJob
    out : path
        Output directory (created if needed).
    phi : callable ``[B, N] -> [B, P]``, optional
        The representation; default built from ``job.phi`` (``"jtfs"``: the
        project JTFS, imported lazily; ``"stft-test"``: the test stand-in).
    device : {"cpu", "cuda"}
        ``cuda`` uses ``cuda:LOCAL_RANK`` under torchrun, else the current GPU.
    batch : int
        Sounds per forward-mode pass (bounds memory).
    shard : (index, count), optional
        This worker's share; default from ``RANK`` / ``WORLD_SIZE`` or ``(0, 1)``.
    env : mapping, optional
        Environment to read torchrun's variables from (default ``os.environ``).
    deadline : float, optional
        ``time.monotonic()`` value after which no new shard is started (a
        time-boxed call; the unfinished shards are done by the next one).

    Returns
    -------
    list of int
        The shards computed by this call (finished ones are skipped).
    """
    import torch
    from tqdm import tqdm

    from synth.twin import MembraneTwin

    from matcher.metric import metric

    index, count, local_rank = _worker(shard, os.environ if env is None else env)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch = {batch!r}: allowed integers >= 1 (sounds per pass)")
    dev = resolve_device(device, local_rank)
    if phi is None:
        phi = job_phi(job, dev)
    split_dir = writable_dir(Path(out)) / job.split
    split_dir.mkdir(exist_ok=True)
    claim_header(split_dir / "job.json", job.header())
    mine = range(index, job.n_shards, count)
    for i in mine:  # only this worker writes these shards: their temp files are stale
        remove_stale(shard_path(split_dir, i))
    todo = [i for i in mine if _read_shard(split_dir, job, i) is None]
    dtype = getattr(torch, job.dtype)
    twin = MembraneTwin(job.sr, job.n_samples).to(dev)
    total = sum(len(job.shard_cells(i)) for i in todo)
    who = f" [{index}/{count}]" if count > 1 else ""
    with tqdm(total=total, unit="sound", desc=f"metric {job.split}{who}", disable=not progress,
              dynamic_ncols=True, file=sys.stderr) as bar:
        done = []
        for i in todo:
            if deadline is not None and time.monotonic() > deadline:
                break
            ids = job.shard_cells(i)
            nu = job.protocol.nu(ids)
            ms, evs = [], []
            for start in range(0, len(ids), batch):
                part = torch.as_tensor(nu[start:start + batch], dtype=dtype, device=dev)
                m, ev = metric(part, twin, phi)
                ms.append(m.cpu().numpy())
                evs.append(ev.cpu().numpy())
                bar.update(part.shape[0])
            provenance = {"device": str(dev), "batch": batch, "torch": torch.__version__}
            atomic_savez(shard_path(split_dir, i), cell_ids=ids, nu=nu,
                         theta=job.protocol.theta(ids), M=np.concatenate(ms),
                         eigvals=np.concatenate(evs), header=json_array(job.header()),
                         shard=np.array(i), provenance=json_array(provenance))
            done.append(i)
    return done


def job_phi(job: MetricJob, device: Any) -> Callable:
    """The representation named by ``job.phi`` on ``device``: the reference JTFS
    configuration at the job's length and rate (smoke runs shorten N)."""
    from matcher.jtfs import JTFSConfig

    return build_phi(job.phi, job.n_samples,
                     lambda: JTFSConfig.reference(job.n_samples, job.sr), device)


def merge_metric(split: str, out: str | Path, compact: bool = False) -> Path:
    """Check that all of a split's shards are finished; write ``OUT/metric-{split}.npz``.

    With ``compact`` the arrays are stored as float32 (cell ids stay int64) and
    the file's sha256 is written beside it (``metric-{split}.npz.sha256``,
    ``sha256sum`` format), which :class:`training.data.MetricTable` checks on
    load: the form to commit, so that no later run recomputes ``M``.
    Raises ValueError naming the missing (or unreadable) shards. Returns the path.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    split_dir = Path(out) / split
    try:
        header = json.loads((split_dir / "job.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"no metric run for split {split!r} in {out} ({split_dir / 'job.json'}: "
                         f"{err}); run 'tympan train metric --split {split} --out {out}' "
                         "first") from None
    job = MetricJob.from_header(header)
    shards = [_read_shard(split_dir, job, i) for i in range(job.n_shards)]
    missing = [i for i, s in enumerate(shards) if s is None]
    if missing:
        names = ", ".join(shard_path(split_dir, i).name for i in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ValueError(f"split {split!r}: {len(missing)} of {job.n_shards} shards missing or "
                         f"unreadable in {split_dir}: {names}{more}; run 'tympan train metric "
                         f"--split {split} --out {out}' (same options) to finish them")
    merged = {k: np.concatenate([s[k] for s in shards]) for k in _ARRAYS}
    order = np.argsort(merged["cell_ids"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    if np.any(np.diff(merged["cell_ids"]) <= 0):
        raise ValueError(f"split {split!r}: shards in {split_dir} repeat cell ids")
    path = Path(out) / f"metric-{split}.npz"
    header = job.header()
    if compact:
        merged = {k: v if k == "cell_ids" else v.astype(np.float32) for k, v in merged.items()}
        header["stored"] = "float32"
    atomic_savez(path, **merged, header=json_array(header))
    sidecar = sha256_path(path)
    if compact:
        digest = file_sha256(path)
        atomic_write(sidecar, lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    elif sidecar.exists():
        sidecar.unlink()          # a stale sum beside a rewritten file would be a false alarm
    return path


def sha256_path(path: str | Path) -> Path:
    """Where a compact metric file's sha256 lives: ``NAME.npz.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def check_sha256(path: str | Path) -> None:
    """Raise ValueError when ``path`` has a sha256 beside it that its bytes do not match."""
    sidecar = sha256_path(path)
    if not sidecar.exists():
        return
    want = sidecar.read_text().split()[0] if sidecar.read_text().split() else ""
    got = file_sha256(path)
    if got != want:
        raise ValueError(f"{path} does not match its sha256 in {sidecar.name} (file {got[:12]}..., "
                         f"expected {want[:12]}...): the metric file is damaged or was replaced; "
                         "restore it from git or merge it again")


def load_metric(path: str | Path) -> dict[str, Any]:
    """Read a shard or merged file: its arrays and ``header`` (a dict)."""
    with np.load(path, allow_pickle=False) as data:
        result: dict[str, Any] = {k: data[k] for k in _ARRAYS}
        result["header"] = json.loads(str(data["header"]))
    return result


# -- files ---------------------------------------------------------------------------

def shard_path(split_dir: Path, i: int) -> Path:
    """Shard ``i``'s file in a split's work folder (present once the shard is finished)."""
    return split_dir / f"shard-{i:05d}.npz"


def _read_shard(split_dir: Path, job: MetricJob, i: int) -> dict[str, Any] | None:
    """A finished shard's contents; None if absent or unreadable; ValueError on mismatch."""
    path = shard_path(split_dir, i)
    if not path.exists():
        return None
    try:
        data = load_metric(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        print(f"metric: {path} is unreadable ({err}); treating it as unfinished", file=sys.stderr)
        return None
    check_header(data["header"], job.header(), path)
    n = len(job.shard_cells(i))
    if not np.array_equal(data["cell_ids"], job.shard_cells(i)) or data["M"].shape != (n, 5, 5):
        raise ValueError(f"{path} holds other cells than shard {i} of this run should; "
                         f"use another --out or delete {split_dir} to start over")
    return data


# -- workers and devices ----------------------------------------------------------

def _worker(shard: tuple[int, int] | None,
            env: Mapping[str, str]) -> tuple[int, int, int | None]:
    """``(index, count, local_rank)`` of this process."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if "RANK" in env and world > 1:
        if shard is not None and shard != (0, 1):
            raise ValueError("give --shard or run under torchrun (RANK / WORLD_SIZE), not both")
        return int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"]))
    index, count = (0, 1) if shard is None else shard
    if not 0 <= index < count:
        raise ValueError(f"bad shard {index}/{count}: expected 0 <= I < N")
    return index, count, None


# -- command line ------------------------------------------------------------------

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: allowed integers >= 1")
    return value


def metric_main(argv: Sequence[str]) -> int:
    """``tympan train metric``: compute this worker's shards of a split."""
    parser = OneLineParser(prog="tympan train metric", description=(
        "Precompute the metric M(theta) = J^T J of a protocol split in resumable shards "
        "(OUT/SPLIT/shard-NNNNN.npz); then run 'tympan train merge-metric'."))
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--shard", metavar="I/N", help="handle shards i with i %% N == I "
                        "(default: all, or RANK/WORLD_SIZE under torchrun)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=_positive, default=None,
                        help="sounds per pass (default 1 on CPU, where larger batches only "
                             "spill caches, 32 on CUDA)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="precision of twin and Phi (float32); M is summed in float64")
    parser.add_argument("--shard-size", type=_positive, default=256, help="sounds per shard (256)")
    parser.add_argument("--limit", type=_positive, metavar="K",
                        help="only the first K sounds of the split (smoke runs)")
    parser.add_argument("--subset", type=_positive, default=0, metavar="K",
                        help="the seeded K-cell subset that a run with [data] n_train (train) "
                             "or n_val (val) = K uses, instead of the whole split")
    parser.add_argument("--protocol-seed", type=int, default=0, metavar="S")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    smoke = parser.add_argument_group("test and smoke options (not for real metrics)")
    smoke.add_argument("--phi", choices=PHIS, default="jtfs",
                       help="stft-test: a fast non-perceptual stand-in for the JTFS")
    smoke.add_argument("--n-samples", type=_positive, default=2**16,
                       help="render length in samples (2**16)")
    args = parser.parse_args(argv)
    shard = parse_shard(args.shard) if args.shard is not None else None
    job = MetricJob(args.split, Protocol(seed=args.protocol_seed), args.shard_size, args.limit,
                    args.dtype, args.phi, n_samples=args.n_samples, subset=args.subset)
    batch = args.batch or (32 if args.device == "cuda" else 1)
    done = run_metric(job, args.out, device=args.device, batch=batch, shard=shard,
                      progress=not args.quiet)
    split_dir = Path(args.out) / job.split
    finished = sum(shard_path(split_dir, i).exists() for i in range(job.n_shards))
    print(f"metric {job.split}: computed {len(done)} shards here; {finished} of {job.n_shards} "
          f"finished in {split_dir}")
    if finished == job.n_shards:
        print(f"next: tympan train merge-metric --split {job.split} --out {args.out}")
    return 0


def merge_main(argv: Sequence[str]) -> int:
    """``tympan train merge-metric``: merge a split's finished shards into one file."""
    parser = OneLineParser(prog="tympan train merge-metric",
                           description="Check all shards of a split and merge them atomically.")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the directory given to 'tympan train metric'")
    parser.add_argument("--compact", action="store_true",
                        help="store float32 and write the file's sha256 beside it (to commit)")
    args = parser.parse_args(argv)
    path = merge_metric(args.split, args.out, compact=args.compact)
    n = len(load_metric(path)["cell_ids"])
    size = path.stat().st_size / 1e6
    print(f"wrote {path}: {n} sounds of split {args.split!r}, {size:.2f} MB"
          + (f", sha256 in {sha256_path(path).name}" if args.compact else ""))
    return 0
