"""``tympan train teacher``: pseudo-labels of the recorded fine-tuning hits, from the match search.

The encoder alone is far from the match search on recordings (it learnt clean
renders of the twin; the search re-ranks real candidates by their JTFS distance
to the hit). This step runs the search of ``tympan match`` on every hit of the
*fine-tuning* halves of ``configs/real-hits.toml`` and keeps its parameters as
pseudo-labels; a run's ``[finetune] teacher`` then distils them into the
encoder (:class:`training.finetune.RealHits`). The validation halves are never
matched here, so they stay unseen.

The search is given time to re-rank every candidate it proposes (``--budget-ms``
large), so that the labels do not depend on how fast the machine is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from synth.cli_parser import OneLineParser

__all__ = ["make_teacher", "teacher_main"]

# Enough for every candidate of the search on a 2-core CPU (about 3 s a hit): the
# labels are then the same on a faster or a loaded machine.
TEACHER_BUDGET_MS = 20000.0


def make_teacher(model: str | Path, out: str | Path, hits: str | Path = "configs/real-hits.toml",
                 index: str | Path | None = None, budget_ms: float = TEACHER_BUDGET_MS,
                 progress: bool = True) -> Path:
    """Match every fine-tuning hit with the search and write the labels.

    Parameters
    ----------
    model : path
        The ``.tympan`` model whose encoder proposes one of the candidates.
    out : path
        The teacher file (``.npz``, written atomically): ``names`` ``[H]`` (``"folder/file"``),
        ``nu`` ``[H, 5]`` (normalized parameters in [-1, 1]), ``jtfs`` and ``mss`` ``[H]``
        (the match's distances to the hit), ``model`` (its file name).
    hits : path
        The recorded sets and their halves.
    index : path, optional
        The search's dense index (default: the shipped one,
        ``matcher/models/default-index.npz``; it depends on the length and rate only).
    budget_ms : float
        The search's budget per hit, ms.

    Returns
    -------
    Path
        ``out``.
    """
    from tqdm import tqdm

    from matcher.audio import load_hit
    from matcher.match import Matcher
    from matcher.sound_index import DEFAULT_INDEX
    from synth.files import atomic_savez

    from .finetune import read_real_sets

    if not budget_ms > 0:
        raise ValueError(f"--budget-ms {budget_ms!r}: allowed a positive number of ms")
    paths = [p for s in read_real_sets(hits).values() for p in s.files("finetune")]
    matcher = Matcher(model, device="cpu", index=DEFAULT_INDEX if index is None else index)
    names, nus, jtfs, mss = [], [], [], []
    for p in tqdm(paths, desc="teacher", unit="hit", disable=not progress):
        r = matcher.match_hit(load_hit(p, matcher.audio_config), method="search",
                              budget_ms=budget_ms)
        names.append(f"{p.parent.name}/{p.name}")
        nus.append(np.asarray(r.nu, dtype=np.float32))
        jtfs.append(r.jtfs_distance)
        mss.append(r.mss_distance)
    return atomic_savez(out, names=np.array(names), nu=np.stack(nus),
                        jtfs=np.array(jtfs, dtype=np.float32), mss=np.array(mss, dtype=np.float32),
                        model=np.array(Path(model).name))


def teacher_main(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="tympan train teacher", description=(
        "Match every hit of the fine-tuning halves with the search of 'tympan match' and "
        "write the parameters as pseudo-labels, for a run's [finetune] teacher. The "
        "validation halves are not read. About 3 s per hit on 2 CPU cores."))
    parser.add_argument("--model", required=True, metavar="FILE",
                        help="the .tympan model whose encoder joins the search's candidates")
    parser.add_argument("--out", required=True, metavar="FILE", help="teacher file to write (.npz)")
    parser.add_argument("--hits", default="configs/real-hits.toml", metavar="FILE",
                        help="the recorded sets and their halves (configs/real-hits.toml)")
    parser.add_argument("--index", default=None, metavar="FILE",
                        help="the search's dense index (default: the shipped one)")
    parser.add_argument("--budget-ms", type=float, default=TEACHER_BUDGET_MS,
                        help=f"search budget per hit, ms ({TEACHER_BUDGET_MS:g}: every candidate)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: allowed integers >= 1")
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = make_teacher(args.model, args.out, args.hits, args.index, args.budget_ms,
                       progress=not args.quiet)
    with np.load(out) as z:
        n, med = len(z["names"]), float(np.median(z["jtfs"]))
    print(f"{out}: {n} pseudo-labels, median JTFS {med:.3f}, {time.perf_counter() - t0:.0f} s")
    return 0
