"""The matcher worker: a separate process that turns uploaded hits into parameters.

Matching (torch: CQT, encoder, refinement, distances) never runs in the
server's process, where the audio callback lives: a crash, a stall or the
GIL held by torch there would be heard. The worker runs at a lower priority
(``nice``) with few torch threads, so the audio keeps its core.

Protocol (over two :mod:`multiprocessing` queues, plain picklable values only;
the server never unpickles anything from outside, only its own child's
messages):

- parent -> worker: ``(job_id, path, options)`` or ``None`` (stop);
- worker -> parent: ``("ready", info)``, ``("started", job_id)``,
  ``("params", job_id, match)`` as soon as the encoder has the parameters
  (milliseconds), then, for a method other than ``encoder`` (the default
  ``search``, and any refinement), ``("refined", job_id, match)`` with the
  better estimate, then ``("scored", job_id, preview)`` with the final
  match's distances and the pictures' data, or ``("error", job_id, message,
  http_status)``.

:class:`MatchWorker` supervises it: if the process dies, the job it was on
fails with a clear message, a new process starts (fresh queues: a process
killed inside ``Queue.get`` can leave the old queue's lock held) and the
jobs still waiting are sent to it, so every request is answered.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["MatchJob", "MatchWorker", "WorkerError", "preview_data"]

# Preview sizes: enough for a 600-pixel canvas, small enough for JSON.
WAVE_POINTS = 400
SPEC_FRAMES = 128


class WorkerError(RuntimeError):
    """A job that got no parameters.

    Attributes
    ----------
    status : int
        422 when the file was the problem (unreadable, silent, too short...),
        503 when the worker was (died while matching, could not start, stopping).
    """

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


def preview_data(audio: np.ndarray, cqt_db: np.ndarray) -> dict[str, Any]:
    """A hit reduced for drawing.

    Parameters
    ----------
    audio : np.ndarray
        ``[N]`` samples, peak 1.
    cqt_db : np.ndarray
        ``[bins, frames]`` log-magnitude CQT (any scale).

    Returns
    -------
    dict
        ``wave_min``/``wave_max``: ``[WAVE_POINTS]`` envelope of the waveform;
        ``spec``: ``[bins][<= SPEC_FRAMES]`` ints 0..255 (column-max pooled,
        scaled to the image's own maximum; low bins first).
    """
    x = np.asarray(audio, dtype=np.float64)
    chunks = np.array_split(x, WAVE_POINTS)
    lo = [round(float(c.min()), 4) if c.size else 0.0 for c in chunks]
    hi = [round(float(c.max()), 4) if c.size else 0.0 for c in chunks]
    s = np.asarray(cqt_db, dtype=np.float64)
    cols = np.array_split(np.arange(s.shape[1]), min(SPEC_FRAMES, s.shape[1]))
    pooled = np.stack([s[:, c].max(axis=1) for c in cols], axis=1)
    top = pooled.max()
    img = np.zeros_like(pooled) if top <= 0 else np.clip(pooled / top, 0, 1) * 255
    return {"wave_min": lo, "wave_max": hi, "spec": img.round().astype(int).tolist()}


def _worker_main(jobs: "mp.Queue", results: "mp.Queue", model: str | None, device: str | None,
                 threads: int, niceness: int) -> None:
    """The worker process: load the matcher once, then answer jobs until ``None``."""
    # The server owns this process's life (it closes or kills it); a Ctrl-C in
    # the terminal reaches the whole process group, and must not print a
    # traceback from here or look like a crash to the supervisor.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(niceness)
    except OSError:
        pass
    import torch

    torch.set_num_threads(threads)
    try:
        from matcher.audio import AudioError, load_hit, prepare_hit
        from matcher.match import Matcher

        t0 = time.perf_counter()
        matcher = Matcher(model, device)
        _ = matcher.model.features, matcher.jtfs      # first use: seconds; not on a job
        # One warm-up pass so the first user's hit is not the one that pays for
        # the allocator and kernel selection.
        warm = np.zeros(matcher.audio_config.n_samples, np.float32)
        warm[:64] = np.hanning(64)
        warm_hit = prepare_hit(warm, matcher.audio_config.sr, matcher.audio_config)
        matcher.match_hit(warm_hit, score=False, method="encoder")
        matcher.match_hit(warm_hit, score=False)      # the search: index, JTFS batch
    except Exception as err:           # reported to the parent, which shows it
        results.put(("failed", f"{type(err).__name__}: {err}"))
        return
    results.put(("ready", {"pid": os.getpid(), "model": str(matcher.path),
                           "device": str(matcher.device), "threads": threads,
                           "load_s": time.perf_counter() - t0}))
    # Parameters first: a waiting upload's parameters go before an earlier
    # upload's distances and pictures, which a user waits for less.
    scoring: collections.deque = collections.deque()
    while True:
        if scoring:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                _score(matcher, results, *scoring.popleft())
                continue
        else:
            job = jobs.get()
        if job is None:
            return
        job_id, path, options = job
        results.put(("started", job_id))
        try:
            t = time.perf_counter()
            hit = load_hit(path, matcher.audio_config, options.get("onset"))
            load_ms = 1e3 * (time.perf_counter() - t)
            # Stage 1: the encoder's estimate, on the pad in milliseconds.
            r = matcher.match_hit(hit, score=False, method="encoder")
            r.timings_ms = {"load": load_ms, **r.timings_ms}
            results.put(("params", job_id, _payload(r, "fast")))
            method = options.get("method", "search")
            if method != "encoder" or options.get("refine"):
                # Stage 2: the default match (search, re-ranked; refined if asked).
                r = matcher.match_hit(hit, score=False, method=method,
                                      refine=options.get("refine"),
                                      budget_ms=float(options.get("budget_ms", 2000.0)))
                results.put(("refined", job_id, _payload(r, "refined")))
            scoring.append((job_id, hit, r))
        except (AudioError, ValueError) as err:     # the user's file: a clear message
            results.put(("error", job_id, str(err), 422))
        except Exception as err:                     # a bug: still an answer, not a hang
            results.put(("error", job_id, f"matching failed: {type(err).__name__}: {err}", 500))


def _payload(r, stage: str) -> dict[str, Any]:
    """What the parent gets of a match (plain values)."""
    return {"stage": stage, "theta": r.theta, "nu": r.nu, "units": r.units,
            "timings_ms": r.timings_ms, "onset_seconds": r.onset_seconds,
            "truncated": r.truncated, "refinement": r.refinement, "estimate": r.estimate,
            "method": r.method}


def _score(matcher, results: "mp.Queue", job_id: int, hit, r) -> None:
    """Distances of a match and the pictures' data -> ``("scored", job_id, {...})``."""
    import torch

    try:
        t = time.perf_counter()
        matched = matcher.render(r)
        target = torch.tensor(np.asarray(hit.audio), device=matcher.device)[None]
        # the search measured the winner's JTFS distance already: only MSS is left
        d_jtfs, d_mss = matcher.score(np.asarray(r.nu), target, {}, r.jtfs_distance)
        with torch.no_grad():
            both = torch.tensor(np.stack([hit.audio, matched]), device=matcher.device)
            cqt = matcher.model.features(both).float().cpu().numpy()
        results.put(("scored", job_id, {
            "jtfs_distance": d_jtfs, "mss_distance": d_mss,
            "sr": matcher.audio_config.sr, "seconds": hit.audio.size / matcher.audio_config.sr,
            "target": preview_data(hit.audio, cqt[0]),
            "match": preview_data(matched, cqt[1]),
            "score_ms": 1e3 * (time.perf_counter() - t)}))
    except Exception as err:
        results.put(("error", job_id, f"scoring failed: {type(err).__name__}: {err}", 500))


@dataclass
class MatchJob:
    """One upload on its way through the worker."""

    job_id: int
    path: str
    options: dict[str, Any]
    params: Future = field(default_factory=Future)    # -> the "params" payload (fast)
    refined: Future = field(default_factory=Future)   # -> "refined" payload, None if none
    scored: Future = field(default_factory=Future)    # -> the "scored" payload
    on_event: Callable[[str, dict[str, Any]], None] | None = None


def _unnice(pid: int) -> None:
    """Give a process we are about to kill our own priority back, where allowed.

    A killed process still needs CPU to exit (freeing a torch process's
    memory): at nice 10 beside two busy processes, the worker took over 2 s
    to die, and 0.25 s at nice 0 (measured on this 2-core VM). Lowering a
    nice value needs privilege (root, or CAP_SYS_NICE); without it the kill
    just takes longer. Nice is per thread on Linux, hence every task.
    """
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tasks:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), ours)
        except (OSError, ValueError):
            return


class MatchWorker:
    """Starts, feeds and supervises the matcher process.

    Parameters
    ----------
    model : str, optional
        Matcher artifact (default: the shipped one).
    device : str, optional
        ``cpu`` / ``cuda``; default CUDA when present.
    threads : int
        torch threads in the worker (default 1: the audio keeps a core).
    niceness : int
        Added to the worker's nice value (default 10).

    Its state (``alive``, ``ready``, ``queued``, ``restarts``, ``last_error``)
    is read by the server's status, which the page shows.
    """

    def __init__(self, model: str | None = None, device: str | None = None, threads: int = 1,
                 niceness: int = 10) -> None:
        self.model, self.device, self.threads, self.niceness = model, device, threads, niceness
        self._ctx = mp.get_context("spawn")       # never fork a process holding audio threads
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, MatchJob] = {}   # submitted, not finished; insertion order
        self._current: int | None = None          # the job the worker said it started
        self._proc: mp.Process | None = None
        self._jobs: mp.Queue | None = None
        self._results: mp.Queue | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._supervise, name="match-worker",
                                        daemon=True)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "MatchWorker":
        with self._lock:
            self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        self.ready.clear()
        self._jobs, self._results = self._ctx.Queue(), self._ctx.Queue()
        self._proc = self._ctx.Process(
            target=_worker_main, name="tympan-matcher", daemon=True,
            args=(self._jobs, self._results, self.model, self.device, self.threads,
                  self.niceness))
        self._proc.start()
        for job in self._pending.values():          # waiting jobs go to the new process
            self._jobs.put((job.job_id, job.path, job.options))

    def close(self, timeout: float = 0.5) -> None:
        """Stop the worker now; jobs still waiting (the one being matched too) fail.

        An idle worker leaves on the stop message (killed if it has not within
        ``timeout`` seconds); one busy matching is killed at once (a match can
        take seconds). Safe to call more than once, from any thread.
        """
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.is_alive():
            if self._current is None:         # idle: it leaves on the stop message
                try:
                    self._jobs.put(None)
                except (OSError, ValueError):
                    pass
                proc.join(timeout)
            if proc.is_alive():
                _unnice(proc.pid)
                proc.kill()        # SIGKILL: nothing in it needs cleaning up
                proc.join(2.0)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)            # it polls _stop every 0.2 s
        with self._lock:
            for job in list(self._pending.values()):
                self._fail(job, "the server is shutting down")
            self._pending.clear()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def current(self) -> int | None:
        """The job being matched now (its id), or None."""
        return self._current

    @property
    def queued(self) -> int:
        """Jobs submitted and not finished (the one being matched included)."""
        return len(self._pending)

    # -- jobs --------------------------------------------------------------------
    def submit(self, path: str, options: dict[str, Any] | None = None,
               on_event: Callable[[str, dict[str, Any]], None] | None = None) -> MatchJob:
        """Queue a file; ``job.params`` and ``job.scored`` resolve as the worker answers.

        ``on_event(kind, payload)`` is called (from the supervisor thread, or
        this one for ``queued``) for ``queued``, ``started``, ``params``,
        ``refined``, ``scored`` and ``error``; ``payload["job"]`` is the job's id.
        """
        if self._stop.is_set():
            raise WorkerError(self.last_error or "the matcher worker is stopped")
        job = MatchJob(next(self._ids), str(path), dict(options or {}), on_event=on_event)
        with self._lock:
            self._pending[job.job_id] = job
            ahead = len(self._pending) - 1
            self._jobs.put((job.job_id, job.path, job.options))
        self._emit(job, "queued", {"ahead": ahead})
        return job

    def _emit(self, job: MatchJob, kind: str, payload: dict[str, Any]) -> None:
        if job.on_event is not None:
            try:
                job.on_event(kind, {**payload, "job": job.job_id})
            except Exception:       # a listener's bug must not stop the supervisor
                pass

    def _fail(self, job: MatchJob, message: str, status: int = 503) -> None:
        err = WorkerError(message, status)
        for fut in (job.params, job.refined, job.scored):
            if not fut.done():
                fut.set_exception(err)
        self._emit(job, "error", {"message": message})

    # -- supervision -------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._results.get(timeout=0.2)
            except queue.Empty:
                msg = None
            except (OSError, EOFError, ValueError):   # the queue broke with its process
                msg = None
            if msg is not None:
                self._handle(msg)
                continue
            proc = self._proc
            if proc is not None and not proc.is_alive() and not self._stop.is_set():
                self._restart(proc.exitcode)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            self.info = msg[1]
            self.ready.set()
            return
        if kind == "failed":                  # the model could not load: nothing will work
            self.last_error = f"the matcher could not start: {msg[1]}"
            self._stop.set()
            with self._lock:
                for job in list(self._pending.values()):
                    self._fail(job, self.last_error)
                self._pending.clear()
            return
        job_id = msg[1]
        with self._lock:
            job = self._pending.get(job_id)
            if kind == "started":
                self._current = job_id
            elif kind in ("scored", "error"):
                self._pending.pop(job_id, None)
                if self._current == job_id:
                    self._current = None
        if job is None:
            return
        if kind == "started":
            self._emit(job, "started", {})
        elif kind == "params":
            if not job.params.done():
                job.params.set_result(msg[2])
                self._emit(job, "params", msg[2])
        elif kind == "refined":
            if not job.refined.done():
                job.refined.set_result(msg[2])
                self._emit(job, "refined", msg[2])
        elif kind == "scored":
            if not job.refined.done():          # an encoder-only job: no second stage
                job.refined.set_result(None)
            job.scored.set_result(msg[2])
            self._emit(job, "scored", {k: msg[2][k] for k in ("jtfs_distance", "mss_distance")})
        elif kind == "error":
            self._fail(job, msg[2], msg[3])

    def _restart(self, exitcode: int | None) -> None:
        how = f"exit code {exitcode}" if exitcode is None or exitcode >= 0 \
            else f"signal {-exitcode}"
        lost = f"the matcher worker died ({how}); restarted"
        with self._lock:
            self.restarts += 1
            self.last_error = lost
            for job_id, job in list(self._pending.items()):
                if job.params.done():
                    # Its parameters are on the pad; only the pictures are lost.
                    del self._pending[job_id]
                    self._fail(job, f"{lost} before the match was scored")
                elif job_id == self._current:
                    # The file it was on may be what killed it: no second try.
                    del self._pending[job_id]
                    self._fail(job, f"the matcher worker died ({how}) while matching this "
                                    "file; it was restarted, try again")
            self._current = None
            self._spawn()                      # the jobs still waiting go to the new one

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Block until the worker has loaded its model; its info."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.last_error is not None and self._stop.is_set():
                raise WorkerError(self.last_error)
            if time.monotonic() > deadline:
                raise WorkerError(f"the matcher worker was not ready after {timeout:g} s")
        return self.info
