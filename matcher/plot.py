"""A picture of a match: target and matched hit side by side (waveform and CQT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synth.files import atomic_write

__all__ = ["plot_match", "save_figure"]


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def plot_match(target: np.ndarray, matched: np.ndarray, features: torch.nn.Module, sr: float,
               path: str | Path, title: str = "") -> Path:
    """Write a PNG: waveforms on top, log-CQT images below (target left, match right).

    Parameters
    ----------
    target, matched : np.ndarray, ``[N]``
        Model-side audio (peak 1) at ``sr`` Hz.
    features : CQTFeatures
        The model's front end (``[B, N] -> [B, bins, frames]``).
    path : str or Path
        Output file (PNG), written atomically.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dev = next(iter(features.buffers())).device
    x = torch.tensor(np.stack([target, matched]), dtype=torch.float32, device=dev)
    with torch.no_grad():
        cqt = features(x).cpu().numpy()                                # [2, bins, frames]
    cfg = features.cfg
    t = np.arange(len(target)) / sr
    extent = (0.0, len(target) / sr, 0, cfg.n_bins)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharex=True)
    vmax = float(cqt.max()) or 1.0
    for col, (name, y, c) in enumerate((("target", target, cqt[0]), ("match", matched, cqt[1]))):
        axes[0, col].plot(t, y, lw=0.5, color="tab:blue")
        axes[0, col].set_title(name)
        axes[0, col].set_ylim(-1.05, 1.05)
        axes[1, col].imshow(c, origin="lower", aspect="auto", extent=extent, vmin=0, vmax=vmax,
                            cmap="magma")
        axes[1, col].set_xlabel("time (s)")
    axes[0, 0].set_ylabel("amplitude")
    # label CQT rows by frequency at whole octaves
    octaves = np.arange(0, cfg.n_bins, cfg.bins_per_octave)
    axes[1, 0].set_yticks(octaves)
    axes[1, 0].set_yticklabels([f"{cfg.fmin * 2 ** (k / cfg.bins_per_octave):.0f}" for k in octaves])
    axes[1, 0].set_ylabel("CQT bin centre (Hz)")
    axes[1, 1].set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
