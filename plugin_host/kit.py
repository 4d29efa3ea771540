"""Kits: MIDI notes -> pads of membrane voices, as versioned JSON files.

A kit file is a JSON object::

    {"format": "tympan-kit", "version": 1, "name": "...",
     "pitch_bend_range": 2.0,                      # semitones
     "pads": [{"note": 36, "name": "Kick",
               "params": {"f0": 52, "tau": 0.45, "p": 0.004, "D": 0.01, "alpha": 0.95},
               "gain_db": 0.0, "pan": 0.0, "choke_group": null,
               "velocity": {"range_db": 30.0, "curve": 1.0},
               "tracking": null,                    # or {"root": 60, "low": 55, "high": 72}
               "retrigger": "new"}, ...],
     "cc_map": [{"cc": 74, "param": "tau", "depth": 0.5, "pad": null}],
     "effects": {...}}                              # see plugin_host.effects

Every value is checked on load; an error names the field path (for example
``pads[2].velocity.range_db``), the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from synth.files import atomic_write
from synth.params import NAMES, DrumParams, ParameterError

__all__ = ["CCMapping", "Kit", "KitError", "Pad", "Tracking", "VelocityCurve",
           "KIT_FORMAT", "KIT_VERSION", "load_default_kit", "load_kit"]

KIT_FORMAT = "tympan-kit"
KIT_VERSION = 1
RETRIGGER = ("new", "restart")


class KitError(ValueError):
    """A kit file or value is malformed; the message names the field."""


def _fail(path: str, value: Any, allowed: str) -> KitError:
    return KitError(f"kit field {path} = {value!r} is invalid; allowed: {allowed}")


def _number(d: Mapping[str, Any], key: str, path: str, low: float, high: float,
            default: float | None = None, unit: str = "") -> float:
    value = d.get(key, default)
    where = f"{path}.{key}" if path else key
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, value, f"a number in [{low:g}, {high:g}]{unit}")
    if not low <= value <= high:
        raise _fail(where, value, f"[{low:g}, {high:g}]{unit}")
    return float(value)


def _integer(d: Mapping[str, Any], key: str, path: str, low: int, high: int,
             default: int | None = None, nullable: bool = False) -> int | None:
    value = d.get(key, default)
    where = f"{path}.{key}" if path else key
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, value, f"an integer in [{low}, {high}]" + (" or null" if nullable else ""))
    return value


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, value, "a JSON object")
    return value


def _known(d: Mapping[str, Any], path: str, keys: tuple[str, ...]) -> None:
    extra = sorted(set(d) - set(keys))
    if extra:
        raise _fail(f"{path}.{extra[0]}" if path else extra[0], d[extra[0]],
                    f"known fields {', '.join(keys)}")


@dataclass(frozen=True)
class VelocityCurve:
    """MIDI velocity -> gain: ``gain_dB = -range_db * (1 - (v / 127) ** curve)``.

    Velocity 127 plays at 0 dB, velocity 1 at about ``-range_db``; ``curve`` < 1
    makes soft playing louder, > 1 quieter. Monotonic for any valid values.
    """

    range_db: float = 30.0
    curve: float = 1.0

    def gain(self, velocity: int) -> float:
        """Linear gain for a MIDI velocity 1..127."""
        x = min(max(velocity, 0), 127) / 127.0
        return 10.0 ** (-self.range_db * (1.0 - x ** self.curve) / 20.0)

    @classmethod
    def from_dict(cls, d: Any, path: str) -> "VelocityCurve":
        d = _object(d, path)
        _known(d, path, ("range_db", "curve"))
        return cls(_number(d, "range_db", path, 0.0, 96.0, 30.0, " dB"),
                   _number(d, "curve", path, 0.1, 10.0, 1.0))


@dataclass(frozen=True)
class Tracking:
    """Pitch tracking: notes ``low..high`` play the pad, transposing f0 by ``note - root``."""

    root: int
    low: int
    high: int

    @classmethod
    def from_dict(cls, d: Any, path: str) -> "Tracking":
        d = _object(d, path)
        _known(d, path, ("root", "low", "high"))
        root = _integer(d, "root", path, 0, 127)
        low = _integer(d, "low", path, 0, 127, root)
        high = _integer(d, "high", path, 0, 127, root)
        if not low <= root <= high:
            raise _fail(path, dict(d), "low <= root <= high")
        return cls(root, low, high)


@dataclass(frozen=True)
class Pad:
    """One pad: a membrane preset and how MIDI plays it."""

    note: int
    name: str
    params: DrumParams
    gain_db: float = 0.0
    pan: float = 0.0
    choke_group: int | None = None
    velocity: VelocityCurve = field(default_factory=VelocityCurve)
    tracking: Tracking | None = None
    retrigger: str = "new"

    @property
    def notes(self) -> range:
        """MIDI notes this pad answers to."""
        if self.tracking is None:
            return range(self.note, self.note + 1)
        return range(self.tracking.low, self.tracking.high + 1)

    def f0_for(self, note: int) -> float:
        """Fundamental for ``note`` (pitch tracking), before clamping to the range."""
        if self.tracking is None:
            return self.params.f0
        return self.params.f0 * 2.0 ** ((note - self.tracking.root) / 12.0)

    def to_dict(self) -> dict[str, Any]:
        return {"note": self.note, "name": self.name, "params": self.params.to_dict(),
                "gain_db": self.gain_db, "pan": self.pan, "choke_group": self.choke_group,
                "velocity": {"range_db": self.velocity.range_db, "curve": self.velocity.curve},
                "tracking": None if self.tracking is None else
                {"root": self.tracking.root, "low": self.tracking.low, "high": self.tracking.high},
                "retrigger": self.retrigger}

    @classmethod
    def from_dict(cls, d: Any, path: str) -> "Pad":
        d = _object(d, path)
        _known(d, path, ("note", "name", "params", "gain_db", "pan", "choke_group", "velocity",
                         "tracking", "retrigger"))
        note = _integer(d, "note", path, 0, 127)
        name = d.get("name", f"Pad {note}")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise _fail(f"{path}.name", name, "a string of 1 to 64 characters")
        params = _object(d.get("params"), f"{path}.params")
        try:
            drum = DrumParams.from_dict(params)
        except ParameterError as err:
            raise KitError(f"kit field {path}.params.{err.name}: {err}") from None
        retrigger = d.get("retrigger", "new")
        if retrigger not in RETRIGGER:
            raise _fail(f"{path}.retrigger", retrigger, ", ".join(RETRIGGER))
        tracking = d.get("tracking")
        return cls(note=note, name=name, params=drum,
                   gain_db=_number(d, "gain_db", path, -60.0, 12.0, 0.0, " dB"),
                   pan=_number(d, "pan", path, -1.0, 1.0, 0.0),
                   choke_group=_integer(d, "choke_group", path, 1, 16, None, nullable=True),
                   velocity=VelocityCurve.from_dict(d.get("velocity", {}), f"{path}.velocity"),
                   tracking=None if tracking is None else
                   Tracking.from_dict(tracking, f"{path}.tracking"),
                   retrigger=retrigger)


@dataclass(frozen=True)
class CCMapping:
    """A MIDI CC moving one parameter of one pad (or all pads), learned or written.

    The offset is applied in normalized coordinates:
    ``nu += depth * (value - 64) / 63.5`` (value 64 = no change), then clamped.
    """

    cc: int
    param: str
    depth: float = 0.5
    pad: int | None = None      # a pad's note, or None for every pad

    def to_dict(self) -> dict[str, Any]:
        return {"cc": self.cc, "param": self.param, "depth": self.depth, "pad": self.pad}

    @classmethod
    def from_dict(cls, d: Any, path: str) -> "CCMapping":
        d = _object(d, path)
        _known(d, path, ("cc", "param", "depth", "pad"))
        param = d.get("param")
        if param not in NAMES:
            raise _fail(f"{path}.param", param, ", ".join(NAMES))
        return cls(cc=_integer(d, "cc", path, 0, 119),
                   param=param, depth=_number(d, "depth", path, -2.0, 2.0, 0.5),
                   pad=_integer(d, "pad", path, 0, 127, None, nullable=True))


@dataclass(frozen=True)
class Kit:
    """A named set of pads with its controller map and effects chain."""

    name: str
    pads: tuple[Pad, ...]
    pitch_bend_range: float = 2.0
    cc_map: tuple[CCMapping, ...] = ()
    effects: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        owner: dict[int, int] = {}
        for i, pad in enumerate(self.pads):
            for note in pad.notes:
                if note in owner:
                    raise _fail(f"pads[{i}].note", note,
                                f"a note no other pad plays (pads[{owner[note]}] has it)")
                owner[note] = i
        object.__setattr__(self, "_owner", owner)

    def pad_index(self, note: int) -> int | None:
        """Index of the pad that plays ``note``, or None."""
        return self._owner.get(note)  # type: ignore[attr-defined]

    def with_pad(self, pad: Pad) -> "Kit":
        """A copy with the pad on ``pad.note`` replaced (or added)."""
        pads = [p for p in self.pads if p.note != pad.note] + [pad]
        return replace(self, pads=tuple(sorted(pads, key=lambda p: p.note)))

    def with_mapping(self, mapping: CCMapping) -> "Kit":
        """A copy with ``mapping`` added, replacing any mapping of the same CC and pad."""
        kept = [m for m in self.cc_map if (m.cc, m.pad) != (mapping.cc, mapping.pad)]
        return replace(self, cc_map=tuple(kept + [mapping]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": KIT_FORMAT, "version": KIT_VERSION, "name": self.name,
                               "pitch_bend_range": self.pitch_bend_range,
                               "pads": [p.to_dict() for p in self.pads],
                               "cc_map": [m.to_dict() for m in self.cc_map]}
        if self.effects is not None:
            out["effects"] = dict(self.effects)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "Kit":
        d = _object(d, "kit")
        _known(d, "", ("format", "version", "name", "pitch_bend_range", "pads", "cc_map",
                       "effects"))
        if d.get("format") != KIT_FORMAT:
            raise _fail("format", d.get("format"), repr(KIT_FORMAT))
        if d.get("version") != KIT_VERSION:
            raise _fail("version", d.get("version"), f"{KIT_VERSION} (this Tympan reads kit "
                        f"files of version {KIT_VERSION})")
        name = d.get("name", "Untitled kit")
        if not isinstance(name, str) or not name:
            raise _fail("name", name, "a non-empty string")
        pads = d.get("pads")
        if not isinstance(pads, list) or not 1 <= len(pads) <= 128:
            raise _fail("pads", pads, "a list of 1 to 128 pads")
        cc_map = d.get("cc_map", [])
        if not isinstance(cc_map, list):
            raise _fail("cc_map", cc_map, "a list of mappings")
        effects = d.get("effects")
        if effects is not None:
            _check_effects(effects)
        return cls(name=name,
                   pads=tuple(Pad.from_dict(p, f"pads[{i}]") for i, p in enumerate(pads)),
                   pitch_bend_range=_number(d, "pitch_bend_range", "", 0.0, 24.0, 2.0,
                                            " semitones"),
                   cc_map=tuple(CCMapping.from_dict(m, f"cc_map[{i}]")
                                for i, m in enumerate(cc_map)),
                   effects=effects)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Kit":
        """Read and validate a kit file; errors name the file and the field."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise KitError(f"cannot read kit {str(p)!r}: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise KitError(f"kit {str(p)!r} is not valid JSON: {err}") from None
        try:
            return cls.from_dict(data)
        except KitError as err:
            raise KitError(f"kit {str(p)!r}: {err}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the kit as JSON, atomically (temporary file, then rename)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _check_effects(effects: Any) -> None:
    from .effects import EffectsConfig, EffectsError

    try:
        EffectsConfig.from_dict(effects)
    except EffectsError as err:
        raise KitError(f"kit field {err}") from None


def load_default_kit() -> Kit:
    """The General MIDI kit shipped with Tympan."""
    text = resources.files("plugin_host").joinpath("kits", "gm.json").read_text(encoding="utf-8")
    return Kit.from_dict(json.loads(text))


def load_kit(path: str | os.PathLike[str] | None) -> Kit:
    """The kit a command's ``--kit FILE`` names, or the General MIDI kit when None.

    Raises
    ------
    KitError
        The file is missing, unreadable or not a valid kit (see :meth:`Kit.load`).
    """
    return load_default_kit() if path is None else Kit.load(path)
