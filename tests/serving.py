"""A real ``tympan serve`` for the tests: started as a user starts it, driven over HTTP."""

from __future__ import annotations

import io
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import torch
from pedalboard.io import AudioFile

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(theta=(150.0, 0.3, 1e-3, 1e-3, 0.7), sr: int = 44100, seconds: float = 1.0,
              fmt: str = "wav") -> bytes:
    """A membrane hit of known parameters as an audio file in memory."""
    from synth.twin import MembraneTwin

    y = MembraneTwin(float(sr), int(sr * seconds))(torch.tensor([theta], dtype=torch.float64))
    buf = io.BytesIO()
    with AudioFile(buf, "w", samplerate=sr, num_channels=1, format=fmt) as f:
        f.write((0.5 * y).numpy().astype(np.float32))
    return buf.getvalue()


class Served:
    """A running ``tympan serve``: its URL, process, kits folder and output."""

    def __init__(self, jack_server, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kits = tmp / "kits"
        cmd = [sys.executable, "-m", "tympan_cli", "serve", "--port", str(self.port),
               "--kits-dir", str(self.kits), "--midi-api", "jack", "--midi-in", "virtual",
               "--blocksize", "256", "--match-device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**jack_server.env,
                                                          "PYTHONPATH": str(REPO)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self._wait_ready()
        except AssertionError as err:
            self.stop()                 # a half-started server must not outlive the test
            raise AssertionError(f"{err}\n{self.proc.stderr.read()}") from None
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        ready = select.select([self.proc.stdout], [], [], 120)[0]
        self.first = self.proc.stdout.readline() if ready else ""
        if "tympan serve: http" not in self.first:
            raise AssertionError(f"tympan serve did not start: {self.first!r}")
        m = re.search(r"MIDI in '([^']+)'", self.first)
        self.midi_port = m.group(1) if m else None
        deadline = time.monotonic() + 180
        while not self._status_or_none():               # the socket opens after the line
            assert time.monotonic() < deadline, "tympan serve did not answer in 180 s"
            assert self.proc.poll() is None, "tympan serve exited"
            time.sleep(0.1)
        while not self.status()["worker"]["ready"]:     # the model loads in the worker
            assert time.monotonic() < deadline, "the matcher worker was not ready in 180 s"
            assert self.proc.poll() is None, "tympan serve exited"
            time.sleep(0.2)

    def _status_or_none(self) -> dict | None:
        try:
            return self.status()
        except requests.ConnectionError:
            return None

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return requests.put(self.url + path, timeout=60, **kw)

    def status(self) -> dict:
        return requests.get(self.url + "/api/status", timeout=30).json()

    def upload(self, note: int, data: bytes, name: str = "hit.wav", **params) -> requests.Response:
        return self.post(f"/api/pads/{note}/sample", files={"file": (name, data)}, params=params)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s")
