"""Audio output: the engine driven by a sounddevice (PortAudio) stream.

The callback renders into a preallocated buffer, copies it to ``outdata``,
never raises (an exception yields a silent block and a counter) and counts
underflows reported by the device. Callback durations go into a
preallocated ring for the status line and the benchmarks.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .engine import Engine

__all__ = ["AudioError", "AudioOutput", "FadeOut", "list_devices"]


class AudioError(RuntimeError):
    """No usable audio device, or the stream could not be opened."""


def list_devices() -> list[dict[str, Any]]:
    """Output devices: name, host API, channels, default sample rate."""
    import sounddevice as sd

    apis = sd.query_hostapis()
    return [{"index": i, "name": d["name"], "api": apis[d["hostapi"]]["name"],
             "channels": d["max_output_channels"], "samplerate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d["max_output_channels"] > 0]


class FadeOut:
    """A raised-cosine fade to silence, applied block by block in the audio callback.

    The curve is preallocated, followed by a block of zeros; :meth:`apply`
    only slices it, so it allocates nothing, and the result does not depend
    on the block sizes.

    Parameters
    ----------
    seconds : float
        Length of the fade.
    sr : float
        Sample rate, Hz.
    max_block : int
        Largest block :meth:`apply` is given, frames.
    """

    def __init__(self, seconds: float, sr: float, max_block: int) -> None:
        n = max(1, int(round(seconds * sr)))
        self.frames = n
        self._curve = np.zeros(n + max_block, np.float32)
        self._curve[:n] = 0.5 + 0.5 * np.cos(np.pi * np.arange(n) / n)
        self._at = -1                         # < 0: not fading

    def start(self) -> None:
        """Begin the fade at the next block (control thread)."""
        self._at = 0

    @property
    def done(self) -> bool:
        """Whether the fade has reached silence."""
        return self._at >= self.frames

    def apply(self, block: np.ndarray) -> None:
        """Scale ``block`` ``[channels, n]`` in place (no-op until :meth:`start`)."""
        at = self._at
        if at < 0:
            return
        n = block.shape[-1]
        at = min(at, self._curve.shape[0] - n)  # past the curve: its zeros
        np.multiply(block, self._curve[at:at + n], out=block)
        self._at = at + n


class AudioOutput:
    """A stereo output stream playing ``engine``.

    Stopping with :meth:`fade_out` first ends the sound with a short fade
    instead of a click.

    Parameters
    ----------
    engine : Engine
        The block processor; its sample rate must equal the device's.
    device : str or int, optional
        Output device name (substring) or index; default the system default.
    blocksize : int
        Frames per callback.
    latency : str or float
        PortAudio's suggested latency ("low", "high" or seconds).
    """

    FADE_SECONDS = 0.02      # fade-out before a stop: long enough to avoid a click

    def __init__(self, engine: Engine, device: str | int | None = None, blocksize: int = 128,
                 latency: str | float = "low", history: int = 1 << 16):
        import sounddevice as sd

        if not (isinstance(blocksize, int) and 1 <= blocksize <= engine.max_block):
            raise AudioError(f"blocksize {blocksize!r}: allowed 1..{engine.max_block} frames")
        self.engine = engine
        self.blocksize = blocksize
        self._buffer = np.zeros((2, blocksize), np.float32)
        self.callback_ns = np.zeros(history, np.int64)   # ring of callback durations
        self.callbacks = 0
        self.underflows = 0
        self.errors = 0
        self._fade = FadeOut(self.FADE_SECONDS, engine.sr, blocksize)
        # Events arriving now are scheduled one block ahead: constant latency,
        # their relative timing kept to the sample. (Scheduling less than a
        # block ahead to offset the limiter's 12-sample lookahead was measured
        # to make hits early in a JACK cycle late: the engine's clock is stamped
        # at the callback's start, not the cycle's.)
        engine.latency_frames = blocksize
        try:
            self.stream = sd.OutputStream(samplerate=engine.sr, blocksize=blocksize,
                                          device=device, channels=2, dtype="float32",
                                          latency=latency, callback=self._callback)
        except Exception as err:  # PortAudioError, ValueError for unknown devices
            raise AudioError(f"cannot open audio output {device if device is not None else '(default)'!r} "
                             f"at {engine.sr:g} Hz: {err}") from None

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        started = time.perf_counter_ns()
        try:
            if status.output_underflow:
                self.underflows += 1
            block = self._buffer if frames == self.blocksize else self._buffer[:, :frames]
            self.engine.process(block)
            self._fade.apply(block)
            outdata[:] = block.T
        except Exception:
            outdata.fill(0.0)
            self.errors += 1
        self.callback_ns[self.callbacks % self.callback_ns.shape[0]] = \
            time.perf_counter_ns() - started
        self.callbacks += 1

    def start(self) -> None:
        self.stream.start()

    def stop(self) -> None:
        self.stream.stop()

    def fade_out(self, timeout: float = 0.25) -> bool:
        """Fade the output to silence (:attr:`FADE_SECONDS`) before a stop.

        Waits until the callback has played the fade, at most ``timeout``
        seconds (a stalled stream must not hold up the exit); returns whether
        the fade was played.
        """
        if not self.running:
            return False
        self._fade.start()
        deadline = time.monotonic() + timeout
        while not self._fade.done:
            if time.monotonic() > deadline or not self.running:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "AudioOutput":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.close()

    @property
    def latency(self) -> float:
        """Output latency reported by the device, seconds."""
        return float(self.stream.latency)

    @property
    def effects_latency_frames(self) -> int:
        """Delay the effects chain adds (limiter lookahead, plug-ins), frames."""
        fx = self.engine.effects
        return int(fx.latency_samples) if fx is not None else 0

    @property
    def total_latency(self) -> float:
        """What the host reports, as a plug-in reports its delay: device + effects, seconds."""
        return self.latency + self.effects_latency_frames / self.engine.sr

    @property
    def running(self) -> bool:
        """False once the device stopped the stream by itself (e.g. JACK server gone)."""
        return bool(self.stream.active)

    @property
    def cpu_load(self) -> float:
        """PortAudio's estimate of the callback's share of the real-time budget (0..1)."""
        return float(self.stream.cpu_load)

    def callback_stats(self, last: int | None = None) -> dict[str, float]:
        """p50 / p99 / p99.9 / max callback time (microseconds).

        Over the whole history, or the ``last`` callbacks: a status display
        should pass a small window, since the quantiles hold the GIL (which
        the audio callback needs) for ~1 ms over the full 65536 entries.
        """
        n = min(self.callbacks, self.callback_ns.shape[0])
        if last is not None:
            n = min(n, last)
        if n == 0:
            return {"p50_us": 0.0, "p99_us": 0.0, "p999_us": 0.0, "max_us": 0.0}
        end = self.callbacks % self.callback_ns.shape[0]
        idx = (np.arange(end - n, end)) % self.callback_ns.shape[0]
        q = np.quantile(self.callback_ns[idx], [0.5, 0.99, 0.999, 1.0]) / 1000.0
        return {"p50_us": q[0], "p99_us": q[1], "p999_us": q[2], "max_us": q[3]}
