"""The membrane's five parameters, declared once.

Every range, scale, unit and description used anywhere in Tympan derives from
:data:`PARAMS`: validation, clamping, the physical <-> normalized mapping and the
CLI help. The normalized coordinates ``nu`` live in ``[-1, 1]^5``: log-scaled
parameters are mapped through ``log10`` first, then every parameter is
min-max scaled to ``[-1, 1]``.

The aspect ratio ``alpha`` lives in ``(0, 1]``: its normalized range spans
``[0, 1]`` but ``alpha = 0`` (a membrane of zero width) is not a membrane, so
validation rejects it and clamping lifts it to :data:`ALPHA_FLOOR`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping

import numpy as np

__all__ = [
    "ALPHA_FLOOR",
    "DrumParams",
    "NAMES",
    "PARAMS",
    "ParamSpec",
    "ParameterError",
    "ParameterRangeError",
    "ParameterTypeError",
    "ParameterValueError",
    "clamp_theta",
    "nu_to_theta",
    "theta_to_nu",
    "validate_theta",
]

# Smallest aspect ratio the synthesizer is given. The mode formulas stay exact
# down to ~1e-6 (see synth.ftm), so this only keeps alpha strictly positive.
ALPHA_FLOOR = 1e-4


@dataclass(frozen=True)
class ParamSpec:
    """One physical parameter of the membrane.

    Attributes
    ----------
    name : str
        Identifier used in code, files and on the command line.
    unit : str
        Physical unit as shown to users ("" for dimensionless).
    low, high : float
        Range in physical units.
    scale : {"log", "linear"}
        Sampling scale; also the scale of the normalized coordinate.
    description : str
        One line for help texts.
    low_inclusive : bool
        Whether ``low`` itself is a valid value.
    """

    name: str
    unit: str
    low: float
    high: float
    scale: Literal["log", "linear"]
    description: str
    low_inclusive: bool = True

    def contains(self, value: float) -> bool:
        """Whether a finite ``value`` lies in the range."""
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high

    def range_text(self) -> str:
        """The range as users read it, for example ``[40, 1000] Hz``."""
        left = "[" if self.low_inclusive else "("
        unit = f" {self.unit}" if self.unit else ""
        return f"{left}{self.low:g}, {self.high:g}]{unit}"


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("f0", "Hz", 40.0, 1000.0, "log",
              "fundamental frequency, omega / 2 pi"),
    ParamSpec("tau", "s", 0.07, 0.8, "linear",
              "decay time of the fundamental (amplitude falls by 1/e)"),
    ParamSpec("p", "", 1e-5, 0.2, "log",
              "frequency-dependent damping (higher modes die faster)"),
    ParamSpec("D", "", 1e-5, 0.3, "log",
              "dispersion (inharmonicity: stiffness spreads the partials)"),
    ParamSpec("alpha", "", 0.0, 1.0, "linear",
              "aspect ratio of the rectangular membrane (side 2 / side 1)",
              low_inclusive=False),
)

NAMES: tuple[str, ...] = tuple(spec.name for spec in PARAMS)
_SPEC = {spec.name: spec for spec in PARAMS}
_LOG = np.array([spec.scale == "log" for spec in PARAMS])
# Bounds of the normalized mapping, in the scale's own coordinate.
_LO = np.array([math.log10(s.low) if s.scale == "log" else s.low for s in PARAMS])
_HI = np.array([math.log10(s.high) if s.scale == "log" else s.high for s in PARAMS])
_CLAMP_LO = np.array([ALPHA_FLOOR if s.name == "alpha" else s.low for s in PARAMS])
_CLAMP_HI = np.array([s.high for s in PARAMS])
# The point a non-finite value falls back to when clamping: the range's centre.
_CENTRE = np.array([
    10 ** ((lo + hi) / 2) if log else (lo + hi) / 2 for lo, hi, log in zip(_LO, _HI, _LOG)
])


class ParameterError(ValueError):
    """A membrane parameter is missing, of the wrong type, not finite or out of range."""

    def __init__(self, name: str, value: Any, problem: str, where: str = ""):
        spec = _SPEC.get(name)
        allowed = f"allowed: {spec.range_text()}" if spec else f"allowed names: {', '.join(NAMES)}"
        super().__init__(f"parameter {name!r}{where} = {value!r} {problem}; {allowed}")
        self.name = name
        self.value = value


class ParameterTypeError(ParameterError, TypeError):
    """The value is not a real number (or the name is unknown)."""


class ParameterValueError(ParameterError):
    """The value is NaN or infinite."""


class ParameterRangeError(ParameterError):
    """The value is finite but outside the parameter's range."""


def check_value(name: str, value: Any, where: str = "") -> float:
    """Check one parameter at an API boundary and return it as a float.

    ``where`` is appended to the name in messages, e.g. ``" (batch item 3)"``.

    Raises
    ------
    ParameterTypeError
        Unknown name, or a value that is not a real number (bools included).
    ParameterValueError
        NaN or infinity.
    ParameterRangeError
        Outside the range of :data:`PARAMS`.
    """
    if name not in _SPEC:
        raise ParameterTypeError(name, value, "is not a membrane parameter", where)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(name, value, f"is a {type(value).__name__}, not a real number",
                                 where)
    x = float(value)
    if not math.isfinite(x):
        raise ParameterValueError(name, value, "is not finite", where)
    if not _SPEC[name].contains(x):
        raise ParameterRangeError(name, value, "is out of range", where)
    return x


@dataclass(frozen=True)
class DrumParams:
    """A validated point in the membrane's parameter space (physical units).

    Construction checks every field; an invalid value raises a
    :class:`ParameterError` naming the parameter, value, range and unit.
    """

    f0: float
    tau: float
    p: float
    D: float
    alpha: float

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_value(f.name, getattr(self, f.name)))

    @property
    def omega(self) -> float:
        """Angular fundamental frequency in rad/s."""
        return 2.0 * math.pi * self.f0

    def to_array(self) -> np.ndarray:
        """``theta`` as a float64 array of shape ``[5]`` in :data:`NAMES` order."""
        return np.array([getattr(self, n) for n in NAMES], dtype=np.float64)

    def to_dict(self) -> dict[str, float]:
        return {n: getattr(self, n) for n in NAMES}

    def to_nu(self) -> np.ndarray:
        """Normalized coordinates, shape ``[5]`` in ``[-1, 1]``."""
        return theta_to_nu(self.to_array())

    @classmethod
    def from_array(cls, theta: np.ndarray | list[float]) -> "DrumParams":
        """Build from ``theta`` of shape ``[5]`` (validated)."""
        arr = np.asarray(theta)
        if arr.shape != (5,):
            raise ParameterTypeError("theta", theta, f"has shape {arr.shape}, expected (5,)")
        return cls(*(x.item() for x in arr))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DrumParams":
        """Build from a mapping with exactly the five names (validated)."""
        unknown = sorted(set(values) - set(NAMES))
        if unknown:
            raise ParameterTypeError(unknown[0], values[unknown[0]], "is not a membrane parameter")
        missing = [n for n in NAMES if n not in values]
        if missing:
            raise ParameterTypeError(missing[0], None, "is missing")
        return cls(**{n: values[n] for n in NAMES})

    @classmethod
    def from_nu(cls, nu: np.ndarray | list[float]) -> "DrumParams":
        """Build from normalized coordinates of shape ``[5]``, clamped into range."""
        return cls.from_array(clamp_theta(nu_to_theta(np.asarray(nu, dtype=np.float64))))

    @classmethod
    def clamped(cls, theta: np.ndarray | list[float]) -> "DrumParams":
        """Build from any ``theta`` of shape ``[5]``, clamping instead of raising."""
        return cls.from_array(clamp_theta(theta))


def validate_theta(theta: np.ndarray) -> np.ndarray:
    """Check a batch ``theta`` of shape ``[..., 5]``; return it as float64.

    Raises the first :class:`ParameterError` found, naming the batch index.
    """
    arr = np.asarray(theta)
    if arr.ndim == 0 or arr.shape[-1] != 5 or not np.issubdtype(arr.dtype, np.number):
        raise ParameterTypeError("theta", f"array of shape {arr.shape} dtype {arr.dtype}",
                                 "must be a real array of shape [..., 5]")
    arr = arr.astype(np.float64)
    flat = arr.reshape(-1, 5)
    for i, row in enumerate(flat):
        where = f" (batch item {i})" if flat.shape[0] > 1 else ""
        for name, x in zip(NAMES, row):
            check_value(name, float(x), where)
    return arr


def clamp_theta(theta: np.ndarray | list[float]) -> np.ndarray:
    """Clamp ``theta`` of shape ``[..., 5]`` into the valid ranges; never raises.

    Non-finite entries fall back to the centre of their range (a hit that
    plays rather than a NaN that silences the voice).
    """
    arr = np.array(theta, dtype=np.float64, copy=True)
    bad = ~np.isfinite(arr)
    if bad.any():
        arr[bad] = np.broadcast_to(_CENTRE, arr.shape)[bad]
    return np.clip(arr, _CLAMP_LO, _CLAMP_HI)


def theta_to_nu(theta: Any) -> Any:
    """Physical ``theta`` ``[..., 5]`` -> normalized ``nu`` ``[..., 5]``.

    Works on numpy arrays and torch tensors alike (differentiable in torch).
    """
    if _is_torch(theta):
        import torch

        log = torch.as_tensor(_LOG, device=theta.device)
        lo = torch.as_tensor(_LO, dtype=theta.dtype, device=theta.device)
        hi = torch.as_tensor(_HI, dtype=theta.dtype, device=theta.device)
        scaled = torch.where(log, torch.log10(torch.where(log, theta, torch.ones_like(theta))), theta)
        return 2.0 * (scaled - lo) / (hi - lo) - 1.0
    arr = np.asarray(theta, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(_LOG, np.log10(np.where(_LOG, arr, 1.0)), arr)
    return 2.0 * (scaled - _LO) / (_HI - _LO) - 1.0


def nu_to_theta(nu: Any) -> Any:
    """Normalized ``nu`` ``[..., 5]`` -> physical ``theta`` ``[..., 5]``.

    The inverse of :func:`theta_to_nu`; no clamping (``nu`` outside
    ``[-1, 1]`` maps outside the ranges). Numpy or torch (differentiable).
    """
    if _is_torch(nu):
        import torch

        log = torch.as_tensor(_LOG, device=nu.device)
        lo = torch.as_tensor(_LO, dtype=nu.dtype, device=nu.device)
        hi = torch.as_tensor(_HI, dtype=nu.dtype, device=nu.device)
        scaled = (nu + 1.0) / 2.0 * (hi - lo) + lo
        return torch.where(log, torch.pow(10.0, scaled), scaled)
    arr = np.asarray(nu, dtype=np.float64)
    scaled = (arr + 1.0) / 2.0 * (_HI - _LO) + _LO
    return np.where(_LOG, 10.0 ** scaled, scaled)


def _is_torch(x: Any) -> bool:
    # Checked by module name so that numpy callers never import torch.
    return type(x).__module__.startswith("torch")
