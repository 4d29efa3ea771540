"""``docs/results.md`` from a campaign's state: the metric, the runs' test scores, the export.

Reads each stage as a :class:`~training.campaign.state.StageRecord`, so a
field renamed in the record fails here at once rather than printing a blank.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from synth.cli_parser import OneLineParser
from synth.files import atomic_write

from .state import STATE_FILE, State

__all__ = ["write_report", "report_main"]


def _metric_rows(records: dict) -> list[str]:
    rows = []
    for name, rec in records.items():
        if not name.startswith("metric:"):
            continue
        m = rec.metric
        if m is not None and m.sounds_per_s:
            rows.append(f"| {name[7:]} | {m.sounds} | {rec.seconds or 0:.0f} | "
                        f"{m.sounds_per_s:.1f} | `{m.sha256_full or '-'}` | `{m.sha256 or '-'}` |")
        else:
            rows.append(f"| {name[7:]} | {rec.status} | | | | |")
    return rows


def write_report(state_dir: str | Path, docs: str | Path, configs: str | Path) -> Path:
    """Write the campaign's results page.

    Parameters
    ----------
    state_dir : str or Path
        The campaign's state directory (``campaign.json``, runs, configs).
    docs : str or Path
        Where ``results.md`` goes; the runs' error plots go to ``docs/results/``.
    configs : str or Path
        Where the run files go as they ran (``tympan train fit --config`` them).

    Returns
    -------
    Path
        The ``results.md`` written.
    """
    state_dir, docs, configs = Path(state_dir), Path(docs), Path(configs)
    state = State(state_dir)
    data, records = state.data, state.records()
    plots = docs / "results"
    plots.mkdir(parents=True, exist_ok=True)
    configs.mkdir(parents=True, exist_ok=True)
    hw = data.get("hardware", {})
    hw_text = ", ".join(f"{k} {v}" for k, v in hw.items())
    lines = ["# Results: the GPU campaign", "",
             "Written by `tympan train campaign-report` from the campaign's state "
             "(`campaign.json`); do not edit by hand. How the campaign is run: "
             "[gpu-campaign.md](gpu-campaign.md).", "",
             f"Hardware of the last call: {hw_text}.", "",
             "## Metric M(theta) of the protocol grid", "",
             "| split | sounds | seconds | sounds/s | sha256 (merged, float64) | sha256 (compact, float32) |",
             "|---|---|---|---|---|---|"]
    lines += _metric_rows(records)
    lines += ["", "## Reference runs, evaluated on the test split", "",
              "| run | loss | pitch | sounds trained | epochs | JTFS mean | MSS mean | P-loss | "
              "epoch s | samples/s (fit) | samples/s (step) | reproduce |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    params_rows = []
    for name, rec in records.items():
        r = rec.run
        if not name.startswith("run:") or not rec.done or r is None:
            continue
        run = name[4:]
        shutil.copy2(state_dir / "configs" / f"{run}.toml", configs / f"{run}.toml")
        png = (state_dir / r.report).with_suffix(".png")
        if png.exists():
            shutil.copy2(png, plots / f"{run}.png")
        report = json.loads((state_dir / r.report).read_text())
        epoch = np.mean(r.epoch_s) if r.epoch_s else float("nan")
        lines.append(f"| {run} | {r.loss} | {'known' if r.pitch_known else 'unknown'} | "
                     f"{r.n_train} | {r.epochs_done} | {r.jtfs_mean:.4g} | "
                     f"{r.mss_mean:.4g} | {r.p_loss:.4g} | {epoch:.1f} | "
                     f"{r.samples_per_s:.0f} | {r.step_samples_per_s:.0f} | "
                     f"`tympan train fit --config {configs / (run + '.toml')}` |")
        params_rows.append(f"| {run} | " + " | ".join(
            f"{p['mae_nu']:.3f}" for p in report["parameters"].values()) + " |")
        names = list(report["parameters"])
    if params_rows:
        lines += ["", "Mean absolute error per parameter (normalized nu, in [-1, 1]):", "",
                  "| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += params_rows
        lines += ["", "Epoch s: mean epoch time, validation included. Samples/s (fit): "
                  "sounds trained over the whole fit (set-up, validation and checkpoints "
                  "included); (step): one "
                  "training step alone, from the probe (synthesis, CQT, forward, backward).",
                  "", "Each run: `tympan train evaluate runs/NAME/best.pt --split test` "
                  "(JSON, Markdown, and the error plots below)."]
        lines += [""] + [f"![{p.stem}](results/{p.name})" for p in sorted(plots.glob("*.png"))]
    best = data.get("best")
    if best:
        lines += ["", f"Shipped default: `{best['run']}` (lowest mean test JTFS distance, "
                  f"{best['jtfs_mean']:.4g}), {'float16' if best['half'] else 'float32'} weights, "
                  f"{best['bytes'] / 1e6:.1f} MB, sha256 `{best['sha256']}`."]
    pending = [n for n, rec in records.items() if not rec.done]
    if pending or not data.get("complete"):
        lines += ["", "Not finished: " + (", ".join(pending) if pending else "stages not started")]
    out = docs / "results.md"
    atomic_write(out, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return out


def report_main(argv: Sequence[str]) -> int:
    """``tympan train campaign-report``: docs/results.md from a campaign's state."""
    parser = OneLineParser(prog="tympan train campaign-report", description=(
        "Write the campaign's evaluation table (docs/results.md), its plots and the run files "
        "as they ran (configs/gpu/ran/)."))
    parser.add_argument("--state", required=True, metavar="DIR")
    parser.add_argument("--docs", default="docs", metavar="DIR")
    parser.add_argument("--configs", default="configs/gpu/ran", metavar="DIR")
    args = parser.parse_args(argv)
    if not (Path(args.state) / STATE_FILE).exists():
        raise ValueError(f"{args.state} holds no {STATE_FILE}: run or unpack a campaign first")
    out = write_report(args.state, args.docs, args.configs)
    print(f"wrote {out}")
    return 0
