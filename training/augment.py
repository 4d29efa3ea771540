"""Training-time augmentation: clean twin renders -> sounds as a microphone in a room hears them.

The encoder learns from the twin's clean renders but is asked about recordings:
a room, a microphone, background noise, snare wires, a beater click, an onset a
few milliseconds late, a band-limited or clipped converter. :class:`Augmenter`
puts those on a batch, on the training device, seeded by ``([augment] seed,
step, rank)``: the same run gives the same augmented batch on a resume. The
labels (``nu``) are left alone: the membrane is the same membrane.

The chain, in the order sound travels: wires, click (at the drum) -> room ->
microphone EQ -> onset offset (pre-roll) -> noise -> gain into a soft clipper ->
band limit -> peak normalization (what :mod:`matcher.audio` gives the model).
Each stage is applied to a sound with its own probability; all are 0 in
:class:`AugmentConfig`'s defaults, so the reference runs stay the paper's.

Rooms are shoebox impulse responses simulated once per run by pyroomacoustics
(image source method, absorption from Sabine's formula for the drawn RT60);
band limiting is julius's windowed-sinc low-pass. The stage functions are
public and pure, so each is testable on its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["AugmentConfig", "Augmenter", "room_bank", "convolve", "peaking_eq", "add_noise",
           "noise_burst", "click", "delay", "soft_clip", "band_limit", "onsets"]

# Stages with the keys of their ranges: ``{stage} = p`` and ``{stage}_{key} = [lo, hi]``.
_RANGES = {
    "wires": {"db": (-30.0, -10.0), "decay_ms": (40.0, 200.0)},  # peak rel. the hit's
    "click": {"db": (-18.0, -3.0)},            # peak relative to the hit's
    "reverb": {"rt60": (0.15, 0.8)},           # s, the room's RT60
    "eq": {"db": (-6.0, 6.0)},                 # dB, gain of each of 3 peaking bands
    "offset": {"ms": (0.0, 5.0)},              # pre-roll before the onset
    "noise": {"snr_db": (15.0, 45.0), "beta": (0.0, 2.0)},   # SNR, dB; colour 1/f^beta
    "clip": {"gain_db": (0.0, 18.0)},          # gain into tanh
    "bandlimit": {"hz": (3000.0, 10000.0)},    # low-pass cutoff
}


def _check_range(name: str, v: Any) -> tuple[float, float]:
    ok = (isinstance(v, (list, tuple)) and len(v) == 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                  for x in v) and v[0] <= v[1])
    if not ok:
        shown = list(v) if isinstance(v, tuple) else v      # as the run file wrote it
        raise ValueError(f"[augment] {name} = {shown!r}: allowed [low, high], two finite numbers, "
                         "low <= high")
    return float(v[0]), float(v[1])


@dataclass(frozen=True)
class AugmentConfig:
    """The ``[augment]`` table of a run file: a probability per stage and its ranges.

    Every probability defaults to 0 (off). Ranges are ``[low, high]``, drawn
    uniformly per sound (``eq_db`` per band).
    """

    seed: int = 0
    rooms: int = 16                # impulse responses in the run's room bank
    reverb: float = 0.0
    reverb_rt60: tuple[float, float] = _RANGES["reverb"]["rt60"]
    eq: float = 0.0
    eq_db: tuple[float, float] = _RANGES["eq"]["db"]
    noise: float = 0.0
    noise_snr_db: tuple[float, float] = _RANGES["noise"]["snr_db"]
    noise_beta: tuple[float, float] = _RANGES["noise"]["beta"]
    wires: float = 0.0
    wires_db: tuple[float, float] = _RANGES["wires"]["db"]
    wires_decay_ms: tuple[float, float] = _RANGES["wires"]["decay_ms"]
    click: float = 0.0
    click_db: tuple[float, float] = _RANGES["click"]["db"]
    offset: float = 0.0
    offset_ms: tuple[float, float] = _RANGES["offset"]["ms"]
    clip: float = 0.0
    clip_gain_db: tuple[float, float] = _RANGES["clip"]["gain_db"]
    bandlimit: float = 0.0
    bandlimit_hz: tuple[float, float] = _RANGES["bandlimit"]["hz"]

    def __post_init__(self) -> None:
        for name in ("seed", "rooms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise ValueError(f"[augment] {name} = {v!r}: allowed integers >= "
                                 f"{0 if name == 'seed' else 1}")
        for stage, keys in _RANGES.items():
            p = getattr(self, stage)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ValueError(f"[augment] {stage} = {p!r}: allowed a probability in [0, 1]")
            for key in keys:
                name = f"{stage}_{key}"
                object.__setattr__(self, name, _check_range(name, getattr(self, name)))
        lo, hi = self.reverb_rt60
        if lo <= 0.05 or hi > 2.0:
            raise ValueError(f"[augment] reverb_rt60 = {[lo, hi]}: allowed within (0.05, 2.0] s")
        if self.noise_snr_db[0] < -20:
            raise ValueError(f"[augment] noise_snr_db = {list(self.noise_snr_db)}: allowed >= -20 dB")
        if self.offset_ms[0] < 0 or self.bandlimit_hz[0] <= 0 or self.wires_decay_ms[0] <= 0:
            raise ValueError("[augment] offset_ms must be >= 0, bandlimit_hz and wires_decay_ms > 0")

    @property
    def active(self) -> bool:
        """Whether any stage can fire."""
        return any(getattr(self, s) > 0 for s in _RANGES)

    def stages(self) -> list[str]:
        """The stages that can fire, in chain order."""
        return [s for s in _RANGES if getattr(self, s) > 0]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AugmentConfig":
        allowed = {f.name for f in fields(cls)}
        bad = sorted(set(d) - allowed)
        if bad:
            raise ValueError(f"[augment] unknown keys {bad}; allowed: {sorted(allowed)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# -- stages: pure functions on [B, N] float32 tensors --------------------------------


def _pyroomacoustics() -> Any:
    """pyroomacoustics, imported without its optional sounddevice.

    sounddevice starts PortAudio at import, which registers a client with any
    running JACK server; a training process then held one for its lifetime and
    aborted at exit when that server had gone (pa_jack.c, Assertion err == 0).
    Rooms need no audio device.
    """
    import sys

    if "sounddevice" in sys.modules or "pyroomacoustics" in sys.modules:
        import pyroomacoustics
        return pyroomacoustics
    sys.modules["sounddevice"] = None           # makes its optional import fail
    try:
        import pyroomacoustics
    finally:
        del sys.modules["sounddevice"]
    return pyroomacoustics


def room_bank(rt60: Sequence[float], sr: float, seed: int, max_len: int) -> torch.Tensor:
    """Shoebox room impulse responses, one per RT60, ``[R, L]`` float32, L <= ``max_len``.

    Rooms of 3-10 x 3-8 x 2.5-4 m with source and microphone at least 0.5 m from
    the walls and 1 m apart; wall absorption and the image-source order come from
    Sabine's formula (``pyroomacoustics.inverse_sabine``). Each response is
    scaled so that its direct sound (its largest tap) is 1: the dry level stays.
    """
    pra = _pyroomacoustics()
    rng = np.random.default_rng([seed, 4241])
    out = []
    for t in rt60:
        dim = rng.uniform([3.0, 3.0, 2.5], [10.0, 8.0, 4.0])
        absorption, order = pra.inverse_sabine(float(t), dim)
        room = pra.ShoeBox(dim, fs=int(round(sr)), materials=pra.Material(absorption),
                           max_order=int(order))
        while True:
            src, mic = rng.uniform(0.5, dim - 0.5, size=(2, 3))
            if np.linalg.norm(src - mic) >= 1.0:
                break
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], np.float64)
        h = h[int(np.argmax(np.abs(h))):][:max_len]       # start at the direct sound
        out.append(h / np.abs(h).max())
    L = max(len(h) for h in out)
    return torch.tensor(np.stack([np.pad(h, (0, L - len(h))) for h in out]), dtype=torch.float32)


def convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Linear convolution of each row of ``x`` ``[B, N]`` with ``h`` ``[B, L]``, cut to N."""
    n = x.shape[-1] + h.shape[-1] - 1
    nfft = 1 << (n - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x, nfft) * torch.fft.rfft(h, nfft), nfft)
    return y[..., :x.shape[-1]]


def peaking_eq(x: torch.Tensor, sr: float, f0: torch.Tensor, gain_db: torch.Tensor,
               q: torch.Tensor) -> torch.Tensor:
    """Cascaded RBJ peaking biquads (audio EQ cookbook), ``f0``/``gain_db``/``q`` ``[B, K]``.

    Applied as the biquads' frequency response on a zero-padded FFT (twice the
    length: the filters' ringing dies long before it wraps), so a row's result
    equals ``scipy.signal.lfilter`` with the same coefficients, cut to N.
    """
    N = x.shape[-1]
    nfft = 1 << (2 * N - 1).bit_length()
    w = 2 * math.pi * torch.fft.rfftfreq(nfft, device=x.device, dtype=torch.float64)
    z1 = torch.exp(-1j * w)                                # z^-1 on the unit circle
    A = 10 ** (gain_db.double() / 40)
    w0 = 2 * math.pi * f0.double() / sr
    alpha = torch.sin(w0) / (2 * q.double())
    c = torch.cos(w0)
    H = torch.ones(x.shape[0], len(w), dtype=torch.complex128, device=x.device)
    for k in range(f0.shape[1]):
        a_, al, ck = A[:, k:k + 1], alpha[:, k:k + 1], c[:, k:k + 1]
        num = (1 + al * a_) - 2 * ck * z1 + (1 - al * a_) * z1 ** 2
        den = (1 + al / a_) - 2 * ck * z1 + (1 - al / a_) * z1 ** 2
        H = H * num / den
    y = torch.fft.irfft(torch.fft.rfft(x.double(), nfft) * H, nfft)[..., :N]
    return y.to(x.dtype)


def _coloured(shape: tuple[int, int], beta: torch.Tensor, gen: torch.Generator,
              device: torch.device) -> torch.Tensor:
    """Gaussian noise with power spectrum ~ 1/f^beta (beta ``[B]``), unit RMS per row."""
    B, N = shape
    white = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    f = torch.fft.rfftfreq(N, device=device)
    f[0] = f[1]                                             # no infinite DC gain
    shaped = torch.fft.irfft(torch.fft.rfft(white) * f[None] ** (-beta[:, None] / 2), N)
    return shaped / shaped.pow(2).mean(-1, keepdim=True).sqrt()


def add_noise(x: torch.Tensor, snr_db: torch.Tensor, beta: torch.Tensor,
              gen: torch.Generator) -> torch.Tensor:
    """``x`` plus coloured noise at ``snr_db`` ``[B]``: mean x^2 / mean n^2 over the whole window."""
    n = _coloured(tuple(x.shape), beta, gen, x.device)
    p = x.pow(2).mean(-1, keepdim=True)
    return x + n * (p / 10 ** (snr_db[:, None] / 10)).sqrt()


def onsets(x: torch.Tensor) -> torch.Tensor:
    """First sample of each row at or above a tenth of its peak, ``[B]`` long."""
    a = x.abs()
    return (a >= 0.1 * a.amax(-1, keepdim=True)).int().argmax(-1)


def noise_burst(x: torch.Tensor, sr: float, level_db: torch.Tensor, decay_ms: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
    """Snare wires: band-passed (1.5-8 kHz) noise decaying from the onset, added.

    The burst's peak is ``level_db`` ``[B]`` relative to the hit's peak; it
    decays as exp(-t / decay_ms).
    """
    import julius

    B, N = x.shape
    hi = min(8000.0, 0.45 * sr)
    noise = julius.bandpass_filter(torch.randn(B, N, generator=gen, device=x.device), 1500 / sr, hi / sr)
    t = torch.arange(N, device=x.device)[None] - onsets(x)[:, None]
    env = torch.where(t >= 0, torch.exp(-t.clamp(min=0) / (decay_ms[:, None] * 1e-3 * sr)), 0.0)
    burst = noise * env
    scale = x.abs().amax(-1) * 10 ** (level_db / 20) / burst.abs().amax(-1).clamp(min=1e-12)
    return x + burst * scale[:, None]


def click(x: torch.Tensor, sr: float, level_db: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A beater click: 1.5 ms of high-passed (2 kHz) noise under a Hann window at the onset."""
    import julius

    B, N = x.shape
    L = max(4, round(1.5e-3 * sr))
    c = julius.highpass_filter(torch.randn(B, 4 * L, generator=gen, device=x.device), 2000 / sr)
    c = c[:, L:2 * L] * torch.hann_window(L, periodic=False, device=x.device)
    c = c * (x.abs().amax(-1) * 10 ** (level_db / 20) / c.abs().amax(-1).clamp(min=1e-12))[:, None]
    pos = onsets(x)[:, None] + torch.arange(L, device=x.device)[None]
    y = x.clone()
    keep = pos < N
    y.scatter_add_(1, pos.clamp(max=N - 1), torch.where(keep, c, 0.0))
    return y


def delay(x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Each row delayed by ``samples`` ``[B]`` (integers >= 0): zeros before, the end cut."""
    N = x.shape[-1]
    idx = torch.arange(N, device=x.device)[None] - samples.to(x.device).long()[:, None]
    return torch.where(idx >= 0, x.gather(1, idx.clamp(min=0)), 0.0)


def soft_clip(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """tanh(g x / peak) per row: ``gain_db`` ``[B]`` above the point where the peak reaches 1."""
    g = 10 ** (gain_db[:, None] / 20) / x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    return torch.tanh(g * x)


def band_limit(x: torch.Tensor, sr: float, cutoff_hz: torch.Tensor) -> torch.Tensor:
    """julius's windowed-sinc low-pass at ``cutoff_hz`` ``[B]`` (rows grouped by rounded cutoff)."""
    import julius

    y = x.clone()
    cut = torch.round(cutoff_hz / 100) * 100     # 100 Hz steps: one filter per group
    for c in torch.unique(cut).tolist():
        rows = (cut == c).nonzero().flatten()
        y[rows] = julius.lowpass_filter(x[rows], min(c / sr, 0.499))
    return y


# -- the chain -----------------------------------------------------------------------


class Augmenter:
    """The run's augmentation chain on ``device``.

    Parameters
    ----------
    cfg : AugmentConfig
    sr : float
        Sample rate of the batches, Hz.
    device : torch.device or str
    """

    def __init__(self, cfg: AugmentConfig, sr: float, device: Any = "cpu"):
        self.cfg, self.sr, self.device = cfg, float(sr), torch.device(device)
        self._rooms: torch.Tensor | None = None
        self._rooms_rt60: np.ndarray | None = None

    def rooms(self) -> tuple[torch.Tensor, np.ndarray]:
        """The room bank ``[R, L]`` on the device and its RT60s (s), simulated on first use."""
        if self._rooms is None:
            lo, hi = self.cfg.reverb_rt60
            rt = np.random.default_rng([self.cfg.seed, 17]).uniform(lo, hi, self.cfg.rooms)
            self._rooms = room_bank(rt, self.sr, self.cfg.seed, round(2 * hi * self.sr)).to(self.device)
            self._rooms_rt60 = rt
        return self._rooms, self._rooms_rt60

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, key: Sequence[int]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Augment ``audio`` ``[B, N]``; ``key`` (e.g. ``(step, rank)``) seeds this batch.

        Returns
        -------
        audio : torch.Tensor
            ``[B, N]`` float32, peak |x| = 1 per row.
        applied : dict
            Per stage, the boolean ``[B]`` mask of the sounds it changed.
        """
        cfg, sr = self.cfg, self.sr
        B, N = audio.shape
        rng = np.random.default_rng([cfg.seed, *map(int, key)])
        x = audio.to(torch.float32).clone()
        applied: dict[str, np.ndarray] = {}

        def uniform(name: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
            lo, hi = getattr(cfg, name)
            return torch.tensor(rng.uniform(lo, hi, (B, *shape)), dtype=torch.float32)

        def log_uniform(lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
            return torch.tensor(np.exp(rng.uniform(math.log(lo), math.log(hi), (B, *shape))))

        # Each stage draws its mask, its parameters for all B sounds and its noise
        # seed whether or not a sound fires: switching one stage on or off leaves
        # what every other stage draws unchanged.
        for stage in _RANGES:
            mask = rng.random(B) < getattr(cfg, stage)
            gen = torch.Generator(device=x.device)
            gen.manual_seed(int(rng.integers(2**62)))
            if stage == "wires":
                args = (uniform("wires_db"), uniform("wires_decay_ms"))
                fn = lambda v, a, b: noise_burst(v, sr, a, b, gen)  # noqa: E731
            elif stage == "click":
                args = (uniform("click_db"),)
                fn = lambda v, a: click(v, sr, a, gen)  # noqa: E731
            elif stage == "reverb":
                args = (torch.as_tensor(rng.integers(cfg.rooms, size=B)),)
                fn = lambda v, pick: convolve(v, self.rooms()[0][pick.to(self.device)])  # noqa: E731
            elif stage == "eq":
                args = (log_uniform(80.0, min(10000.0, 0.4 * sr), (3,)), uniform("eq_db", (3,)),
                        log_uniform(0.5, 3.0, (3,)))
                fn = lambda v, f0, g, q: peaking_eq(v, sr, f0, g, q)  # noqa: E731
            elif stage == "offset":
                args = (torch.round(uniform("offset_ms") * 1e-3 * sr),)
                fn = delay
            elif stage == "noise":
                args = (uniform("noise_snr_db"), uniform("noise_beta"))
                fn = lambda v, snr, beta: add_noise(v, snr, beta, gen)  # noqa: E731
            elif stage == "clip":
                args = (uniform("clip_gain_db"),)
                fn = soft_clip
            else:
                args = (uniform("bandlimit_hz"),)
                fn = lambda v, hz: band_limit(v, sr, hz)  # noqa: E731
            applied[stage] = mask
            if mask.any():
                rows = torch.as_tensor(np.flatnonzero(mask), device=x.device)
                sub = [a[torch.as_tensor(np.flatnonzero(mask))].to(x.device) for a in args]
                x[rows] = fn(x[rows], *sub).to(x.dtype)
        peak = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        return x / peak, applied
