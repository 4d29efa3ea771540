"""``tympan train nn-index``: build the nearest-neighbour baseline's index over a split."""

from __future__ import annotations

from typing import Sequence

from synth.cli_parser import OneLineParser

from .protocol import SPLITS, Protocol

__all__ = ["nn_index_main"]


def nn_index_main(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="tympan train nn-index", description=(
        "Render a protocol split (or a seeded subset) and store its JTFS features: the index "
        "of 'tympan match --method nn'."))
    parser.add_argument("--out", required=True, metavar="FILE", help="index file (.npz)")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--limit", type=int, default=2000, metavar="K",
                        help="a seeded subset of K cells (2000; 0: the whole split)")
    parser.add_argument("--n-samples", type=int, default=2**16,
                        help="render length: the model's (2**16)")
    parser.add_argument("--sr", type=float, default=22050.0, help="the model's rate (22050)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--protocol-seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.limit < 0 or args.n_samples < 1:
        raise ValueError("--limit must be >= 0 and --n-samples >= 1")
    import numpy as np

    from matcher.jtfs import JTFSConfig
    from matcher.sound_index import SoundIndex

    protocol = Protocol(seed=args.protocol_seed)
    ids = protocol.split_indices(args.split)
    if args.limit and args.limit < len(ids):
        rng = np.random.default_rng([args.protocol_seed, 104729])
        ids = np.sort(rng.choice(ids, size=args.limit, replace=False))
    cfg = JTFSConfig.reference(args.n_samples, args.sr)
    index = SoundIndex.build(protocol.nu(ids), cfg, device=args.device, progress=not args.quiet,
                          source=f"protocol seed {args.protocol_seed}, split {args.split}, "
                                 f"{len(ids)} cells")
    path = index.save(args.out)
    print(f"wrote {path}: {len(index)} sounds of split {args.split!r}, "
          f"{index.dims} JTFS features each")
    return 0
