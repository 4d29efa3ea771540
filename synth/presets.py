"""A small showcase of membrane presets (used by ``tympan demo``).

Each is a point of the reference ranges chosen for a recognisable character;
the comment says what shapes it.
"""

from __future__ import annotations

from .params import DrumParams

__all__ = ["PRESETS"]

PRESETS: dict[str, DrumParams] = {
    # Low, long, nearly harmonic: square-ish head, little stiffness.
    "kick": DrumParams(f0=48.0, tau=0.45, p=0.004, D=0.01, alpha=0.95),
    # Floor and rack toms: moderate damping so the overtones fade first.
    "floor_tom": DrumParams(f0=82.0, tau=0.6, p=0.008, D=0.02, alpha=0.9),
    "rack_tom": DrumParams(f0=150.0, tau=0.45, p=0.01, D=0.03, alpha=0.85),
    # Short and dense: strong dispersion spreads the partials like a snare head.
    "snare_head": DrumParams(f0=210.0, tau=0.18, p=0.03, D=0.25, alpha=0.7),
    # Ringing, almost undamped high modes: a tabla-like tone.
    "tabla": DrumParams(f0=330.0, tau=0.8, p=1e-4, D=0.002, alpha=1.0),
    # Narrow strip, heavy damping: a dry wood-block knock.
    "wood_block": DrumParams(f0=780.0, tau=0.07, p=0.15, D=0.1, alpha=0.25),
}
