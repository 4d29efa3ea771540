"""The matcher worker (``plugin_host.worker``): its own contract, without the server.

A real worker process with the shipped model on CPU, fed real audio files
rendered from the synth: a job's answers come back in order with their
fields, a bad file gets an error answer (the process lives on), a killed
process is restarted and the job it was on fails, ``close()`` ends the
process. One worker serves the module (loading and warming the model costs
~15 s on an idle 2-core machine); only the start-up failure and ``close()``
on a loading worker start their own, and those never load a model.

Time bounds are polled with a deadline, never slept: each one says why it is
what it is.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from plugin_host.worker import WAVE_POINTS, MatchWorker, WorkerError, preview_data
from synth.params import NAMES

from serving import wav_bytes

# Loading the model and the warm-up passes: ~15 s idle; on a 2-core machine
# with training jobs beside us at nice 10, several times that.
READY_S = 240
# One short hit's encoder stage, search (2 s budget) and scoring, on a loaded machine.
JOB_S = 120
# A SIGKILLed worker at nice 10 beside two busy processes took over 2 s to exit
# (worker.py's _unnice note); close() waits 2 s for it, this is the rest.
EXIT_S = 15


def _poll(predicate, timeout: float, what: str, interval: float = 0.05):
    """``predicate()``'s first truthy value, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(interval)


class Events:
    """An ``on_event`` listener that records ``(kind, payload)`` in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, kind: str, payload: dict) -> None:
        with self.lock:
            self.seen.append((kind, payload))

    @property
    def kinds(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.seen]


@pytest.fixture(scope="module")
def worker():
    w = MatchWorker(device="cpu").start()
    try:
        w.wait_ready(timeout=READY_S)
        yield w
    finally:
        w.close()
    _poll(lambda: not w.alive, EXIT_S, "the closed worker exited")


@pytest.fixture(scope="module")
def hit_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hits") / "tom.wav"
    path.write_bytes(wav_bytes((150.0, 0.3, 1e-3, 1e-3, 0.7)))
    return path


def _error(fut: Future, timeout: float) -> WorkerError:
    err = fut.exception(timeout=timeout)
    assert isinstance(err, WorkerError), err
    return err


# -- a job --------------------------------------------------------------------------------
def test_ready_info_names_the_process_and_the_model(worker):
    info = worker.info
    assert info["pid"] == worker.pid and worker.alive and worker.ready.is_set()
    assert info["model"].endswith(".tympan") and info["device"] == "cpu"
    assert info["threads"] == 1 and info["load_s"] > 0
    assert worker.queued == 0 and worker.current is None and worker.restarts == 0


def test_a_job_is_matched_in_three_stages_with_their_fields(worker, hit_file):
    events = Events()
    job = worker.submit(hit_file, {"budget_ms": 500}, on_event=events)
    fast = job.params.result(timeout=JOB_S)
    assert fast["stage"] == "fast" and fast["method"] == "encoder"
    assert set(fast["theta"]) == set(NAMES) and len(fast["nu"]) == len(NAMES)
    assert all(-1 <= v <= 1 for v in fast["nu"]) and "load" in fast["timings_ms"]
    # A 150 Hz hit: the encoder's f0 is within an octave (the shipped model's
    # test f0 error is cents, this only checks the payload is this file's).
    assert 75 < fast["theta"]["f0"] < 300, fast["theta"]
    refined = job.refined.result(timeout=JOB_S)
    assert refined["stage"] == "refined" and refined["method"] == "search"
    assert set(refined["theta"]) == set(NAMES)
    scored = job.scored.result(timeout=JOB_S)
    assert scored["jtfs_distance"] >= 0 and scored["mss_distance"] >= 0
    assert scored["seconds"] > 0 and scored["sr"] > 0
    for side in ("target", "match"):
        assert len(scored[side]["wave_min"]) == WAVE_POINTS
    assert events.kinds == ["queued", "started", "params", "refined", "scored"]
    assert all(p["job"] == job.job_id for _, p in events.seen)
    _poll(lambda: worker.queued == 0 and worker.current is None, 5,
          "the finished job left the queue")      # the supervisor's next message: ms


def test_an_encoder_only_job_has_no_second_stage(worker, hit_file):
    events = Events()
    job = worker.submit(hit_file, {"method": "encoder"}, on_event=events)
    assert job.params.result(timeout=JOB_S)["stage"] == "fast"
    assert job.scored.result(timeout=JOB_S)["jtfs_distance"] >= 0
    assert job.refined.result(timeout=0) is None
    assert events.kinds == ["queued", "started", "params", "scored"]


@pytest.mark.parametrize("content", ["text", "silence", "missing"])
def test_a_bad_file_gets_an_error_answer_and_the_worker_goes_on(worker, hit_file, tmp_path,
                                                                content):
    from pedalboard.io import AudioFile

    bad = tmp_path / "hit.wav"
    if content == "text":
        bad.write_text("not audio at all " * 100)
    elif content == "silence":
        with AudioFile(str(bad), "w", samplerate=44100, num_channels=1) as f:
            f.write(np.zeros((1, 44100), np.float32))
    pid = worker.pid
    events = Events()
    job = worker.submit(bad, {"method": "encoder"}, on_event=events)
    err = _error(job.params, JOB_S)
    assert err.status == 422 and str(err), err                  # the file, not the worker
    assert isinstance(job.scored.exception(timeout=0), WorkerError)
    assert events.kinds[-1] == "error" and events.seen[-1][1]["message"] == str(err)
    # No crash: the same process answers the next job.
    ok = worker.submit(hit_file, {"method": "encoder"})
    assert ok.params.result(timeout=JOB_S)["stage"] == "fast"
    assert worker.pid == pid and worker.alive and worker.restarts == 0


# -- supervision --------------------------------------------------------------------------
def test_a_killed_worker_is_restarted_the_job_in_flight_fails_and_the_next_is_answered(
        worker, hit_file):
    pid = worker.pid
    # A refinement with a 20 s budget keeps the worker on this job's second stage.
    victim = worker.submit(hit_file, {"refine": "adam", "budget_ms": 20000})
    victim.params.result(timeout=JOB_S)
    _poll(lambda: worker.current == victim.job_id, 5, "the worker is on the victim")
    waiting = worker.submit(hit_file, {"method": "encoder"})    # queued behind it
    assert not victim.refined.done()          # still in the second stage: 20 s budget
    os.kill(pid, signal.SIGKILL)
    err = _error(victim.scored, 60)           # the supervisor sees the death within 0.2 s
    assert "died" in str(err) and f"signal {signal.SIGKILL}" in str(err), err
    assert err.status == 503
    # The job waiting behind it goes to the new process and is answered there.
    assert waiting.params.result(timeout=READY_S)["stage"] == "fast"
    assert waiting.scored.result(timeout=JOB_S)["jtfs_distance"] >= 0
    assert worker.restarts == 1 and worker.pid != pid and worker.alive
    assert worker.ready.is_set() and worker.info["pid"] == worker.pid
    assert "died" in worker.last_error


# -- start and stop -----------------------------------------------------------------------
def test_a_worker_whose_model_cannot_load_says_why(tmp_path):
    bad = tmp_path / "broken.tympan"
    bad.write_text("not a model")
    worker = MatchWorker(str(bad), "cpu").start()
    try:
        with pytest.raises(WorkerError, match="broken.tympan"):
            worker.wait_ready(timeout=120)
        with pytest.raises(WorkerError, match="could not start"):
            worker.submit(str(tmp_path / "x.wav"))
    finally:
        worker.close()
    _poll(lambda: not worker.alive, EXIT_S, "the failed worker exited")


def test_close_ends_the_process_and_fails_what_was_waiting(hit_file):
    # A worker still loading its model: close() cannot wait for it to read the
    # stop message, so this is the path that kills.
    worker = MatchWorker(device="cpu").start()
    assert worker.alive
    events = Events()
    job = worker.submit(hit_file, {"method": "encoder"}, on_event=events)
    t0 = time.monotonic()
    worker.close(timeout=0.5)
    took = time.monotonic() - t0
    # close() waits 0.5 s for the stop message, then up to 2 s for the killed
    # process and 1 s for the supervisor thread: 3.5 s, doubled for a loaded machine.
    assert took < 7.0, took
    _poll(lambda: not worker.alive, EXIT_S, "the closed worker exited")
    err = _error(job.params, 0)
    assert "shutting down" in str(err) and events.kinds[-1] == "error"
    assert worker.queued == 0
    with pytest.raises(WorkerError, match="stopped"):
        worker.submit(hit_file)
    worker.close()                            # a second close is harmless


def test_preview_data_shapes_and_range():
    x = np.sin(np.linspace(0, 100, 65536)) * np.exp(-np.linspace(0, 5, 65536))
    cqt = np.random.default_rng(0).random((120, 257))
    d = preview_data(x, cqt)
    assert len(d["wave_min"]) == len(d["wave_max"]) == WAVE_POINTS
    assert all(lo <= hi for lo, hi in zip(d["wave_min"], d["wave_max"]))
    assert max(d["wave_max"]) == pytest.approx(x.max(), abs=1e-3)
    assert len(d["spec"]) == 120 and len(d["spec"][0]) == 128
    assert max(max(r) for r in d["spec"]) == 255 and min(min(r) for r in d["spec"]) >= 0
    silent = preview_data(np.zeros(1000), np.zeros((120, 10)))
    assert max(max(r) for r in silent["spec"]) == 0 and len(silent["spec"][0]) == 10
