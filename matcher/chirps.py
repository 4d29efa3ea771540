"""AM/FM chirps: the synthetic test signals of kymatio's differentiable JTFS tutorial.

After ``generate_am_chirp`` of "Differentiable time-frequency analysis" (Vahidi, Hayes
et al.; github.com/cyrusvahidi/jtfs-gpu): an exponential chirp, amplitude-modulated,
under a Gaussian window whose width makes every chirp span about ``bw_oct`` octaves.
Two deliberate differences: the modulator is a raised cosine ``(1 + cos)/2`` (the
tutorial multiplies by ``sin(2 pi f_m t)``, a ring modulation whose envelope
``|sin|`` beats at ``2 f_m``), so the envelope rate is ``am_hz`` and ``am_hz = 0``
gives the bare chirp; and there is no extra gain ``* gamma``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["am_fm_chirp"]

ParamLike = float | torch.Tensor


def _exprel(u: torch.Tensor) -> torch.Tensor:
    """``(exp(u) - 1) / u`` with its limit 1 at 0, finite gradients everywhere."""
    small = u.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(u), u)  # keeps the unused branch's grad finite
    return torch.where(small, 1 + u / 2 + u * u / 6, torch.expm1(safe) / safe)


def am_fm_chirp(carrier_hz: ParamLike, am_hz: ParamLike, fm_oct_per_s: ParamLike,
                sr: float = 22050, n_samples: int = 2 ** 16, duration: float | None = None,
                bw_oct: float = 2.0, sigma0: float = 0.1, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Gaussian-windowed, amplitude-modulated exponential chirp.

    With ``t`` the time from the middle sample (``t = (n - N // 2) / sr``)::

        f(t)   = carrier_hz * 2 ** (fm_oct_per_s * t)                  # instantaneous Hz
        phi(t) = 2 pi carrier_hz * (2 ** (fm t) - 1) / (fm ln 2)      # = 2 pi int_0^t f
        a(t)   = (1 + cos(2 pi am_hz t)) / 2                           # raised-cosine AM
        w(t)   = exp(-t^2 / (2 s^2)),  s = sigma0 * bw_oct / |fm|       # seconds
        x(t)   = a(t) w(t) sin(phi(t))

    ``phi`` is the exact integral of ``f`` (its ``fm -> 0`` limit ``2 pi carrier t``
    included, and ``w = 1`` there), so the phase has no accumulated rounding of a
    cumulative sum and gradients flow to all three parameters.

    Parameters
    ----------
    carrier_hz : float or torch.Tensor
        Instantaneous frequency at the middle sample, Hz, > 0. Scalar or ``[B]``.
    am_hz : float or torch.Tensor
        Amplitude-modulation rate, Hz, >= 0. Scalar or ``[B]``.
    fm_oct_per_s : float or torch.Tensor
        Chirp rate, octaves per second (negative: falling). Scalar or ``[B]``.
    sr : float
        Sample rate, Hz.
    n_samples : int
        Length ``N`` in samples; ignored when ``duration`` is given.
    duration : float, optional
        Length in seconds; ``N = round(duration * sr)``.
    bw_oct : float
        Octaves the chirp spans inside its window (tutorial's ``bw``).
    sigma0 : float
        Window width factor (tutorial's ``sigma0``).
    dtype, device
        Of the output; default: the first floating tensor parameter's, else torch's
        default dtype on CPU.

    Returns
    -------
    torch.Tensor
        ``[N]`` if all parameters are scalars, else ``[B, N]``; amplitude <= 1.

    Raises
    ------
    ValueError
        A parameter is not finite or out of range, or the instantaneous frequency
        reaches Nyquist (``sr / 2``) somewhere in the signal (the message names the
        parameter and the batch item).
    """
    n = int(round(duration * sr)) if duration is not None else int(n_samples)
    if n < 2 or not sr > 0:
        raise ValueError(f"need sr > 0 and at least 2 samples, got sr={sr}, N={n}")
    if not (bw_oct > 0 and sigma0 > 0):
        raise ValueError(f"bw_oct and sigma0 must be positive, got {bw_oct}, {sigma0}")
    tensors = [p for p in (carrier_hz, am_hz, fm_oct_per_s)
               if isinstance(p, torch.Tensor) and p.is_floating_point()]
    dtype = dtype or (tensors[0].dtype if tensors else torch.get_default_dtype())
    device = device or (tensors[0].device if tensors else None)
    fc, am, fm = torch.broadcast_tensors(
        *(torch.as_tensor(p, dtype=dtype, device=device) for p in (carrier_hz, am_hz,
                                                                   fm_oct_per_s)))
    if fc.dim() > 1:
        raise ValueError(f"parameters must be scalars or [B], got shape {tuple(fc.shape)}")
    batched = fc.dim() == 1
    fc, am, fm = (p.reshape(-1, 1) for p in (fc, am, fm))  # [B, 1]
    t = (torch.arange(n, dtype=dtype, device=device) - n // 2) / sr  # [N], s

    _check(fc.detach(), am.detach(), fm.detach(), float(t[0]), float(t[-1]), sr, batched)
    phase = 2 * math.pi * fc * t * _exprel(fm * math.log(2) * t)
    envelope = 0.5 * (1 + torch.cos(2 * math.pi * am * t))
    window = torch.exp(-0.5 * (fm * t / (sigma0 * bw_oct)) ** 2)  # fm in numerator: fm=0 ok
    x = envelope * window * torch.sin(phase)
    return x if batched else x[0]


def _check(fc: torch.Tensor, am: torch.Tensor, fm: torch.Tensor, t0: float, t1: float,
           sr: float, batched: bool) -> None:
    """Raise ``ValueError`` naming the parameter and item that breaks a constraint."""
    nyquist = sr / 2
    # f(t) is monotonic in t, so its maximum over the signal is at an end.
    f_max = fc * torch.maximum(2 ** (fm * t0), 2 ** (fm * t1))
    checks = [
        ("carrier_hz", ~(torch.isfinite(fc) & (fc > 0)), "must be finite and > 0"),
        ("am_hz", ~(torch.isfinite(am) & (am >= 0) & (am < nyquist)),
         f"must be finite, >= 0 and below Nyquist ({nyquist:g} Hz)"),
        ("fm_oct_per_s", ~torch.isfinite(fm), "must be finite"),
        ("carrier_hz / fm_oct_per_s", ~(f_max < nyquist),
         f"give an instantaneous frequency carrier_hz * 2**(fm_oct_per_s * t) that reaches "
         f"Nyquist ({nyquist:g} Hz) within t in [{t0:.4g}, {t1:.4g}] s; lower carrier_hz "
         "or |fm_oct_per_s|, or shorten the signal"),
    ]
    for name, bad, why in checks:
        hit = bad.flatten().nonzero()
        if len(hit):
            i = int(hit[0])
            where = f" (batch item {i})" if batched else ""
            raise ValueError(f"{name}{where} {why}: carrier_hz={float(fc[i]):g}, "
                             f"am_hz={float(am[i]):g}, fm_oct_per_s={float(fm[i]):g}, "
                             f"max instantaneous frequency {float(f_max[i]):g} Hz")
