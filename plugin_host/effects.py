"""The per-kit effects chain (pedalboard), last step before the sound card.

``EffectsConfig`` is the chain as data (kit JSON); ``EffectsChain`` streams blocks through a
``pedalboard.Pedalboard`` with ``reset=False``. The stream equals, bit for bit, whole-signal
processing on a fresh board, for any block sizes, delayed by ``latency_samples``.
Pedalboard 0.9.26 behaviour this relies on or works around:

- ``process`` copies its input and returns a newly allocated array every call: the one
  stage of the audio path that allocates (``measure`` gives the cost).
- A block longer than the largest seen re-prepares the plugins, clearing their state;
  ``[2, 2]`` reuses the last layout seen (an error after a reset); ``[2, 1]`` reads as one
  channel of two samples. So every reset is followed by a silent ``[C, max_block]`` block.
- Latency (limiter lookahead, VST3s) is trimmed off the front of the output while
  streaming; the priming silence fills the delay lines. ``reset=True`` output is compensated.
- ``pedalboard.Limiter`` adds make-up gain and clips at 0 dBFS whatever its threshold; our
  "limiter" is ``BrickwallLimiter``. After one NaN the JUCE limiter emits finite
  full-scale garbage forever, so non-finite input is stopped before the board.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np
import pedalboard as pb


class EffectsError(ValueError):
    """Invalid effects configuration; the message names field, value and what is allowed."""


# type -> parameter -> (default, low, high, unit): declared once; names as in pedalboard.
_SPECS: dict[str, dict[str, tuple[float, float, float, str]]] = {
    "compressor": {"threshold_db": (-18.0, -60.0, 0.0, "dB"), "ratio": (3.0, 1.0, 50.0, ""),
                   "attack_ms": (5.0, 0.01, 500.0, "ms"), "release_ms": (120.0, 1.0, 5e3, "ms")},
    "reverb": {"room_size": (0.25, 0.0, 1.0, ""), "damping": (0.5, 0.0, 1.0, ""),
               "wet_level": (0.12, 0.0, 1.0, ""), "dry_level": (0.88, 0.0, 1.0, ""),
               "width": (1.0, 0.0, 1.0, "")},
    "limiter": {"threshold_db": (-1.0, -40.0, 0.0, "dB"), "release_ms": (60.0, 1.0, 5e3, "ms"),
                "lookahead_ms": (0.25, 0.05, 20.0, "ms")},
    "gain": {"gain_db": (0.0, -60.0, 24.0, "dB")},
    "highpass": {"cutoff_frequency_hz": (30.0, 1.0, 4e4, "Hz")},
    "lowpass": {"cutoff_frequency_hz": (16000.0, 1.0, 4e4, "Hz")},
    "vst3": {},
}
_VST3 = {"path": "a non-empty path string to a .vst3 plugin",
         "parameters": "an object {parameter name: string, number or boolean}"}


@dataclass(frozen=True)
class StageConfig:
    """One stage: ``type`` and all its parameters as sorted ``(name, value)`` pairs."""

    type: str
    params: tuple[tuple[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{k: dict(v) if k == "parameters" else v
                                      for k, v in self.params}}


def _stage(d: Any, where: str) -> StageConfig:
    if not isinstance(d, Mapping):
        raise EffectsError(f"{where} = {d!r} is not an object; allowed: {{\"type\": ..., ...}}")
    kind = d.get("type")
    if kind not in _SPECS:
        raise EffectsError(f"{where}.type = {kind!r} is not a stage type; "
                           f"allowed: {', '.join(_SPECS)}")
    allowed = tuple(_VST3) if kind == "vst3" else tuple(_SPECS[kind])
    out: dict[str, Any] = {k: spec[0] for k, spec in _SPECS[kind].items()}
    for k, v in d.items():
        if k == "type":
            continue
        if k not in allowed:
            raise EffectsError(f"{where}.{k} = {v!r} is not a parameter of a {kind} stage; "
                               f"allowed: {', '.join(allowed)}")
        if kind == "vst3":
            ok = (isinstance(v, str) and v != "") if k == "path" else isinstance(v, Mapping) \
                and all(isinstance(n, str) and isinstance(x, (str, int, float))
                        for n, x in v.items())
            if not ok:
                raise EffectsError(f"{where}.{k} = {v!r} is invalid; allowed: {_VST3[k]}")
            out[k] = tuple(sorted(v.items())) if k == "parameters" else v
            continue
        _, lo, hi, unit = _SPECS[kind][k]
        rng = f"a number in [{lo:g}, {hi:g}] {unit}".rstrip()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise EffectsError(f"{where}.{k} = {v!r} has type {type(v).__name__}; allowed: {rng}")
        if not lo <= v <= hi:  # also catches NaN
            raise EffectsError(f"{where}.{k} = {v!r} is out of range; allowed: {rng}")
        out[k] = float(v)
    if kind == "vst3":
        if "path" not in out:
            raise EffectsError(f"{where}.path is missing; allowed: {_VST3['path']}")
        out.setdefault("parameters", ())
    return StageConfig(kind, tuple(sorted(out.items())))


_DEFAULT_STAGES = tuple(_stage({"type": t}, "effects") for t in ("compressor", "reverb", "limiter"))


@dataclass(frozen=True)
class EffectsConfig:
    """The chain as data: ``{"enabled": true, "stages": [{"type": "reverb", ...}, ...]}``.

    Omitted parameters take the drum-bus defaults of ``_SPECS``; omitted ``stages`` is the
    default chain (``[]`` is no stage).
    """

    enabled: bool = True
    stages: tuple[StageConfig, ...] = _DEFAULT_STAGES

    @classmethod
    def from_dict(cls, d: Any, where: str = "effects") -> EffectsConfig:
        """Validate the JSON form; errors name the field, e.g. ``effects.stages[1].room_size``."""
        if not isinstance(d, Mapping):
            raise EffectsError(f"{where} = {d!r} is not an object; allowed: {{enabled, stages}}")
        for k, v in d.items():
            if k not in ("enabled", "stages"):
                raise EffectsError(f"{where}.{k} = {v!r} is not a field; allowed: enabled, stages")
        enabled, stages = d.get("enabled", True), d.get("stages", None)
        if not isinstance(enabled, bool):
            raise EffectsError(f"{where}.enabled = {enabled!r}; allowed: true or false")
        if stages is None:
            return cls(enabled)
        if not isinstance(stages, (list, tuple)):
            raise EffectsError(f"{where}.stages = {stages!r}; allowed: a list of stage objects")
        return cls(enabled, tuple(_stage(s, f"{where}.stages[{i}]") for i, s in enumerate(stages)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, every parameter written out; ``from_dict(to_dict())`` equals ``self``."""
        return {"enabled": self.enabled, "stages": [s.to_dict() for s in self.stages]}


DEFAULT_EFFECTS = EffectsConfig()
"""Compressor (-18 dB, 3:1, 5/120 ms) -> reverb (room 0.25, wet 0.12, dry 0.88) -> limiter
(ceiling -1 dB, release 60 ms, lookahead 0.25 ms)."""


def _plugin(stage: StageConfig, sample_rate: float, where: str) -> pb.Plugin:
    p = dict(stage.params)
    if stage.type == "vst3":
        if not os.path.exists(p["path"]):
            raise EffectsError(f"{where}.path = {p['path']!r}: no such VST3 plugin file")
        try:
            return pb.load_plugin(p["path"], parameter_values=dict(p["parameters"]))
        except Exception as e:  # ImportError, ValueError, RuntimeError from JUCE
            raise EffectsError(f"{where}.path = {p['path']!r}: could not load it: {e}") from e
    if p.get("cutoff_frequency_hz", 0.0) >= sample_rate / 2:
        raise EffectsError(f"{where}.cutoff_frequency_hz = {p['cutoff_frequency_hz']!r}; "
                           f"allowed: below Nyquist, {sample_rate / 2:g} Hz")
    if stage.type == "limiter":
        return pb.BrickwallLimiter(p["threshold_db"], p["release_ms"], p["lookahead_ms"])
    return {"compressor": pb.Compressor, "reverb": pb.Reverb, "gain": pb.Gain,
            "highpass": pb.HighpassFilter, "lowpass": pb.LowpassFilter}[stage.type](**p)


def build_board(config: EffectsConfig, sample_rate: float) -> pb.Pedalboard:
    """A fresh ``Pedalboard`` of the stages, ignoring ``enabled`` (loads VST3s)."""
    return pb.Pedalboard([_plugin(s, sample_rate, f"effects.stages[{i}]")
                          for i, s in enumerate(config.stages)])


class EffectsChain:
    """Stream ``[C, n]`` float32 blocks through the chain. Build it off the audio thread.

    Parameters
    ----------
    config : EffectsConfig
    sample_rate : float, Hz in [8000, 384000]
    channels : int, ``C`` in [1, 32]
    max_block : int, in [C + 1, 65536] samples; longer blocks are chunked inside pedalboard.

    Attributes
    ----------
    latency_samples : int, output delay (limiter lookahead 0.25 ms: 12 samples at 48 kHz).
    errors : int, blocks replaced by silence because input or output was not finite.
    short_blocks : int, blocks shorter than ``C`` (see ``process``).
    """

    def __init__(self, config: EffectsConfig, sample_rate: float, channels: int = 2,
                 max_block: int = 2048) -> None:
        for name, v, lo, hi, kinds in (("sample_rate", sample_rate, 8000, 384000, (int, float)),
                                       ("channels", channels, 1, 32, int),
                                       ("max_block", max_block, int(channels) + 1, 1 << 16, int)):
            if isinstance(v, bool) or not isinstance(v, kinds) or not lo <= v <= hi:
                raise EffectsError(f"{name} = {v!r}; allowed: [{lo}, {hi}] "
                                   + ("Hz" if kinds is not int else "(integer)"))
        self.config, self.sample_rate = config, float(sample_rate)
        self.channels, self.max_block = int(channels), int(max_block)
        self.errors = self.short_blocks = self.latency_samples = 0
        on = config.enabled and len(config.stages) > 0
        self._board = build_board(config, sample_rate) if on else None
        self._silence = np.zeros((self.channels, self.max_block), np.float32)
        self._held = np.zeros((self.channels, self.channels), np.float32)
        self._n_held = 0
        self._last = np.zeros((self.channels, 1), np.float32)
        self.reset()

    def reset(self) -> None:
        """Clear all state (tails, envelopes), then prime layout, block size and lookahead."""
        self._n_held, self._last[:] = 0, 0.0
        if self._board is None:
            return
        self._board.reset()
        self.latency_samples = 0
        for _ in range(64):  # silence until every lookahead delay line is full
            got = self._board.process(self._silence, self.sample_rate, self.max_block, False)
            self.latency_samples += self.max_block - got.shape[1]
            if got.shape[1] == self.max_block:
                break

    def warm_up(self, blocks: int = 8) -> None:
        """Pass ``blocks`` silent blocks each of 64, 128, 256, ``max_block`` samples through."""
        for n in (64, 128, 256, self.max_block):
            for _ in range(blocks):
                self.process(self._silence[:, :min(n, self.max_block)])

    def process(self, block: np.ndarray) -> np.ndarray:
        """Process one block; state carries over to the next.

        Parameters
        ----------
        block : numpy.ndarray, float32, shape ``[C, n]``, n >= 1, full scale 1; not modified.

        Returns
        -------
        numpy.ndarray, float32, shape ``[C, n]``
            Newly allocated by pedalboard; ``block`` itself when disabled. Non-finite input
            or output: zeros, a reset and ``errors += 1``. A block with ``n < C`` (pedalboard
            would misread its layout) is held and processed in front of the next one: its
            output repeats the last output sample; everything else stays exact.
        """
        if self._board is None:
            return block
        n = block.shape[1]
        if not math.isfinite(np.add.reduce(block, axis=None)):  # float32 sum, ~1 us
            return self._fail(n)
        k = self._n_held
        if k + n < self.channels:
            self._held[:, k:k + n] = block
            self._n_held, self.short_blocks = k + n, self.short_blocks + 1
            return np.repeat(self._last, n, axis=1)
        if k:
            block, self._n_held = np.concatenate([self._held[:, :k], block], axis=1), 0
        out = self._board.process(block, self.sample_rate, self.max_block, False)
        if (gap := block.shape[1] - out.shape[1]) > 0:  # a plugin's latency grew: pad in front
            self.latency_samples += gap
            out = np.concatenate([np.zeros((self.channels, gap), np.float32), out], axis=1)
        out = out[:, k:] if k else out
        if not math.isfinite(np.add.reduce(out, axis=None)):
            return self._fail(n)
        self._last[:, 0] = out[:, -1]
        return out

    def _fail(self, n: int) -> np.ndarray:
        self.errors += 1
        self.reset()
        return np.zeros((self.channels, n), np.float32)


class BlockCost(NamedTuple):
    """Wall time of ``EffectsChain.process`` per ``block``-sample block over ``n`` blocks, us."""
    block: int
    n: int
    median_us: float
    p99_us: float
    max_us: float


def measure(chain: EffectsChain, block: int, n: int = 2000) -> BlockCost:
    """Time ``n`` C-contiguous ``[C, block]`` blocks of noise hits, 16 per second.

    Warms the chain up first and resets it afterwards.
    """
    t = np.arange(n * block) % max(1, int(chain.sample_rate / 16))
    sig = np.random.default_rng(0).standard_normal((chain.channels, n * block))
    sig *= 0.5 * np.exp(-t / (0.02 * chain.sample_rate))
    blocks = sig.astype(np.float32).reshape(chain.channels, n, block).transpose(1, 0, 2).copy()
    chain.warm_up()
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        chain.process(blocks[i])
        times[i] = (time.perf_counter_ns() - t0) / 1e3
    chain.reset()
    return BlockCost(block, n, float(np.median(times)), float(np.percentile(times, 99)),
                     float(times.max()))
