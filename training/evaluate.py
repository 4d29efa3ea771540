"""Evaluate a checkpoint on a protocol split: audio distances and parameter errors.

For every sound of the split (or a seeded subset): render the target with the
twin, predict ``nu_hat`` from its CQT, re-synthesize, and measure

* ``jtfs``: Euclidean distance between the JTFS ``Phi`` of target and estimate
  (the run's JTFS configuration, the reference one unless overridden);
* ``mss``: multi-scale spectral distance (auraloss's definition);
* per parameter: mean absolute error in ``nu``, in physical units, and median
  relative error ``|theta_hat - theta| / theta``.

Results: ``eval-{split}-{ckpt}.json`` (summary and per-sound arrays' means and
quantiles), ``.md`` (a table), ``.png`` (error against each parameter's true
value), beside the checkpoint unless ``--out`` says otherwise.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from matcher.device import resolve_device
from matcher.distances import jtfs_distance, multiscale_spectral_distance
from matcher.encoder import Encoder
from matcher.plot import save_figure
from synth.cli_parser import OneLineParser
from synth.files import atomic_write
from synth.params import PARAMS, nu_to_theta

from .config import TrainConfig
from .data import Renderer, Split
from .trainer import full_nu, load_checkpoint

__all__ = ["evaluate", "evaluate_main", "report_stem"]


def _model(ck: dict[str, Any], cfg: TrainConfig, device: torch.device) -> Encoder:
    model = Encoder(pitch_known=cfg.pitch_known)
    model.load_state_dict(ck["model"])
    return model.to(device).eval()


@torch.no_grad()
def evaluate(ckpt: str | Path, split: str = "test", limit: int = 0, batch: int = 16,
             device: str = "cpu", out: str | Path | None = None, progress: bool = True,
             plot: bool = True) -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``split``; writes JSON, Markdown and a plot; returns the summary."""
    from tqdm import tqdm

    from matcher.jtfs import JTFS

    ckpt = Path(ckpt)
    ck = load_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(ck["config"])
    dev = resolve_device(device)
    model = _model(ck, cfg, dev)
    data = Split(cfg, split, limit)
    renderer = Renderer(cfg).to(dev)
    phi = JTFS(cfg.jtfs_config()).to(dev).phi
    nus, nu_hats, jt, ms = [], [], [], []
    with tqdm(total=len(data), unit="sound", desc=f"evaluate {split}", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for _, ids in data.epoch_batches(0, shuffle=False, drop_last=False):
            b = renderer(ids)
            nu_hat = full_nu(model(b["x"]).float(), b["nu"], cfg.pitch_known).clamp(-1.0, 1.0)
            est = renderer.render_nu(nu_hat)
            jt.append(jtfs_distance(est, b["audio"], phi).cpu())
            ms.append(multiscale_spectral_distance(est, b["audio"], reduction="none").cpu())
            nus.append(b["nu"].cpu())
            nu_hats.append(nu_hat.cpu())
            bar.update(len(ids))
    nu = torch.cat(nus).double().numpy()
    nu_hat = torch.cat(nu_hats).double().numpy()
    jtfs_d, mss_d = torch.cat(jt).double().numpy(), torch.cat(ms).double().numpy()
    summary = _summary(cfg, ckpt, split, nu, nu_hat, jtfs_d, mss_d, ck)
    stem = report_stem(ckpt, split, out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    _atomic_text(stem.with_suffix(".json"), json.dumps(summary, indent=2))
    _atomic_text(stem.with_suffix(".md"), markdown(summary))
    if plot:
        _plot(nu, nu_hat, stem.with_suffix(".png"), f"{cfg.name} ({split}, {len(nu)} sounds)")
    summary["files"] = [str(stem.with_suffix(s)) for s in (".json", ".md", ".png")[:3 if plot else 2]]
    return summary


def report_stem(ckpt: Path, split: str, out: str | Path | None = None) -> Path:
    """``{out or beside ckpt}/eval-{split}-{ckpt stem}``: the reports' path without suffix."""
    return (Path(out) if out else Path(ckpt).parent) / f"eval-{split}-{Path(ckpt).stem}"


def _stats(a: np.ndarray) -> dict[str, float]:
    return {"mean": float(a.mean()), "median": float(np.median(a)),
            "p90": float(np.quantile(a, 0.9))}


def _summary(cfg: TrainConfig, ckpt: Path, split: str, nu: np.ndarray, nu_hat: np.ndarray,
             jtfs_d: np.ndarray, mss_d: np.ndarray, ck: dict[str, Any]) -> dict[str, Any]:
    theta, theta_hat = nu_to_theta(nu), nu_to_theta(nu_hat)
    params = {}
    for k, spec in enumerate(PARAMS):
        err = np.abs(theta_hat[:, k] - theta[:, k])
        params[spec.name] = {
            "unit": spec.unit,
            "mae_nu": float(np.abs(nu_hat[:, k] - nu[:, k]).mean()),
            "rmse_nu": float(np.sqrt(((nu_hat[:, k] - nu[:, k]) ** 2).mean())),
            "mae": float(err.mean()),
            "median_rel_error": float(np.median(err / np.abs(theta[:, k]))),
        }
    f0_cents = 1200 * np.abs(np.log2(theta_hat[:, 0] / theta[:, 0]))
    return {"checkpoint": str(ckpt), "run": cfg.name, "loss": cfg.loss,
            "pitch_known": cfg.pitch_known, "split": split, "n_sounds": int(len(nu)),
            "step": ck["step"], "epoch": ck["epoch"],
            "jtfs_distance": _stats(jtfs_d), "mss_distance": _stats(mss_d),
            "p_loss": float(0.5 * ((nu_hat - nu) ** 2).sum(1).mean()),
            "f0_cents": _stats(f0_cents), "parameters": params}


def markdown(s: dict[str, Any]) -> str:
    """The summary as a Markdown report."""
    lines = [f"# Evaluation of `{s['run']}` ({s['loss']} loss, pitch "
             f"{'known' if s['pitch_known'] else 'unknown'})", "",
             f"Split `{s['split']}`, {s['n_sounds']} sounds; checkpoint `{s['checkpoint']}` "
             f"(step {s['step']}, epoch {s['epoch']}).", "",
             "| metric | mean | median | p90 |", "|---|---|---|---|"]
    for key, label in (("jtfs_distance", "JTFS distance"), ("mss_distance", "MSS distance"),
                       ("f0_cents", "f0 error (cents)")):
        m = s[key]
        lines.append(f"| {label} | {m['mean']:.4g} | {m['median']:.4g} | {m['p90']:.4g} |")
    lines += ["", f"P-loss (0.5 mean squared nu error): {s['p_loss']:.4g}", "",
              "| parameter | unit | MAE (nu) | RMSE (nu) | MAE (unit) | median rel. error |",
              "|---|---|---|---|---|---|"]
    for name, p in s["parameters"].items():
        lines.append(f"| {name} | {p['unit']} | {p['mae_nu']:.4f} | {p['rmse_nu']:.4f} | "
                     f"{p['mae']:.4g} | {100 * p['median_rel_error']:.1f} % |")
    return "\n".join(lines) + "\n"


def _plot(nu: np.ndarray, nu_hat: np.ndarray, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theta = nu_to_theta(nu)
    fig, axes = plt.subplots(1, len(PARAMS), figsize=(4 * len(PARAMS), 3.4), sharey=True)
    err = np.abs(nu_hat - nu)
    for k, (ax, spec) in enumerate(zip(axes, PARAMS)):
        x = theta[:, k]
        ax.scatter(x, err[:, k], s=4, alpha=0.4, color="tab:blue", label="|error| in nu")
        edges = np.quantile(x, np.linspace(0, 1, 11))
        mids, med = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (x >= lo) & (x <= hi)
            if sel.any():
                mids.append(np.median(x[sel]))
                med.append(np.median(err[sel, k]))
        ax.plot(mids, med, color="tab:red", lw=2, label="binned median")
        if spec.scale == "log":
            ax.set_xscale("log")
        ax.set_xlabel(f"true {spec.name} ({spec.unit})" if spec.unit else f"true {spec.name}")
        ax.set_title(spec.name)
    axes[0].set_ylabel("|nu_hat - nu| (normalized)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def evaluate_main(argv: Sequence[str]) -> int:
    """``tympan train evaluate CKPT [--split test]``."""
    parser = OneLineParser(prog="tympan train evaluate", description=(
        "Re-synthesize a split from a checkpoint's predictions; report JTFS and multi-scale "
        "spectral distances and per-parameter errors (JSON, Markdown, plot)."))
    parser.add_argument("ckpt", help="training checkpoint (best.pt or last.pt)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--limit", type=int, default=0, metavar="K",
                        help="a seeded subset of K sounds (0: the whole split)")
    parser.add_argument("--batch", type=int, default=16, help="sounds per batch (16)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: beside CKPT)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.limit < 0 or args.batch < 1:
        raise ValueError("--limit must be >= 0 and --batch >= 1")
    s = evaluate(args.ckpt, args.split, args.limit, args.batch, args.device, args.out,
                 progress=not args.quiet, plot=not args.no_plot)
    print(markdown(s))
    print("wrote " + ", ".join(s["files"]))
    return 0 if all(math.isfinite(s[k]["mean"]) for k in ("jtfs_distance", "mss_distance")) else 1
