"""The parameter table and the API boundary of synth.params.

Checks the declared ranges against DESIGN.md, every kind of bad input
(out of range on either side, NaN, +-inf, wrong type, unknown or missing
name) and the message it raises, the physical <-> normalized mapping (numpy
and torch) and clamping.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from synth.params import (
    ALPHA_FLOOR,
    NAMES,
    PARAMS,
    DrumParams,
    ParameterError,
    ParameterRangeError,
    ParameterTypeError,
    ParameterValueError,
    clamp_theta,
    nu_to_theta,
    theta_to_nu,
    validate_theta,
)

# The protocol ranges of DESIGN.md, written out independently of PARAMS:
# name -> (low, high, scale, unit, range text users read).
EXPECTED = {
    "f0": (40.0, 1000.0, "log", "Hz", "[40, 1000] Hz"),
    "tau": (0.07, 0.8, "linear", "s", "[0.07, 0.8] s"),
    "p": (1e-5, 0.2, "log", "", "[1e-05, 0.2]"),
    "D": (1e-5, 0.3, "log", "", "[1e-05, 0.3]"),
    "alpha": (0.0, 1.0, "linear", "", "(0, 1]"),
}
VALID = {"f0": 220.0, "tau": 0.3, "p": 1e-3, "D": 1e-2, "alpha": 0.7}


def _with(name: str, value) -> dict:
    return {**VALID, name: value}


def _assert_message(err: ParameterError, name: str, value) -> None:
    """The message names the parameter, the value, the range and the unit."""
    text = str(err)
    assert repr(name) in text
    assert repr(value) in text
    assert EXPECTED[name][4] in text
    unit = EXPECTED[name][3]
    if unit:
        assert text.rstrip().endswith(unit)
    assert err.name == name


# --- the table -------------------------------------------------------------

def test_table_matches_design():
    assert NAMES == ("f0", "tau", "p", "D", "alpha")
    for spec in PARAMS:
        low, high, scale, unit, text = EXPECTED[spec.name]
        assert (spec.low, spec.high, spec.scale, spec.unit) == (low, high, scale, unit)
        assert spec.range_text() == text
        assert spec.description
    # alpha is the only range open at the low end
    assert [s.name for s in PARAMS if not s.low_inclusive] == ["alpha"]


def test_valid_values_are_accepted_and_stored_as_float():
    d = DrumParams(**VALID)
    assert d.to_dict() == VALID
    assert all(type(getattr(d, n)) is float for n in NAMES)
    np.testing.assert_array_equal(d.to_array(), [VALID[n] for n in NAMES])
    assert d.to_array().dtype == np.float64
    assert d.omega == 2.0 * math.pi * 220.0
    # ints and numpy scalars are real numbers too
    e = DrumParams(f0=220, tau=np.float32(0.25), p=np.float64(1e-3), D=1e-2, alpha=np.int64(1))
    assert e.f0 == 220.0 and e.alpha == 1.0 and e.tau == float(np.float32(0.25))


@pytest.mark.parametrize("name", NAMES)
def test_range_ends(name):
    low, high, *_ = EXPECTED[name]
    assert getattr(DrumParams(**_with(name, high)), name) == high
    if name == "alpha":
        with pytest.raises(ParameterRangeError) as info:
            DrumParams(**_with(name, 0.0))      # a membrane of zero width
        _assert_message(info.value, name, 0.0)
        assert DrumParams(**_with(name, 1.0)).alpha == 1.0
        assert DrumParams(**_with(name, 1e-9)).alpha == 1e-9
    else:
        assert getattr(DrumParams(**_with(name, low)), name) == low


def _outside(name):
    low, high, *_ = EXPECTED[name]
    below = -0.1 if name == "alpha" else low * (1 - 1e-6)
    return [below, high * (1 + 1e-6), -1e300 if name != "alpha" else -5.0, 1e300]


@pytest.mark.parametrize("name,value", [(n, v) for n in NAMES for v in _outside(n)])
def test_out_of_range_raises_with_full_message(name, value):
    with pytest.raises(ParameterRangeError) as info:
        DrumParams(**_with(name, value))
    assert isinstance(info.value, ParameterError) and isinstance(info.value, ValueError)
    assert "out of range" in str(info.value)
    _assert_message(info.value, name, value)


def test_message_examples():
    with pytest.raises(ParameterRangeError, match=r"'f0' = 2000\.0 .*\[40, 1000\] Hz"):
        DrumParams(**_with("f0", 2000.0))
    with pytest.raises(ParameterRangeError, match=r"'tau' = 0\.01 .*\[0\.07, 0\.8\] s"):
        DrumParams(**_with("tau", 0.01))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"),
                                   np.float32("inf")])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_raises(name, value):
    with pytest.raises(ParameterValueError) as info:
        DrumParams(**_with(name, value))
    assert "not finite" in str(info.value)
    _assert_message(info.value, name, value)
    assert not isinstance(info.value, ParameterRangeError)


@pytest.mark.parametrize("value", ["220", None, True, False, np.bool_(True), 1 + 0j,
                                   complex(220.0, 0.0), [220.0], b"1"],
                         ids=["str", "None", "True", "False", "np.bool_", "complex1",
                              "complex220", "list", "bytes"])
@pytest.mark.parametrize("name", NAMES)
def test_wrong_type_raises(name, value):
    with pytest.raises(ParameterTypeError) as info:
        DrumParams(**_with(name, value))
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert "not a real number" in str(info.value)
    _assert_message(info.value, name, value)


def test_unknown_and_missing_names():
    with pytest.raises(ParameterTypeError) as info:
        DrumParams.from_dict({**VALID, "gain": 0.5})
    text = str(info.value)
    assert "'gain'" in text and "0.5" in text
    assert "allowed names: f0, tau, p, D, alpha" in text
    for name in NAMES:
        values = dict(VALID)
        del values[name]
        with pytest.raises(ParameterTypeError) as info:
            DrumParams.from_dict(values)
        assert repr(name) in str(info.value) and "missing" in str(info.value)
        assert EXPECTED[name][4] in str(info.value)
    assert DrumParams.from_dict(VALID) == DrumParams(**VALID)


def test_from_array_checks_shape_and_values():
    d = DrumParams.from_array([VALID[n] for n in NAMES])
    assert d == DrumParams(**VALID)
    with pytest.raises(ParameterTypeError, match="shape"):
        DrumParams.from_array([1.0, 2.0, 3.0])
    with pytest.raises(ParameterTypeError, match="shape"):
        DrumParams.from_array(np.ones((2, 5)))
    with pytest.raises(ParameterValueError, match="'p'"):
        DrumParams.from_array([220.0, 0.3, np.nan, 1e-2, 0.7])


def test_drum_params_is_frozen_and_hashable():
    d = DrumParams(**VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.f0 = 100.0  # type: ignore[misc]
    assert hash(d) == hash(DrumParams(**VALID))


# --- validate_theta --------------------------------------------------------

def test_validate_theta_batch_names_item():
    theta = np.tile([VALID[n] for n in NAMES], (4, 1))
    np.testing.assert_array_equal(validate_theta(theta), theta)
    assert validate_theta(theta.astype(np.float32)).dtype == np.float64
    theta[2, 3] = 0.5                      # D above 0.3
    with pytest.raises(ParameterRangeError) as info:
        validate_theta(theta)
    text = str(info.value)
    assert "'D' (batch item 2) = 0.5" in text and "[1e-05, 0.3]" in text
    # nested batches are numbered in flat (C) order
    nested = np.tile([VALID[n] for n in NAMES], (2, 3, 1))
    nested[1, 0, 0] = math.inf
    with pytest.raises(ParameterValueError, match=r"'f0' \(batch item 3\) = inf"):
        validate_theta(nested)
    # a single row has no batch item in its message
    with pytest.raises(ParameterRangeError) as info:
        validate_theta(np.array([10.0, 0.3, 1e-3, 1e-2, 0.7]))
    assert "batch item" not in str(info.value)
    assert "'f0' = 10.0" in str(info.value) and "[40, 1000] Hz" in str(info.value)


@pytest.mark.parametrize("bad", [np.ones(4), np.ones((3, 4)), np.array(1.0),
                                 np.array(["a"] * 5), np.array([None] * 5)])
def test_validate_theta_rejects_shapes_and_dtypes(bad):
    with pytest.raises(ParameterTypeError):
        validate_theta(bad)


# --- physical <-> normalized ------------------------------------------------

def _random_theta(rng, n):
    nu = rng.uniform(-1.0, 1.0, size=(n, 5))
    return nu, nu_to_theta(nu)


def test_nu_of_range_ends_and_centre():
    low = np.array([EXPECTED[n][0] for n in NAMES])
    high = np.array([EXPECTED[n][1] for n in NAMES])
    np.testing.assert_allclose(theta_to_nu(low), -np.ones(5), rtol=0, atol=1e-15)
    np.testing.assert_allclose(theta_to_nu(high), np.ones(5), rtol=0, atol=1e-15)
    centre = nu_to_theta(np.zeros(5))
    expected = [math.sqrt(40.0 * 1000.0), (0.07 + 0.8) / 2, math.sqrt(1e-5 * 0.2),
                math.sqrt(1e-5 * 0.3), 0.5]
    np.testing.assert_allclose(centre, expected, rtol=1e-14)


def test_log_parameters_are_log_spaced_in_nu():
    nu = np.zeros((9, 5))
    nu[:] = np.linspace(-1.0, 1.0, 9)[:, None]
    theta = nu_to_theta(nu)
    for i, name in enumerate(NAMES):
        low, high, scale, *_ = EXPECTED[name]
        if scale == "log":
            np.testing.assert_allclose(theta[:, i], np.geomspace(low, high, 9), rtol=1e-13)
        else:
            np.testing.assert_allclose(theta[:, i], np.linspace(low, high, 9), rtol=1e-13,
                                       atol=1e-15)
    # equal steps in nu are equal ratios for f0: 40 -> 200 -> 1000
    np.testing.assert_allclose(nu_to_theta(np.array([[-1.0] * 5, [0.0] * 5, [1.0] * 5]))[:, 0],
                               [40.0, 200.0, 1000.0], rtol=1e-14)


def test_round_trip_numpy():
    rng = np.random.default_rng(1234)
    nu, theta = _random_theta(rng, 500)
    np.testing.assert_allclose(theta_to_nu(theta), nu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nu_to_theta(theta_to_nu(theta)), theta, rtol=1e-12, atol=0)
    validate_theta(theta)                 # nu in (-1, 1) maps into the ranges
    # shape is preserved for any batch shape
    assert theta_to_nu(theta.reshape(5, 100, 5)).shape == (5, 100, 5)
    assert nu_to_theta(np.zeros(5)).shape == (5,)


def test_round_trip_torch_matches_numpy():
    rng = np.random.default_rng(99)
    nu, theta = _random_theta(rng, 300)
    t_theta = torch.tensor(theta, dtype=torch.float64)
    t_nu = theta_to_nu(t_theta)
    assert isinstance(t_nu, torch.Tensor) and t_nu.dtype == torch.float64
    np.testing.assert_allclose(t_nu.numpy(), nu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t_nu.numpy(), theta_to_nu(theta), rtol=0, atol=1e-14)
    back = nu_to_theta(t_nu)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float64
    np.testing.assert_allclose(back.numpy(), theta, rtol=1e-12, atol=0)
    np.testing.assert_allclose(nu_to_theta(torch.tensor(nu)).numpy(), nu_to_theta(nu),
                               rtol=1e-14)


def test_torch_mapping_is_differentiable():
    rng = np.random.default_rng(5)
    nu, theta = _random_theta(rng, 4)
    t_nu = torch.tensor(nu, dtype=torch.float64, requires_grad=True)
    t_theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(nu_to_theta, (t_nu,), eps=1e-7, atol=1e-7, rtol=1e-6)
    assert torch.autograd.gradcheck(theta_to_nu, (t_theta,), eps=1e-9, atol=1e-6, rtol=1e-5)
    # closed form: d nu / d f0 = 2 / (f0 ln 10 (log10 1000 - log10 40))
    t = torch.tensor([100.0, 0.3, 1e-3, 1e-2, 0.7], dtype=torch.float64, requires_grad=True)
    theta_to_nu(t)[0].backward()
    expected = 2.0 / (100.0 * math.log(10.0) * math.log10(1000.0 / 40.0))
    assert t.grad[0].item() == pytest.approx(expected, rel=1e-12)
    assert torch.count_nonzero(t.grad[1:]) == 0


def test_drum_params_nu_methods():
    d = DrumParams(**VALID)
    np.testing.assert_allclose(d.to_nu(), theta_to_nu(d.to_array()), rtol=0, atol=0)
    back = DrumParams.from_nu(d.to_nu())
    np.testing.assert_allclose(back.to_array(), d.to_array(), rtol=1e-12)
    # from_nu clamps: beyond the ends -> the ends; alpha's end 0 -> the floor
    lo = DrumParams.from_nu([-3.0] * 5)
    hi = DrumParams.from_nu([3.0] * 5)
    np.testing.assert_allclose(lo.to_array(), [40.0, 0.07, 1e-5, 1e-5, ALPHA_FLOOR], rtol=1e-15)
    np.testing.assert_allclose(hi.to_array(), [1000.0, 0.8, 0.2, 0.3, 1.0], rtol=1e-15)


# --- clamping ----------------------------------------------------------------

def test_clamp_theta_keeps_valid_values():
    rng = np.random.default_rng(7)
    _, theta = _random_theta(rng, 200)
    np.testing.assert_array_equal(clamp_theta(theta), theta)
    assert clamp_theta(theta) is not theta


def test_clamp_theta_never_raises_and_lands_in_range():
    values = [math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0, -0.0, 5e-324, 1e-320]
    rows = np.array([[v] * 5 for v in values])
    out = clamp_theta(rows)
    assert out.shape == rows.shape and np.isfinite(out).all()
    validate_theta(out)                    # every clamped row is valid
    assert (out[:, 4] >= ALPHA_FLOOR).all()
    np.testing.assert_array_equal(out[3], [1000.0, 0.8, 0.2, 0.3, 1.0])
    np.testing.assert_array_equal(out[4], [40.0, 0.07, 1e-5, 1e-5, ALPHA_FLOOR])
    np.testing.assert_array_equal(out[5], [40.0, 0.07, 1e-5, 1e-5, ALPHA_FLOOR])
    # lists and nested batches
    assert clamp_theta([[[math.nan] * 5]]).shape == (1, 1, 5)
    # the input is not modified
    assert math.isnan(rows[0, 0])


def test_clamp_theta_maps_non_finite_to_centre():
    centre = nu_to_theta(np.zeros(5))
    for bad in (math.nan, math.inf, -math.inf):
        np.testing.assert_allclose(clamp_theta(np.full(5, bad)), centre, rtol=1e-14)
    mixed = np.array([[math.nan, 0.3, 1e-3, math.inf, 0.7], [100.0, math.nan, 1e-3, 1e-2, 0.7]])
    out = clamp_theta(mixed)
    np.testing.assert_allclose(out[0], [centre[0], 0.3, 1e-3, centre[3], 0.7], rtol=1e-14)
    np.testing.assert_allclose(out[1], [100.0, centre[1], 1e-3, 1e-2, 0.7], rtol=1e-14)
    assert out[0, 0] == pytest.approx(200.0, rel=1e-14)
    assert out[1, 1] == pytest.approx(0.435, rel=1e-14)


def test_drum_params_clamped():
    d = DrumParams.clamped([5000.0, math.nan, -1.0, 1e-9, 0.0])
    np.testing.assert_allclose(d.to_array(), [1000.0, 0.435, 1e-5, 1e-5, ALPHA_FLOOR],
                               rtol=1e-14)
