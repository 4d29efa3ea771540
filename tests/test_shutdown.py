"""Ctrl-C stops the live host fast, under load: ``tympan play`` and ``tympan serve``.

Each run starts the command on the JACK dummy server as a user would, plays
notes into it (``play``) or leaves a long match in flight (``serve``), sends
SIGINT and times the exit, with two busy processes hogging both cores. Every
exit must take at most :data:`EXIT_BOUND_S` and end with code 0 and the
command's "stopped" line.

The bound is a margin, not a race: the wind-down itself is bounded by design
(MIDI close, a 20 ms fade, the stream's stop; the matcher worker is not
waited for; uvicorn's graceful shutdown is capped at 1 s), and measured exits
on this 2-core VM under this load are under about 1.5 s. 3 s is what the
issue allows a musician to wait. A hang fails at once (the old failure: the
command ran on, SIGINT ignored, until killed).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving import Served, wait_for, wav_bytes

REPO = Path(__file__).resolve().parents[1]
EXIT_BOUND_S = 3.0
# Runs in a row: 20 of play (~5 s each under the load); 5 of serve, whose start
# (model load and warm-up in the worker) takes ~15 s: `make bench-shutdown`
# runs 20 of each (TYMPAN_SHUTDOWN_RUNS sets both).
_RUNS = os.environ.get("TYMPAN_SHUTDOWN_RUNS")
PLAY_RUNS = int(_RUNS or 20)
SERVE_RUNS = int(_RUNS or 5)


class CpuHog:
    """Two busy processes, one per core of the CI machine, while started."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(2)]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs = []


@pytest.fixture
def cpu_hog():
    hog = CpuHog()
    yield hog
    hog.stop()


def _report(what: str, times: list[float]) -> None:
    print(f"\n{what}: {len(times)} SIGINT exits under load: median "
          f"{statistics.median(times):.2f} s, max {max(times):.2f} s "
          f"(all: {', '.join(f'{t:.2f}' for t in times)})")


def _exit_time(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[float, str, str]:
    """Send ``sig``; seconds until the process has exited, with its stdout and stderr."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running 30 s after {signal.Signals(sig).name}; "
                             f"stderr: {err[-2000:]}") from None
    return time.monotonic() - t0, out, err


def _start_play(jack_server) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tympan_cli", "play", "--midi-api", "jack", "--midi-in",
           "virtual", "--blocksize", "256"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=jack_server.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    if "Ctrl-C to stop" not in first:
        proc.kill()
        raise AssertionError(f"tympan play did not start: {first!r} {proc.stderr.read()}")
    port = first.split("MIDI in '", 1)[1].split("'", 1)[0]
    return proc, port


def test_tympan_play_stops_within_the_bound_of_sigint_under_load(jack_server, midi_sender,
                                                                  cpu_hog):
    cpu_hog.start()
    times = []
    for run in range(PLAY_RUNS):
        proc, port = _start_play(jack_server)
        try:
            jack_server.wait_for_port(port, timeout=20)
            sender = midi_sender(target=port)
            # Notes still ringing when the signal comes: the fade-out has work to do.
            reply = sender.send([(0.05 * i, (0x99, note, 110))
                                 for i, note in enumerate((36, 38, 45, 38, 36, 42))])
            assert reply["sent"] == 6
            time.sleep(0.1)
            seconds, out, err = _exit_time(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, f"run {run}: exit code {proc.returncode}; {err[-2000:]}"
        assert "stopped:" in out and "Traceback" not in err, (out[-500:], err[-2000:])
        assert seconds <= EXIT_BOUND_S, f"run {run}: {seconds:.2f} s to exit; {times}"
        times.append(seconds)
    _report("tympan play", times)


def test_tympan_play_stops_on_sigterm_and_inherited_ignored_sigint(jack_server):
    # SIGTERM winds down like Ctrl-C (code 0, the summary line). A process
    # started as a background job of a non-interactive shell inherits SIGINT
    # ignored: Ctrl-C must stop it all the same (the cause of the old hang).
    proc, _ = _start_play(jack_server)
    seconds, out, err = _exit_time(proc, signal.SIGTERM)
    assert proc.returncode == 0 and "stopped:" in out, (proc.returncode, err[-2000:])
    assert seconds <= EXIT_BOUND_S

    # The premise: such a child starts with SIGINT ignored.
    probe = subprocess.run(["bash", "-c", f"{sys.executable} -c 'import signal; "
                            "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)' & wait $!"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "True", probe
    shell = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} -m tympan_cli play --midi-api jack --midi-in "
                       "virtual --blocksize 256 & wait $!"],
        cwd=REPO, env=jack_server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        first = shell.stdout.readline()
        assert "Ctrl-C to stop" in first, (first, shell.stderr.read())
        child = subprocess.run(["pgrep", "-P", str(shell.pid)], capture_output=True,
                               text=True).stdout.split()
        assert len(child) == 1, child
        t0 = time.monotonic()
        subprocess.run(["kill", "-INT", child[0]], check=True)
        out, err = shell.communicate(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert shell.returncode == 0 and "stopped:" in out, (shell.returncode, err[-2000:])
    assert seconds <= EXIT_BOUND_S


def test_tympan_play_second_sigint_forces_the_exit(jack_server):
    # The first SIGINT starts the wind-down; a second one at once forces the exit
    # with one line (code 130) whatever the wind-down is doing.
    proc, _ = _start_play(jack_server)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:        # the wind-down beat the second signal: allowed
        assert "stopped:" in out
    else:
        assert proc.returncode == 130, (proc.returncode, err)
        assert err.strip().splitlines()[-1] == \
            "tympan play: second SIGINT while stopping: forced exit", err
        assert "Traceback" not in err


def test_tympan_serve_stops_within_the_bound_of_sigint_with_a_match_in_flight(
        jack_server, tmp_path, cpu_hog):
    hit = wav_bytes()
    times = []
    for run in range(SERVE_RUNS):
        # The hog starts once the server is up: the worker runs at nice 10, and two
        # busy processes at nice 0 starve its model load for minutes. The match
        # and the shutdown run under the full load.
        served = Served(jack_server, tmp_path / f"run{run}")
        answers: list = []
        cpu_hog.start()
        try:
            # A match of several seconds (refinement budget), so it is mid-way at the signal.
            upload = threading.Thread(target=lambda: answers.append(_upload(served, hit)),
                                      daemon=True)
            upload.start()
            wait_for(lambda: served.status()["worker"]["current"] is not None, timeout=60)
            seconds, out, err = _exit_time(served.proc)
            upload.join(10)
        finally:
            cpu_hog.stop()
            served.stop()
        assert served.proc.returncode == 0, f"run {run}: code {served.proc.returncode}; {err}"
        assert "tympan serve: stopped" in out and "Traceback" not in err, err[-2000:]
        assert seconds <= EXIT_BOUND_S, f"run {run}: {seconds:.2f} s to exit; {times}"
        # The upload got an answer (200: its fast stage landed before the stop; 503:
        # the server stopped first) or its connection closed.
        assert answers and (answers[0] in ("closed", 200, 503)), answers
        times.append(seconds)
    _report("tympan serve", times)


def _upload(served: Served, data: bytes):
    import requests

    try:
        r = served.upload(38, data, refine="true", budget_ms="8000")
    except requests.ConnectionError:
        return "closed"
    return r.status_code


@pytest.mark.parametrize("block", [1, 64, 65, 256])
def test_the_fade_out_reaches_silence_smoothly_whatever_the_block_size(block):
    import numpy as np

    from plugin_host.audio_output import FadeOut

    sr, seconds = 48000.0, 0.02
    fade = FadeOut(seconds, sr, max_block=256)
    ones = np.ones((2, block), np.float32)
    untouched = ones.copy()
    fade.apply(untouched)                      # before start: unchanged
    assert np.array_equal(untouched, ones)
    fade.start()
    out = []
    while len(out) * block < 2 * fade.frames:
        b = ones.copy()
        fade.apply(b)
        out.append(b)
    gain = np.concatenate(out, axis=1)
    assert np.array_equal(gain[0], gain[1])
    n = fade.frames
    assert n == 960                            # 20 ms at 48 kHz
    # Raised cosine: 1 at the start, 0.5 half-way, monotone, silent from n on.
    expected = 0.5 + 0.5 * np.cos(np.pi * np.arange(n) / n)
    assert np.allclose(gain[0, :n], expected, atol=1e-6)
    assert np.all(np.diff(gain[0, :n]) <= 0) and np.all(gain[:, n:] == 0.0)
    assert fade.done
    # The largest step between samples is a click-free ~pi/(2n) of full scale.
    assert np.abs(np.diff(gain[0])).max() <= np.pi / (2 * n) + 1e-6
