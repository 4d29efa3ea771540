"""``tympan train sound-index``: build the dense index shipped with the matcher."""

from __future__ import annotations

from typing import Sequence

from synth.cli_parser import OneLineParser

__all__ = ["sound_index_main"]


def sound_index_main(argv: Sequence[str]) -> int:
    from matcher.sound_index import DEFAULT_INDEX

    parser = OneLineParser(prog="tympan train sound-index", description=(
        "Render Sobol-spread points of the parameter space, transform them with the JTFS and "
        "store their principal coordinates: the dense index 'tympan match' searches. "
        "Resumable: finished shards are kept in OUT.parts/ (about an hour on 2 CPU cores)."))
    parser.add_argument("--out", default=str(DEFAULT_INDEX), metavar="FILE",
                        help=f"index file (.npz; default: the shipped model's, {DEFAULT_INDEX}; a "
                             "model's index lives beside it as NAME-index.npz)")
    parser.add_argument("--size", type=int, default=20480, metavar="K",
                        help="sounds (20480)")
    parser.add_argument("--dims", type=int, default=64, metavar="D",
                        help="principal axes kept (64)")
    parser.add_argument("--seed", type=int, default=0, help="Sobol scramble seed (0)")
    parser.add_argument("--batch", type=int, default=16, help="sounds per JTFS batch (16)")
    parser.add_argument("--n-samples", type=int, default=2**16,
                        help="render length: the model's (2**16)")
    parser.add_argument("--sr", type=float, default=22050.0, help="the model's rate (22050)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.size < 1 or args.dims < 1 or args.batch < 1 or args.n_samples < 1:
        raise ValueError("--size, --dims, --batch and --n-samples must be >= 1")
    from matcher.jtfs import JTFSConfig
    from matcher.sound_index import build_dense

    cfg = JTFSConfig.reference(args.n_samples, args.sr)
    index = build_dense(args.out, cfg, size=args.size, dims=args.dims, seed=args.seed,
                        batch=args.batch, device=args.device, progress=not args.quiet)
    print(f"wrote {args.out}: {len(index)} sounds, {index.dims} principal axes "
          f"({100 * index.header['explained']:.2f} % of the JTFS variance)")
    return 0
