"""Real-time figures of the live plugin host, measured through JACK.

Run from the repository root (needs ``jackd`` from jackd2; no sound card)::

    .venv/bin/python benchmarks/bench_host.py            # full run, ~7 minutes
    .venv/bin/python benchmarks/bench_host.py --quick    # smoke run, ~1.5 minutes
    .venv/bin/python benchmarks/bench_host.py --dry --rtmidi --json /tmp/host.json
    .venv/bin/python benchmarks/bench_host.py --only engine --realtime   # SCHED_FIFO jackd

Every JACK server here is this script's own (``start_jack``, a
:class:`plugin_host.jack_server.JackServer`): ``jackd -n tympan-bench-<pid>-<period>
--no-realtime -d dummy -r 48000 -p <period>`` (``JACK_NO_AUDIO_RESERVATION=1``),
and every client (python-rtmidi, PortAudio/sounddevice, JACK-Client, the
``tympan play`` subprocess) reaches it through ``JACK_DEFAULT_SERVER``. A JACK
server that is already running (the default one of the test suite, say) is
neither used nor disturbed. Every process started here (jackd, ``tympan play``,
the torch load) is stopped by its PID, also on errors and Ctrl-C.

What it measures
----------------
1. **MIDI-to-audio onset latency and jitter**, 48 kHz, blocks of 64, 128, 256.
   For each block size B: a JACK dummy server with period B; ``tympan play
   --midi-api jack --midi-in virtual --blocksize B --quiet`` as a subprocess
   (default kit, default effects chain: what a user hears); a probe JACK client
   in this process whose MIDI output is connected to ``Tympan:Tympan MIDI In``
   and whose two audio inputs are connected from ``PortAudio:out_0/1``. In its
   process callback the probe writes a note-on (note 37, side stick, velocity
   127) at frame ``last_frame_time + offset`` every 0.25-0.30 s, the offsets
   spread evenly over the cycle (golden-ratio sequence), and records its inputs
   indexed by JACK frame. The onset of a hit is the first sample whose
   sample-to-sample step ``|x[n] - x[n-1]|`` exceeds max(0.1, 10 x the largest
   step in the 512 samples before the event): a membrane hit starts at exactly
   0 and jumps by >= 0.3 of full scale on its first non-zero sample, while the
   previous hit's tail (and reverb) is below 0.03 by then (its steps below 0.003),
   so neither the tail nor a dropout to silence can pass for an onset. The detector is
   checked on an offline render with known strike frames first (it must find
   each hit's first non-zero sample exactly). Latency = onset frame - frame of
   the MIDI event. It is the latency *inside the JACK graph*; the sound card adds
   its output latency (PortAudio's ``stream.latency``, parsed from the first
   line ``tympan play`` prints) on top, and a hardware MIDI input its own.
   ``--dry`` adds runs without the effects chain, ``--rtmidi`` runs with
   ``tympan play --rtmidi`` (python-rtmidi's JACK backend instead of the default
   JACK-Client input) for comparison.
2. **Callback time** p50 / p99 / p99.9 / max of the engine's audio callback
   (``AudioOutput.callback_ns``: the whole sounddevice callback, voices and
   effects), in us and in % of the block budget, measured in this process:
   ``Engine`` + ``AudioOutput`` on a JACK server of period 128 (``tympan play``
   does not print these percentiles).
3. **Largest polyphony held** at 128-sample blocks with the default effects:
   ``Engine(polyphony=P)``; P voices kept sounding by striking long pads of the
   kit with the most live modes (64, the kit's maximum: toms and timbales that
   ring 5.8-6.9 s) from a control thread, re-striking as voices go idle, for
   P = 32, 64, 96, 128, 160, 192, 256. P holds if callback p99.9 <= 70 % of the
   budget and the underflows are not above the idle rate (at most the 99 %
   Poisson quantile of the idle rate times the step's length). Every P is
   run; the largest P held is the largest one below the first that did not
   hold (the tails on this machine are noisy, so the others are shown too).
4. **Underflows per minute** (PortAudio's output-underflow flag, i.e. JACK
   xruns as the PortAudio client sees them) idle (engine running, no notes),
   with 64 voices sounding, and with 64 voices plus a separate process doing
   torch matmuls on all threads. A baseline first: the same ``AudioOutput``
   over an engine that only writes silence, i.e. the underflows that the JACK
   server, PortAudio, Python and the machine produce without any Tympan work.

How to read it
--------------
* Latency = the engine's scheduling lead (``engine.latency_frames``, set by
  ``AudioOutput``: one block, less the effects chain's latency when the code
  compensates it; part 2 prints it) + the effects chain's latency (the
  limiter's 0.25 ms lookahead: 12 samples) + 1 sample (a hit's first sample,
  at its frame, is 0) + whatever the MIDI path adds. The table gives the slope
  of latency against the event's offset in the cycle: 0 when events keep their
  position (the default JACK-Client input stamps each event on JACK's frame
  clock, on which the engine also anchors its blocks: no spread is left), -1 when they are quantized to
  the JACK period (python-rtmidi's JACK backend hands a cycle's events over
  together without their offsets, so events early and late in a cycle play at
  the same sample: jitter std B / sqrt(12)). The output says which case each
  row is.
* Callback time is what ``AudioOutput`` records: from the first to the last line
  of its Python callback (engine, voices, effects, the copy to PortAudio).
  Waiting for the GIL, PortAudio's and JACK's own work and the wake-up delay
  of the thread are not in it; they show up as underflows instead.
* Budget: B / 48000 s (2667 us at 128). The audio callback and the MIDI
  callback are Python under the GIL: a busy thread in the same process would
  delay them; a busy separate process competes only for the two cores.
* The servers run with ``--no-realtime`` (no SCHED_FIFO; ``--realtime`` runs
  them with ``-R -P 70`` for comparison): underflows depend on the machine's
  other load. Each phase prints the CPU used by other
  processes; take figures only on a quiet machine.

Targets: latency <= one block + the output latency the host reports (device +
effects chain delay, as a plug-in reports its delay to a DAW), judged on the
worst hit's strike frame (first non-zero sample less 1): the loopback latency
must be <= B + effects frames since the device latency adds to both sides),
jitter (std) < 1 ms, 64 voices with effects at 128 samples without underflows
above the idle rate.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine_base, write_json  # noqa: E402  (puts the repository on sys.path)
from plugin_host.engine import Engine  # noqa: E402
from plugin_host.jack_server import JackServer, missing_tools  # noqa: E402
from plugin_host.kit import load_default_kit  # noqa: E402
from synth.voice import VoicePreset  # noqa: E402

SR = 48000
BLOCKS = (64, 128, 256)
ENGINE_BLOCK = 128
POLYPHONIES = (32, 64, 96, 128, 160, 192, 256)
LAT_NOTE, LAT_VELOCITY = 37, 127          # side stick: sharp attack, 0.8 s to -100 dB
LOAD_VELOCITY = 64
P999_LIMIT_PCT = 70.0
TARGET_JITTER_MS = 1.0
MIDI_PORT = "Tympan:Tympan MIDI In"
PA_PORTS = ("PortAudio:out_0", "PortAudio:out_1")
STEP_MIN = 0.1      # onset detector: absolute floor of the step threshold (full scale 1)
STEP_FACTOR = 10.0  # ... and its factor over the largest step before the event
PRE = 512           # samples before the event used for that
TORCH_LOAD = r"""
import os, sys, torch
torch.set_num_threads(os.cpu_count())
a = torch.randn(1024, 1024)
b = torch.randn(1024, 1024)
print("ready", torch.get_num_threads(), flush=True)
while True:
    a = torch.tanh(a @ b) * 0.5
"""

_CHILDREN: list[subprocess.Popen] = []   # every process started here, stopped by PID
_SERVERS: list[JackServer] = []          # every JACK server started here (start_jack)


# ----------------------------------------------------------------------------
# processes and machine


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM,
                 timeout: float = 5.0) -> None:
    """Stop ``proc`` (ours) by PID: ``sig``, then SIGKILL after ``timeout`` s."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_CHILDREN)):   # a server's jackd after its clients
        stop_process(proc)
    for server in list(_SERVERS):
        stop_jack(server)


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, **kw)
    _CHILDREN.append(proc)
    return proc


def machine_info() -> dict:
    import jack
    import pedalboard
    import rtmidi

    info = machine_base(("synth", "plugin_host"))
    info.update({"jack_client": jack.__version__, "python_rtmidi": rtmidi.__version__,
                 "pedalboard": pedalboard.__version__})
    try:
        info["jackd"] = subprocess.run(["jackd", "--version"], capture_output=True, text=True,
                                       timeout=10).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        info["jackd"] = "?"
    return info


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class LoadMeter:
    """CPU used by processes other than this one and its children over a phase, in cores."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()
        self.load0 = self._loadavg()

    @staticmethod
    def _busy() -> float:
        try:
            f = Path("/proc/stat").read_text().splitlines()[0].split()
            # user nice system irq softirq steal (not idle, iowait)
            return sum(int(f[i]) for i in (1, 2, 3, 6, 7, 8)) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return math.nan

    @staticmethod
    def _own() -> dict[int, float]:
        pids = [os.getpid()] + [p.pid for p in _CHILDREN if p.poll() is None]
        return {pid: _proc_cpu_s(pid) for pid in pids}

    @staticmethod
    def _loadavg() -> str:
        try:
            return " ".join(Path("/proc/loadavg").read_text().split()[:3])
        except OSError:
            return "?"

    def done(self) -> dict:
        wall = time.monotonic() - self.t0
        own1 = self._own()
        own = sum(own1[p] - self.own0.get(p, 0.0) for p in own1)
        busy = self._busy() - self.busy0
        return {"wall_s": wall, "loadavg_before": self.load0, "loadavg_after": self._loadavg(),
                "own_cores": own / wall if wall > 0 else math.nan,
                "other_processes_cores": max(busy - own, 0.0) / wall if wall > 0 else math.nan}


def other_top(limit: int = 5) -> list[str]:
    """The busiest processes not started by this script (ps), as short lines."""
    ours = {os.getpid()} | {p.pid for p in _CHILDREN}
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etimes,args", "--sort=-pcpu"],
                             capture_output=True, text=True, timeout=10).stdout.splitlines()[1:]
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = []
    for line in out:
        f = line.split(None, 3)
        if len(f) < 4 or int(f[0]) in ours or float(f[1]) < 5.0:
            continue
        rows.append(f"pid {f[0]} {f[1]}% cpu: {f[3][:70]}")
        if len(rows) >= limit:
            break
    return rows


def print_load(load: dict, what: str) -> None:
    print(f"  [load during {what}: other processes {load['other_processes_cores']:.2f} cores, "
          f"this benchmark and its children {load['own_cores']:.2f} cores, loadavg "
          f"{load['loadavg_before']} -> {load['loadavg_after']}]")
    if load["other_processes_cores"] > 0.15:
        print("  WARNING: other work was running on the machine; these figures are not the "
              "host's own. Run again on a quiet machine.")


# ----------------------------------------------------------------------------
# JACK server


def start_jack(period: int, tag: str = "", realtime: bool = False) -> JackServer:
    """This script's own JACK dummy server of period ``period`` (never a running one):
    ``jackd -n tympan-bench-<pid>-<period><tag>``, ``-R -P 70`` with ``realtime`` (no
    fallback: a real-time run that cannot get it fails), else ``--no-realtime``.

    Its jackd counts as one of this script's processes (load meter, ``stop_all``).
    """
    server = JackServer.start(period, SR, name=f"tympan-bench-{os.getpid()}-{period}{tag}",
                              realtime=realtime, timeout=20.0)
    _SERVERS.append(server)
    if server.process is not None:
        _CHILDREN.append(server.process)
    return server


def stop_jack(server: JackServer) -> None:
    """Stop ``server`` (ours, by PID; its log file removed) and forget it."""
    server.stop()
    if server.process in _CHILDREN:
        _CHILDREN.remove(server.process)
    if server in _SERVERS:
        _SERVERS.remove(server)


def check_jack_tools() -> None:
    missing = missing_tools()
    if missing:
        sys.exit(f"bench_host: JACK is not installed (missing {', '.join(missing)}): "
                 "`sudo apt-get install jackd2` (or `make install` as root)")


# ----------------------------------------------------------------------------
# 1. latency through JACK loopback


def hit_schedule(n: int, block: int) -> tuple[list[int], list[int]]:
    """Offsets inside the cycle (golden-ratio sequence over [0, B)) and gaps in cycles
    (0.25-0.30 s) for ``n`` hits."""
    offsets = [int(((i * 0.6180339887498949) % 1.0) * block) for i in range(n)]
    gaps = [max(1, round((0.25 + 0.05 * ((i * 0.7548776662466927) % 1.0)) * SR / block))
            for i in range(n)]
    return offsets, gaps


class Probe:
    """JACK client: one MIDI out (note-ons at known frames), two audio ins recorded by frame."""

    def __init__(self, server: JackServer, n_hits: int, seconds: float) -> None:
        import jack

        self.client = jack.Client("bench-probe", servername=server.name, no_start_server=True)
        self.block = self.client.blocksize
        self.midi = self.client.midi_outports.register("midi_out")
        self.ins = [self.client.inports.register(f"in_{i}") for i in range(2)]
        self.audio = np.zeros((2, int(seconds * SR)), np.float32)
        self.covered = np.zeros(self.audio.shape[1], bool)
        self.offsets, self.gaps = hit_schedule(n_hits, self.block)
        self.events = np.full(n_hits, -1, np.int64)          # absolute JACK frames
        self.cycle_pos = np.full(n_hits, -1, np.int64)       # frames into the cycle at call
        self.n_sent = 0
        self.rec_start = -1
        self.armed = False
        self.next_frame = 0
        self.xruns = 0
        self.cycles = 0
        self.gaps_seen = 0
        self._last = None
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _process(self, frames: int) -> None:
        t = self.client.last_frame_time
        pos_in_cycle = self.client.frames_since_cycle_start
        self.midi.clear_buffer()
        if self._last is not None and t != self._last + frames:
            self.gaps_seen += 1
        self._last = t
        if self.rec_start < 0:
            return
        pos = t - self.rec_start
        if 0 <= pos and pos + frames <= self.audio.shape[1]:
            for i, port in enumerate(self.ins):
                self.audio[i, pos:pos + frames] = port.get_array()
            self.covered[pos:pos + frames] = True
            self.cycles += 1
        i = self.n_sent
        if self.armed and i < self.events.shape[0] and t >= self.next_frame:
            off = self.offsets[i]
            self.midi.write_midi_event(off, (0x99, LAT_NOTE, LAT_VELOCITY))
            self.events[i] = t + off
            self.cycle_pos[i] = pos_in_cycle
            self.next_frame = t + self.gaps[i] * frames
            self.n_sent = i + 1

    def wait_ports(self, names: list[str], timeout: float, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout
        while True:
            have = {p.name for p in self.client.get_ports()}
            if all(n in have for n in names):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"tympan play exited ({proc.returncode}) before its JACK "
                                   f"ports appeared")
            if time.monotonic() > deadline:
                raise RuntimeError(f"JACK ports {names} did not appear within {timeout:.0f} s; "
                                   f"ports: {sorted(have)}")
            time.sleep(0.05)


def step_onsets(audio: np.ndarray, events: np.ndarray, search: int,
                covered: np.ndarray | None = None) -> np.ndarray:
    """First sample at or after each event whose step |x[n] - x[n-1]| (either channel)
    exceeds max(STEP_MIN, STEP_FACTOR x the largest step in the PRE samples before the
    event); -1 when none, -2 when the window is not fully recorded (a missed cycle)."""
    x = audio.astype(np.float64)
    step = np.zeros(x.shape[1])
    step[1:] = np.abs(np.diff(x, axis=1)).max(axis=0)
    found = np.full(events.shape[0], -1, np.int64)
    for k, ev in enumerate(events):
        lo, hi = ev - PRE, ev + search
        if ev < 0 or lo < 1 or hi > x.shape[1]:
            continue
        if covered is not None and not covered[lo:hi].all():
            found[k] = -2
            continue
        thr = max(STEP_MIN, STEP_FACTOR * step[lo:ev].max())
        above = np.flatnonzero(step[ev:hi] > thr)
        if above.size:
            found[k] = ev + above[0]
    return found


def detector_check(kit, block: int, n_hits: int, effects: bool) -> dict:
    """The onset detector on an offline render with known strike frames (same pad,
    spacing and offsets as the loopback run, tails overlapping as there).

    The true onset is the hit's first non-zero sample: strike + 1 (the membrane starts at
    exactly 0) + the effects chain's latency; checked first on one isolated hit.
    """
    def render(events: list[int], total: int) -> tuple[np.ndarray, int]:
        engine = Engine(kit, float(SR), effects=effects, max_block=block)
        for ev in events:
            engine.note_on(LAT_NOTE, LAT_VELOCITY, frame=ev)
        out = np.zeros((2, total), np.float32)
        buf = np.zeros((2, block), np.float32)
        for b in range(total // block):
            engine.process(buf)
            out[:, b * block:(b + 1) * block] = buf
        return out, (engine.effects.latency_samples if engine.effects is not None else 0)

    alone, lat = render([PRE + 3], PRE + 8 * block)
    first = int(np.flatnonzero(np.abs(alone).max(axis=0) > 0)[0]) - (PRE + 3)
    offsets, gaps = hit_schedule(n_hits, block)
    events, t = [], PRE + 4 * block
    for off, gap in zip(offsets, gaps):
        events.append(t + off)
        t += gap * block
    out, lat = render(events, (t // block + 8) * block)
    ev = np.array(events, np.int64)
    err = step_onsets(out, ev, search=8 * block) - (ev + first)
    return {"effects": effects, "hits": n_hits, "block": block, "effects_latency_samples": lat,
            "isolated_hit_first_nonzero_minus_strike": first,
            "detected_exactly": int((err == 0).sum()),
            "max_abs_error_samples": int(np.abs(err).max())}


def parse_play_output(lines: list[str]) -> dict:
    text = "\n".join(lines)
    res: dict = {}
    m = re.search(r"output latency ([0-9.]+) ms \(device ([0-9.]+) ms \+ effects (\d+) frames\)",
                  text)
    if m:
        res["device_latency_ms"] = float(m.group(2))
        res["effects_latency_frames"] = int(m.group(3))
    m = re.search(r"stopped: (\d+) hits, (\d+) underflows, (\d+) callback errors, "
                  r"(\d+) events dropped", text)
    if m:
        res.update(zip(("hits", "underflows", "callback_errors", "dropped"),
                       map(int, m.groups())))
    return res


def bench_latency(block: int, n_hits: int, effects: bool, rtmidi: bool = False,
                  warmup_hits: int = 3, realtime: bool = False) -> dict:
    """One block size: own server, ``tympan play`` subprocess, probe, analysis.

    ``rtmidi``: pass ``--rtmidi`` (python-rtmidi's JACK backend instead of the default
    JACK-Client input). ``realtime``: the server runs with ``-R -P 70``."""
    server = proc = probe = None
    lines: list[str] = []
    errs: list[str] = []
    total_hits = n_hits + warmup_hits
    try:
        server = start_jack(block, ("" if effects else "-dry") + ("-rtmidi" if rtmidi else ""),
                            realtime)
        meter = LoadMeter()
        cmd = [sys.executable, "-m", "tympan_cli", "play", "--midi-api", "jack", "--midi-in",
               "virtual", "--blocksize", str(block), "--quiet", "--seconds", "600"]
        if not effects:
            cmd.append("--no-effects")
        if rtmidi:
            cmd.append("--rtmidi")
        t_launch = time.monotonic()
        proc = spawn(cmd, cwd=ROOT, env=server.env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: lines.extend(l.rstrip() for l in proc.stdout),
                         daemon=True).start()
        threading.Thread(target=lambda: errs.extend(l.rstrip() for l in proc.stderr),
                         daemon=True).start()
        seconds = 2.0 + sum(hit_schedule(total_hits, block)[1]) * block / SR + 1.5
        probe = Probe(server, total_hits, seconds)
        probe.client.activate()
        probe.wait_ports([MIDI_PORT, *PA_PORTS], 90.0, proc)
        deadline = time.monotonic() + 30
        while not any("output latency" in l for l in lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        startup_s = time.monotonic() - t_launch
        probe.client.connect(probe.midi, MIDI_PORT)
        for src, dst in zip(PA_PORTS, probe.ins):
            probe.client.connect(src, dst)
        time.sleep(0.2)                               # connections live from the next cycle
        probe.rec_start = probe.client.frame_time + block  # a frame in a future cycle
        probe.next_frame = probe.rec_start + int(0.5 * SR)
        mark = len(server.log_lines())
        probe.armed = True
        end = time.monotonic() + seconds + 10
        while probe.n_sent < total_hits and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.6)                               # the last hit reaches the recording
        load = meter.done()
        jackd = server.xrun_report(mark)
        rec_frames = probe.cycles * block
        probe.client.deactivate()
        xruns_probe, gaps_seen = probe.xruns, probe.gaps_seen
        audio, covered = probe.audio, probe.covered
        events = probe.events - probe.rec_start
        cycle_pos = probe.cycle_pos.copy()
        offsets = np.array(probe.offsets[:total_hits])
        probe.client.close()
        probe = None
        stop_process(proc, signal.SIGINT, timeout=20)
        time.sleep(0.05)
        play = parse_play_output(lines)
    finally:
        if probe is not None:
            try:
                probe.client.deactivate()
                probe.client.close()
            except Exception:
                pass
        stop_process(proc, signal.SIGINT, timeout=20)
        if server is not None:
            stop_jack(server)

    found = step_onsets(audio, events, search=min(8000, 12 * block), covered=covered)
    keep = np.arange(total_hits) >= warmup_hits
    ok = keep & (found >= 0) & (events >= 0)
    lat = (found - events)[ok].astype(np.float64)
    off = offsets[ok].astype(np.float64)
    row = {"block": block, "effects": effects, "input": "rtmidi" if rtmidi else "default",
           "hits_sent": int(keep.sum()),
           "hits_measured": int(ok.sum()), "not_found": int((keep & (found == -1)).sum()),
           "not_recorded": int((keep & (found == -2)).sum()),
           "startup_s": startup_s, "recorded_s": rec_frames / SR,
           "probe_xruns": xruns_probe, "probe_cycle_gaps": gaps_seen,
           "play": play, "play_stderr_tail": errs[-5:], "load": load, "jackd_xruns": jackd}
    if lat.size == 0:
        row["error"] = "no hit found in the recording"
        return row
    ms = lat / SR * 1e3
    slope, icpt = np.polyfit(off, lat, 1) if lat.size > 2 else (math.nan, math.nan)
    resid = lat - (slope * off + icpt) if lat.size > 2 else lat * math.nan
    row.update({
        "latency_frames": lat.astype(int).tolist(), "offsets": off.astype(int).tolist(),
        "probe_frames_into_cycle": cycle_pos[ok].tolist(),
        "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "p2p_ms": float(ms.max() - ms.min()),
        "mean_blocks": float(lat.mean() / block), "max_blocks": float(lat.max() / block),
        "quantization_std_ms": block / math.sqrt(12) / SR * 1e3,
        "slope_vs_offset": float(slope), "residual_std_ms": float(resid.std(ddof=2) / SR * 1e3)
        if lat.size > 2 else math.nan,
        "latency_at_offset0_ms": float(icpt / SR * 1e3),
        "budget_ms": block / SR * 1e3,
        "worst_minus_block_frames": int(lat.max() - block),
        "quantized_to_period": bool(abs(slope + 1.0) < abs(slope)),
    })
    return row


def print_latency(rows: list[dict], checks: list[dict]) -> None:
    print("1. MIDI-to-audio onset latency through JACK loopback, 48 kHz, note 37 (side stick), "
          "default kit")
    for c in checks:
        print(f"   detector check (offline render, {'with' if c['effects'] else 'without'} "
              f"effects, {c['hits']} hits): first non-zero sample = strike + "
              f"{c['isolated_hit_first_nonzero_minus_strike']} (isolated hit), effects latency "
              f"{c['effects_latency_samples']} samples; onset found exactly for "
              f"{c['detected_exactly']}/{c['hits']} (max error {c['max_abs_error_samples']})")
    head = (f"{'input':>7} {'block':>5} {'fx':>3} {'hits':>6} {'dev ms':>6} {'mean ms':>7} {'min':>6} "
            f"{'max':>6} {'std':>6} {'p-p':>6} {'mean blk':>8} {'max blk':>7} "
            f"{'slope':>6} {'resid std':>9} {'B/sqrt12':>8} {'xruns':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r.get('input', '?'):>7} {r['block']:>5} {'on' if r['effects'] else 'off':>3}  "
                  f"{r['error']}")
            continue
        dev = r["play"].get("device_latency_ms", math.nan)
        print(f"{r['input']:>7} {r['block']:>5} {'on' if r['effects'] else 'off':>3} "
              f"{r['hits_measured']:>3}/{r['hits_sent']:<3}"
              f"{dev:>6.2f} {r['mean_ms']:>7.3f} {r['min_ms']:>6.3f} {r['max_ms']:>6.3f} "
              f"{r['std_ms']:>6.3f} {r['p2p_ms']:>6.3f} {r['mean_blocks']:>8.2f} "
              f"{r['max_blocks']:>7.2f} {r['slope_vs_offset']:>6.2f} "
              f"{r['residual_std_ms']:>7.3f}ms {r['quantization_std_ms']:>6.3f}ms "
              f"{r['probe_xruns']:>5}")
    print("   input: `tympan play`'s default JACK MIDI input (JACK-Client) or --rtmidi "
          "(python-rtmidi's JACK backend).\n"
          "   dev ms: output latency PortAudio reports (first line of `tympan play`, rounded to "
          "0.1 ms); latency is MIDI event frame -> first\n   sample of the hit in the JACK graph "
          "(the device adds dev ms). slope: d latency / d (event offset in the cycle), frames per "
          "frame\n   (-1: events quantized to the JACK period, 0: placed on their sample); resid "
          "std: jitter left once the slope is removed;\n   B/sqrt12: std of a uniform spread "
          "over one period.")
    for r in rows:
        if "error" in r:
            continue
        p = r["play"]
        tag = f"{r['input']} B={r['block']}{'' if r['effects'] else ' no effects'}"
        over = r["worst_minus_block_frames"]
        if r["quantized_to_period"]:
            print(f"   {tag}: quantized to the JACK period: latency {r['latency_at_offset0_ms']:.3f} "
                  f"ms at offset 0, falling 1:1 with the offset; worst hit {r['max_ms']:.3f} ms "
                  f"= B {'+' if over >= 0 else '-'} {abs(over)} frames")
        else:
            print(f"   {tag}: placed on the sample: worst hit {r['max_ms']:.3f} ms = B "
                  f"{'+' if over >= 0 else '-'} {abs(over)} frames, spread {r['p2p_ms']:.3f} ms "
                  f"(std {r['std_ms']:.3f} ms)")
        print(f"   {tag}: tympan play started in {r['startup_s']:.1f} s; at exit: "
              f"{p.get('hits', '?')} hits, {p.get('underflows', '?')} underflows, "
              f"{p.get('callback_errors', '?')} callback errors, {p.get('dropped', '?')} dropped; "
              f"probe ran {np.median(r['probe_frames_into_cycle']):.0f} frames (median) into "
              f"the wall-clock cycle; hits not found: {r['not_found']}, in a cycle the probe missed: "
              f"{r['not_recorded']}; jackd's log: {short_xruns(r['jackd_xruns'])}")
        print_load(r["load"], tag)
    print()


# ----------------------------------------------------------------------------
# 2-4. callback time, polyphony, underflows: Engine + AudioOutput in this process


class InProcess:
    """A JACK server of period 128 and PortAudio bound to it in this process."""

    def __init__(self, realtime: bool = False) -> None:
        self.server = start_jack(ENGINE_BLOCK, realtime=realtime)
        # PortAudio reads JACK_DEFAULT_SERVER when it initializes: before sounddevice's import.
        os.environ.update({k: v for k, v in self.server.env.items()
                           if k.startswith("JACK_")})
        import jack
        import sounddevice as sd

        self.sd = sd
        out = sd.default.device[1]
        self.device = sd.query_devices(out)["name"] if out is not None and out >= 0 else "?"
        self.api = sd.query_hostapis(sd.query_devices(out)["hostapi"])["name"] \
            if out is not None and out >= 0 else "?"
        if "JACK" not in self.api:
            raise RuntimeError(f"PortAudio's default output is {self.device!r} on {self.api!r},"
                               " not the JACK server")
        self.monitor = jack.Client("bench-monitor", servername=self.server.name,
                                   no_start_server=True)
        self.xruns = 0
        self.monitor.set_xrun_callback(self._xrun)
        self.monitor.activate()

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def close(self) -> None:
        try:
            self.monitor.deactivate()
            self.monitor.close()
        except Exception:
            pass
        # PortAudio's JACK host API asserts (abort) in Pa_Terminate if the server is already
        # gone, so terminate PortAudio first (sounddevice's exit handler then does nothing).
        try:
            while self.sd._initialized:
                self.sd._terminate()
        except Exception:
            pass
        stop_jack(self.server)


def long_pads(kit) -> list[int]:
    """Notes of the kit's pads with the most live modes that ring longest (no restart)."""
    rows = []
    for pad in kit.pads:
        pr = VoicePreset.build(pad.params, SR)
        life = math.log(1e5) / float(pr.sigma.min())
        rows.append((pr.n_modes, life, pad.note, pad.retrigger, pad.choke_group))
    most = max(r[0] for r in rows)
    good = [r for r in rows if r[0] == most and r[3] == "new" and not r[4] and r[1] >= 5.5]
    good.sort(key=lambda r: -r[1])
    return [r[2] for r in good[:6]]


def poisson_upper(mean: float, q: float = 0.99) -> int:
    """Smallest k with P(Poisson(mean) <= k) >= q."""
    if mean <= 0:
        return 0
    k, term = 0, math.exp(-mean)
    total = term
    while total < q:
        k += 1
        term *= mean / k
        total += term
    return k


class NullEngine:
    """What ``AudioOutput`` needs of an engine, doing nothing: silence. The baseline of
    underflows and callback time that the JACK server, PortAudio and the machine give."""

    sr = float(SR)
    max_block = ENGINE_BLOCK
    latency_frames = 0
    late = 0
    effects = None
    active_voices = 0

    def process(self, out: np.ndarray) -> None:
        out[:] = 0.0

    def pending(self) -> int:
        return 0


def run_condition(ip: InProcess, kit, voices: int, polyphony: int, seconds: float,
                  pads: list[int], label: str, torch_load: bool = False,
                  null: bool = False) -> dict:
    """Engine + AudioOutput for ``seconds`` (after a ramp), ``voices`` kept sounding;
    ``null``: AudioOutput over :class:`NullEngine` instead."""
    from plugin_host.audio_output import AudioOutput

    if null:
        engine = NullEngine()
    else:
        engine = Engine(kit, float(SR), polyphony=polyphony, effects=True,
                        max_block=ENGINE_BLOCK)
        for note in pads:                       # presets built off the measured window
            engine._resolve(kit.pad_index(note), kit.pads[kit.pad_index(note)], note)
    output = AudioOutput(engine, blocksize=ENGINE_BLOCK)
    load_proc = None
    torch_cpu = 0.0
    strikes = 0
    active_seen: list[int] = []
    gcs: list[list] = []          # [generation, start, end] of each garbage collection

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gcs.append([info["generation"], time.perf_counter(), 0.0])
        elif gcs:
            gcs[-1][2] = time.perf_counter()

    try:
        if torch_load:
            load_proc = spawn([sys.executable, "-c", TORCH_LOAD], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            ready = load_proc.stdout.readline()
            if not ready.startswith("ready"):
                raise RuntimeError(f"the torch load did not start: {ready!r}")
        output.start()
        k = 0

        def keep_up() -> None:
            nonlocal k, strikes
            missing = voices - engine.active_voices - engine.pending()
            for _ in range(max(0, min(missing, 16))):
                engine.note_on(pads[k % len(pads)], LOAD_VELOCITY)
                k += 1
                strikes += 1

        ramp_end = time.monotonic() + (min(2.5, 0.5 + voices / 100) if voices else 1.0)
        while time.monotonic() < ramp_end:
            if voices:
                keep_up()
            time.sleep(0.02)
        meter = LoadMeter()
        mark = len(ip.server.log_lines())
        gcs.clear()
        gc.callbacks.append(on_gc)
        cpu0 = _proc_cpu_s(load_proc.pid) if load_proc else 0.0
        c0, u0, x0, late0, s0 = output.callbacks, output.underflows, ip.xruns, engine.late, strikes
        t0 = time.monotonic()
        end = t0 + seconds
        next_sample = t0
        while (now := time.monotonic()) < end:
            if voices:
                keep_up()
            if now >= next_sample:
                active_seen.append(engine.active_voices)
                next_sample = now + 0.1
            time.sleep(0.01)
        wall = time.monotonic() - t0
        c1, u1, x1 = output.callbacks, output.underflows, ip.xruns
        gc.callbacks.remove(on_gc)
        time.sleep(0.05)                  # jackd's log lines of the last cycles
        jackd = ip.server.xrun_report(mark)
        if load_proc:
            torch_cpu = (_proc_cpu_s(load_proc.pid) - cpu0) / wall
        load = meter.done()
        output.stop()
        cpu_load = output.cpu_load
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        try:
            output.close()
        except Exception:
            pass
        stop_process(load_proc)
    ring = output.callback_ns
    n = c1 - c0
    if n > ring.shape[0]:
        raise RuntimeError("callback ring overflowed: shorten the condition")
    idx = np.arange(c0, c1) % ring.shape[0]
    us = ring[idx] / 1e3
    budget = ENGINE_BLOCK / SR * 1e6
    q = np.percentile(us, [50, 99, 99.9]) if us.size else [math.nan] * 3
    under = u1 - u0
    return {
        "label": label, "voices_target": voices, "polyphony": polyphony, "seconds": wall,
        "callbacks": int(n), "expected_callbacks": int(round(wall * SR / ENGINE_BLOCK)),
        "p50_us": float(q[0]), "p99_us": float(q[1]), "p999_us": float(q[2]),
        "max_us": float(us.max()) if us.size else math.nan, "budget_us": budget,
        "p50_pct": float(q[0] / budget * 100), "p99_pct": float(q[1] / budget * 100),
        "p999_pct": float(q[2] / budget * 100), "max_pct": float(us.max() / budget * 100),
        "underflows": int(under), "underflows_per_min": under / wall * 60,
        "jack_xruns": int(x1 - x0), "late_hits": int(engine.late - late0),
        "strikes": int(strikes - s0), "callback_errors": int(output.errors),
        "effects_errors": int(engine.effects.errors) if engine.effects else 0,
        "active_min": int(min(active_seen)) if active_seen else 0,
        "active_mean": float(np.mean(active_seen)) if active_seen else 0.0,
        "pa_cpu_load_pct": cpu_load * 100, "device_latency_ms": output.latency * 1e3,
        "engine_latency_frames": int(engine.latency_frames), "torch_load_cores": torch_cpu,
        "torch_load": torch_load, "load": load, "jackd_xruns": jackd,
        "gc_collections": {str(g): sum(1 for x in gcs if x[0] == g) for g in (0, 1, 2)},
        "gc_max_ms": max(((x[2] - x[1]) * 1e3 for x in gcs if x[2]), default=0.0),
    }


def short_xruns(rep: dict) -> str:
    """``{'driver_woke_late': 3, 'clients_not_finished': {'PortAudio/Triggered': 5}}`` ->
    ``drv 3, PortAudio/Triggered 5``."""
    parts = [f"drv {rep['driver_woke_late']}"] if rep["driver_woke_late"] else []
    parts += [f"{k} {v}" for k, v in sorted(rep["clients_not_finished"].items())]
    return ", ".join(parts) or "-"


def print_conditions(rows: list[dict], title: str) -> None:
    print(title)
    head = (f"{'condition':<22} {'voices':>7} {'secs':>5} {'p50 us':>7} {'p99 us':>7} "
            f"{'p99.9 us':>8} {'max us':>7} {'p50%':>5} {'p99.9%':>6} {'max%':>6} "
            f"{'underfl':>7} {'/min':>6} {'xruns':>5} {'late':>4} {'others':>6}  jackd's log")
    print(head)
    print("-" * len(head))
    for r in rows:
        voices = f"{r['active_min']}-{r['active_mean']:.0f}" if r["voices_target"] else "0"
        print(f"{r['label']:<22} {voices:>7} {r['seconds']:>5.0f} {r['p50_us']:>7.0f} "
              f"{r['p99_us']:>7.0f} {r['p999_us']:>8.0f} {r['max_us']:>7.0f} "
              f"{r['p50_pct']:>5.1f} {r['p999_pct']:>6.1f} {r['max_pct']:>6.1f} "
              f"{r['underflows']:>7} {r['underflows_per_min']:>6.2f} {r['jack_xruns']:>5} "
              f"{r['late_hits']:>4} {r['load']['other_processes_cores']:>5.2f}c  "
              f"{short_xruns(r['jackd_xruns'])}")
    print(f"   voices: fewest-mean sounding (sampled every 0.1 s); % of the {ENGINE_BLOCK}-sample "
          f"budget ({ENGINE_BLOCK / SR * 1e6:.0f} us); xruns: as a JACK-Client in this process "
          "sees them; late: hits played after their frame; others: CPU cores used by processes "
          "not started here;\n   jackd's log: drv = its driver thread woke late; client/state = "
          "client not finished at the next cycle (Triggered: not yet running, Running: still "
          "computing).")
    gcs = [r for r in rows if r["gc_collections"]["2"]]
    for r in gcs:
        print(f"   {r['label']}: {r['gc_collections']['2']} full garbage collections in this "
              f"process during the window, the longest {r['gc_max_ms']:.1f} ms (GIL held)")
    print()


# ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (~1.5 min)")
    ap.add_argument("--dry", action="store_true",
                    help="also measure latency without the effects chain (adds ~1.5 min)")
    ap.add_argument("--rtmidi", action="store_true",
                    help="also measure latency with `tympan play --rtmidi` (python-rtmidi's JACK "
                         "backend), half the hits; adds ~1 min")
    ap.add_argument("--realtime", action="store_true",
                    help="run the JACK servers with real-time scheduling (jackd -R -P 70; needs "
                         "CAP_SYS_NICE or an rtprio limit) instead of --no-realtime")
    ap.add_argument("--only", choices=("latency", "engine"),
                    help="run only the latency part (1) or only the in-process parts (2-4)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_host.json",
                    help="where to write the JSON results (default: %(default)s)")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.hits, opts.cond_s, opts.step_s, opts.null_s = 20, 10.0, 4.0, 10.0
    else:
        opts.hits, opts.cond_s, opts.step_s, opts.null_s = 100, 60.0, 12.0, 30.0
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    check_jack_tools()

    def on_term(signum, frame):  # SIGTERM: unwind so every finally stops its process
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t_start = time.perf_counter()
    info = machine_info()
    kit = load_default_kit()
    print(f"Tympan host benchmark  {info['date_utc']}  ({'quick' if opts.quick else 'full'}; "
          f"JACK servers {'real-time (-R -P 70)' if opts.realtime else '--no-realtime'})")
    print(f"CPU: {info['cpu_model']}, {info['logical_cpus']} logical CPUs; {info['jackd']}; "
          f"JACK-Client {info['jack_client']}, python-rtmidi {info['python_rtmidi']}, "
          f"pedalboard {info['pedalboard']}, python {info['python']}, commit "
          f"{info.get('git_commit', '?')}")
    busy = other_top()
    info["busy_processes_at_start"] = busy
    if busy:
        print("Busy processes not started here (ps, at start):")
        for line in busy:
            print(f"  {line}")
    print()
    doc: dict = {"machine": info, "quick": opts.quick,
                 "settings": {"sr": SR, "latency_note": LAT_NOTE, "latency_velocity": LAT_VELOCITY,
                              "hits_per_block": opts.hits, "condition_s": opts.cond_s,
                              "sweep_step_s": opts.step_s, "engine_block": ENGINE_BLOCK,
                              "p999_limit_pct": P999_LIMIT_PCT,
                              "jackd": "-R -P 70 dummy" if opts.realtime else "--no-realtime dummy",
                              "onset": f"first |x[n]-x[n-1]| > max({STEP_MIN}, {STEP_FACTOR} x "
                                       f"max step in the {PRE} samples before the event)"}}
    goals: list[dict] = []
    try:
        if opts.only != "engine":
            checks = [detector_check(kit, 128, 40, fx) for fx in (True, False)]
            rows = []
            variants = [(True, False)] + ([(False, False)] if opts.dry else []) \
                + ([(True, True)] if opts.rtmidi else [])
            for fx, rt in variants:
                for b in BLOCKS:
                    try:   # python-rtmidi runs with half the hits: it is the comparison
                        rows.append(bench_latency(b, max(10, opts.hits // 2) if rt else opts.hits,
                                                  fx, rtmidi=rt, realtime=opts.realtime))
                    except RuntimeError as err:   # reported in the table, the run goes on
                        rows.append({"block": b, "effects": fx, "error": str(err),
                                     "input": "rtmidi" if rt else "default"})
            doc["detector_check"] = checks
            doc["latency"] = rows
            print_latency(rows, checks)
            for r in rows:
                if "error" in r or not r["effects"] or r["input"] != "default":
                    continue
                dev = r["play"].get("device_latency_ms", math.nan)
                fx_frames = r["play"].get("effects_latency_frames", 0)
                # The strike is 1 frame before the first non-zero sample (the membrane
                # starts at exactly 0); the effects' delay is part of the reported latency.
                worst = r["max_ms"] - 1e3 / SR
                reported = dev + fx_frames * 1e3 / SR
                over = r["worst_minus_block_frames"] - 1 - fx_frames
                goals.append({
                    "name": f"latency <= one block + reported output latency, B={r['block']}",
                    "measured": worst + dev, "target": r["budget_ms"] + reported, "unit": "ms",
                    "pass": bool(worst <= r["budget_ms"] + fx_frames * 1e3 / SR + 1e-9),
                    "note": f"worst strike {worst:.3f} ms + device {dev:.1f} ms (as printed); "
                            f"one block {r['budget_ms']:.3f} ms + reported output latency "
                            f"{reported:.3f} ms (device {dev:.1f} ms + effects {fx_frames} "
                            f"frames); worst strike = B + effects "
                            f"{'+' if over >= 0 else '-'} {abs(over)} frames"})
                goals.append({
                    "name": f"jitter (std) < 1 ms, B={r['block']}", "measured": r["std_ms"],
                    "target": TARGET_JITTER_MS, "unit": "ms",
                    "pass": bool(r["std_ms"] < TARGET_JITTER_MS),
                    "note": f"peak-to-peak {r['p2p_ms']:.3f} ms; slope against the offset in "
                            f"the cycle {r['slope_vs_offset']:.2f}"})
            print("   What dominates:")
            for kind, text in (
                    ("quantized", "events land to within one JACK period: python-rtmidi's JACK "
                                  "backend delivers a cycle's events without their\n     frame "
                                  "offsets, so all events of a cycle play at the same sample, "
                                  "one block after the cycle; the\n     jitter is that period "
                                  "quantization (std ~ B/sqrt(12)); the one-block-ahead "
                                  "scheduling is the constant part."),
                    ("accurate", "events keep their frame offsets, so latency hardly depends "
                                 "on where in the cycle the event was written; the constant\n"
                                 "     part is the engine's scheduling lead (AudioOutput sets "
                                 "engine.latency_frames, see part 2) + the effects chain's\n"
                                 "     lookahead + 1 sample, and what is left (the spread) is the "
                                 "audio callback's start delay after the JACK cycle start,\n"
                                 "     where the engine anchors its clock.")):
                which = sorted({f"{r['input']} B={r['block']}{'' if r['effects'] else ' no fx'}"
                                for r in rows if "error" not in r
                                and r["quantized_to_period"] == (kind == "quantized")})
                if which:
                    print(f"   - {', '.join(which)}: {text}")
            print()
        if opts.only != "latency":
            ip = InProcess(opts.realtime)
            try:
                pads = long_pads(kit)
                doc["load_pads"] = pads
                print(f"2-4. Engine + AudioOutput in this process, JACK server period "
                      f"{ENGINE_BLOCK}, device {ip.device!r} ({ip.api}), default effects; load "
                      f"pads {pads} (64 live modes each), velocity {LOAD_VELOCITY}")
                conds = [
                    run_condition(ip, kit, 0, 64, opts.null_s, pads, "null engine (baseline)",
                                  null=True),
                    run_condition(ip, kit, 0, 64, opts.cond_s, pads, "idle"),
                    run_condition(ip, kit, 64, 64, opts.cond_s, pads, "64 voices"),
                    run_condition(ip, kit, 64, 64, opts.cond_s, pads, "64 voices + torch",
                                  torch_load=True),
                ]
                idle = conds[1]
                idle_rate = idle["underflows"] / idle["seconds"]
                sweep = []
                largest = 0
                for p in POLYPHONIES:
                    r = run_condition(ip, kit, p, p, opts.step_s, pads, f"sweep P={p}")
                    allowed = poisson_upper(idle_rate * r["seconds"])
                    r["underflows_allowed"] = allowed
                    r["held_callback"] = bool(r["p999_pct"] <= P999_LIMIT_PCT
                                              and r["active_min"] >= int(0.9 * p))
                    r["held_underflows"] = bool(r["underflows"] <= allowed)
                    r["held"] = r["held_callback"] and r["held_underflows"]
                    sweep.append(r)

                def boundary(key: str) -> int:
                    """Largest P with every P' <= P held on ``key``."""
                    best = 0
                    for x in sweep:
                        if not x[key]:
                            break
                        best = x["polyphony"]
                    return best

                largest = boundary("held")
                doc["conditions"] = conds
                doc["sweep"] = sweep
                doc["largest_polyphony_held"] = largest
                doc["largest_polyphony_held_callback_only"] = boundary("held_callback")
                doc["largest_polyphony_held_underflows_only"] = boundary("held_underflows")
                print_conditions(conds, "Callback time (2) and underflows (4), "
                                 f"{opts.cond_s:.0f} s each:")
                print_conditions(sweep, f"Polyphony sweep (3), {opts.step_s:.0f} s per step; "
                                        f"holds if p99.9 <= {P999_LIMIT_PCT:.0f} % and underflows "
                                        "<= the idle rate's 99 % Poisson bound:")
                for r in sweep:
                    running = sum(v for k, v in r["jackd_xruns"]["clients_not_finished"].items()
                                  if k.endswith("/Running"))
                    print(f"   P={r['polyphony']}: {'held' if r['held'] else 'did not hold'} "
                          f"(p99.9 {r['p999_pct']:.1f} % {'ok' if r['held_callback'] else 'over'};"
                          f" {r['underflows']} underflows, allowed {r['underflows_allowed']} "
                          f"{'ok' if r['held_underflows'] else 'over'}, of which jackd saw "
                          f"PortAudio still running {running}; fewest voices {r['active_min']})")
                above = [r["polyphony"] for r in sweep if r["held"] and r["polyphony"] > largest]
                print(f"   Largest polyphony held: {largest}"
                      + ("" if largest < POLYPHONIES[-1] else " (the largest tried)")
                      + (f"; above the first failure, P = {above} held too" if above else "")
                      + f". On callback time alone: {doc['largest_polyphony_held_callback_only']}; "
                        f"on underflows alone: {doc['largest_polyphony_held_underflows_only']}.")
                torch = conds[3]
                print(f"   The torch load used {torch['torch_load_cores']:.2f} cores. AudioOutput "
                      f"scheduled live events engine.latency_frames = "
                      f"{conds[1]['engine_latency_frames']} frames ahead at {ENGINE_BLOCK}-sample "
                      f"blocks with the default effects; PortAudio reported an output latency of "
                      f"{conds[1]['device_latency_ms']:.3f} ms.")
                for r in conds:
                    print_load(r["load"], r["label"])
                print()
                v64 = conds[2]
                allowed = poisson_upper(idle_rate * v64["seconds"])
                goals.append({
                    "name": "64 voices with effects at 128 samples: no underflows above the "
                            "idle rate", "measured": v64["underflows_per_min"],
                    "target": idle["underflows_per_min"], "unit": "underflows/min",
                    "pass": bool(v64["underflows"] <= allowed and v64["active_min"] >= 57),
                    "note": f"{v64['underflows']} underflows in {v64['seconds']:.0f} s vs idle "
                            f"{idle['underflows']} in {idle['seconds']:.0f} s (allowed {allowed}); "
                            f"callback p99.9 {v64['p999_us']:.0f} us = {v64['p999_pct']:.1f} % "
                            f"of the budget; with the torch process: "
                            f"{torch['underflows_per_min']:.1f} underflows/min"})
            finally:
                ip.close()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the processes started here", file=sys.stderr)
        return 130
    finally:
        stop_all()

    for g in goals:
        print(f"{'PASS' if g['pass'] else 'FAIL'}: {g['name']}: measured {g['measured']:.3f} "
              f"{g['unit']} (target {g['target']:.3f})")
        print(f"      ({g['note']})")
    elapsed = time.perf_counter() - t_start
    print(f"\nTotal benchmark time {elapsed:.0f} s")
    doc["targets"] = goals
    doc["elapsed_s"] = elapsed
    write_json(opts.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
